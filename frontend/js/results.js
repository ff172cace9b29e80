// Charts and tables of a job's metric rows and AutoAttack evaluations (detail and compare pages).
import { lineChart } from "./chart.js";
import { badge, h, num, pct } from "./dom.js";

/** Orders metric rows (burn-in first) and dedupes by stage+epoch. */
export function orderRows(rows) {
  const byKey = new Map();
  for (const r of rows) byKey.set(`${r.stage}:${r.epoch}`, r);
  const rank = { burn_in: 0, train: 1 };
  return [...byKey.values()].sort((a, b) => (rank[a.stage] ?? 2) - (rank[b.stage] ?? 2) || a.epoch - b.epoch);
}

/** x of each ordered row: a training epoch is its own number, so jobs with and without a
 * burn-in line up; the burn-in's epochs come before it, its last at 0. */
export function epochAxis(ordered) {
  const burnIn = ordered.filter((r) => r.stage === "burn_in").length;
  let last = 0;
  return ordered.map((r, i) => {
    last = r.stage === "burn_in" ? i + 1 - burnIn : r.stage === "train" ? r.epoch : last + 1;
    return last;
  });
}

const points = (rows, key) => {
  const ordered = orderRows(rows);
  const xs = epochAxis(ordered);
  return ordered.map((r, i) => [xs[i], r[key]]).filter((p) => Number.isFinite(p[1]));
};

/** jobs: [{label, rows}] -> a grid of charts (series label prefixed with the job's label). */
export function metricCharts(jobs) {
  const multi = jobs.length > 1;
  const name = (job, what) => (multi ? `${job.label}: ${what}` : what);
  const series = (keys) => jobs.flatMap((job) => keys
    .map(([key, what]) => ({ label: name(job, what), points: points(job.rows, key) }))
    .filter((s) => s.points.length || !multi));
  const xLabel = "training epoch (the burn-in's at 0 and before)";
  const charts = [
    lineChart(series([["train_loss", "train loss"]]), { title: "Training loss", xLabel }),
    lineChart(series([["val_clean_acc", "val clean"], ["val_pgd_acc", "val PGD"]]),
      { title: "Validation accuracy (clean and PGD)", xLabel, yRange: [0, 1] }),
  ];
  const dy = jobs.some((j) => j.rows.some((r) => Number.isFinite(r.margin_q50)));
  if (dy) {
    charts.push(lineChart(series([["margin_q10", "R q10"], ["margin_q50", "R q50"], ["margin_q90", "R q90"]]),
      { title: "DyART margin quantiles", xLabel }));
    charts.push(lineChart(series([["frac_correct", "correct"], ["frac_found", "found"], ["frac_kept", "kept"]]),
      { title: "DyART fractions correct / found / kept", xLabel, yRange: [0, 1] }));
  }
  return h("div", { class: "charts" }, charts);
}

const PENDING = new Set(["queued", "running"]);

/** Queued or running: its numbers are still to come. */
export const isPending = (ev) => PENDING.has(ev.status);

/** The evaluation's short id, as its section and its chart series show it. */
export const shortId = (ev) => String(ev.id || "").slice(0, 8);

/** "best checkpoint, epoch 6" (the weights it evaluates), or null where the server does not say. */
export function checkpointOf(ev) {
  if (!ev.checkpoint_kind) return null;
  const epoch = Number.isFinite(ev.checkpoint_epoch) ? `, epoch ${ev.checkpoint_epoch}` : "";
  return `${ev.checkpoint_kind} checkpoint${epoch}`;
}

/** "preset standard, n = 360, best checkpoint, epoch 6". */
export function runOf(ev) {
  const of = checkpointOf(ev);
  return `preset ${ev.preset}, n = ${ev.n}${of ? `, ${of}` : ""}`;
}

/** What its numbers are worth: "leaderboard", "quick" (succeeded, not leaderboard-grade),
 * "pending" (queued or running), or its status ("failed", "canceled"). */
export function gradeOf(ev) {
  if (ev.leaderboard_grade) return "leaderboard";
  if (isPending(ev)) return "pending";
  return ev.status === "succeeded" ? "quick" : ev.status;
}

/** One line on the evaluation's grade: only a succeeded one that is not leaderboard-grade is "quick". */
export function evalNote(ev) {
  const grade = gradeOf(ev);
  const note = (cls, text, role) => h("p", { class: `${cls} eval-note`, "data-grade": grade, role }, text);
  const partial = ev.results?.length ? "; the numbers shown are the eps it finished, not leaderboard-grade" : "";
  if (grade === "leaderboard") return note("ok", `Leaderboard-grade AutoAttack (${runOf(ev)}).`);
  if (grade === "quick") {
    const of = checkpointOf(ev);
    return note("warn", `quick evaluation — ${ev.n} images, preset ${ev.preset}${of ? `, ${of}` : ""} — `
      + "not comparable to leaderboard numbers", "note");
  }
  if (isPending(ev) && ev.cancel_requested) {
    return note("pending", `pending — AutoAttack ${ev.status} (${runOf(ev)}); cancel requested, it stops before its next attack`);
  }
  if (isPending(ev)) return note("pending", `pending — AutoAttack ${ev.status} (${runOf(ev)}); its numbers come when it finishes`);
  if (grade === "failed") return note("muted", `failed — AutoAttack (${runOf(ev)}) did not finish${partial}`);
  if (grade === "canceled") return note("muted", `canceled — AutoAttack (${runOf(ev)}) was stopped${partial}`);
  return note("muted", `${ev.status} — AutoAttack (${runOf(ev)})`);
}

/** Why an evaluation failed, in the worker's words. */
export function evalError(ev) {
  const cls = ev.status === "failed" ? "error" : "muted"; // a canceled one says why it stopped, no alarm
  return h("p", { class: `${cls} eval-error` }, `Evaluation ${ev.status}: ${ev.error}`);
}

/** The warnings the model drew before the attacks (gradient masking, probabilities, train
 * mode): each a note beside the numbers it may inflate; none -> null. */
export function evalWarnings(ev) {
  const found = ev.warnings || [];
  if (!found.length) return null;
  return h("div", { class: "eval-warnings" }, found.map((text) =>
    h("p", { class: "warn eval-warning", role: "note" }, h("strong", {}, "Warning: "), text)));
}

function requested(ev) {
  const when = new Date(ev.created_at);
  return Number.isNaN(when.getTime()) ? ""
    : ` · requested ${when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" })}`;
}

/** One evaluation: a head line (status, id, weights, `actions`), its grade note, its error if it
 * has one, and its table when it has results. */
export function evalSection(ev, { actions = null } = {}) {
  const of = checkpointOf(ev);
  const head = h("div", { class: "eval-head" }, badge(ev.status), " ",
    h("span", { class: "eval-what" }, h("code", { class: "eval-id" }, `#${shortId(ev)}`),
      of ? ` · ${of}` : "", requested(ev)), actions);
  const table = ev.results?.length || ev.status === "succeeded";
  return h("div", { class: "evaluation", "data-status": ev.status, "data-evaluation-id": ev.id },
    head, evalNote(ev), evalWarnings(ev), ev.error ? evalError(ev) : null, table ? evalTable(ev) : null);
}

/** AutoAttack table: eps, clean, robust, one column per attack. */
export function evalTable(ev) {
  const attacks = [...new Set((ev.results || []).flatMap((r) => Object.keys(r.per_attack || {})))];
  const of = checkpointOf(ev);
  return h("div", { class: "table-wrap" }, h("table", { class: "autoattack" },
    h("caption", {}, `AutoAttack (${ev.norm || "linf"}, preset ${ev.preset}, n = ${ev.n})${of ? ` of the ${of}` : ""}, ${ev.status}`),
    h("thead", {}, h("tr", {}, ["eps", "clean", "robust", ...attacks].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, (ev.results || []).map((r) => h("tr", {},
      h("th", { scope: "row" }, num(r.eps)), h("td", {}, pct(r.clean_acc)), h("td", {}, pct(r.robust_acc)),
      attacks.map((a) => h("td", {}, pct(r.per_attack?.[a]))))))));
}

/** A chart label that tells one evaluation from another: preset, n, weights and short id. */
export function seriesLabel(ev) {
  const weights = ev.checkpoint_kind
    ? ` · ${ev.checkpoint_kind}${Number.isFinite(ev.checkpoint_epoch) ? ` ep ${ev.checkpoint_epoch}` : ""}` : "";
  return `${ev.preset} n=${ev.n}${weights} · #${shortId(ev)}`;
}

/** jobs: [{label, evaluations}] -> robust accuracy vs eps chart, one series per evaluation. */
export function robustVsEps(jobs) {
  const series = jobs.flatMap((job) => job.evaluations.filter((e) => e.results?.length).map((e) => ({
    label: `${jobs.length > 1 ? `${job.label}: ` : ""}${seriesLabel(e)}`,
    points: e.results.map((r) => [r.eps, r.robust_acc]).sort((a, b) => a[0] - b[0]),
  })));
  return lineChart(series, { title: "Robust accuracy vs eps", xLabel: "eps", yRange: [0, 1] });
}
