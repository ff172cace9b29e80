// Charts and tables of a job's metric rows and AutoAttack evaluations (detail and compare pages).
import { lineChart } from "./chart.js";
import { h, num, pct } from "./dom.js";

/** Orders metric rows (burn-in first) and dedupes by stage+epoch; x = running epoch number. */
export function orderRows(rows) {
  const byKey = new Map();
  for (const r of rows) byKey.set(`${r.stage}:${r.epoch}`, r);
  const rank = { burn_in: 0, train: 1 };
  return [...byKey.values()].sort((a, b) => (rank[a.stage] ?? 2) - (rank[b.stage] ?? 2) || a.epoch - b.epoch);
}

const points = (rows, key) => rows.map((r, i) => [i + 1, r[key]]).filter((p) => Number.isFinite(p[1]));

/** jobs: [{label, rows}] -> a grid of charts (series label prefixed with the job's label). */
export function metricCharts(jobs) {
  const multi = jobs.length > 1;
  const name = (job, what) => (multi ? `${job.label}: ${what}` : what);
  const series = (keys) => jobs.flatMap((job) => keys
    .map(([key, what]) => ({ label: name(job, what), points: points(orderRows(job.rows), key) }))
    .filter((s) => s.points.length || !multi));
  const xLabel = "epoch (burn-in, then training)";
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

export function evalNote(ev) {
  if (ev.leaderboard_grade) return h("p", { class: "ok" }, `Leaderboard-grade AutoAttack (${ev.preset}, n = ${ev.n}).`);
  return h("p", { class: "warn", role: "note" },
    `quick evaluation — ${ev.n} images, preset ${ev.preset} — not comparable to leaderboard numbers`);
}

/** Why an evaluation failed, in the worker's words. */
export function evalError(ev) {
  return h("p", { class: "error eval-error" }, `Evaluation ${ev.status}: ${ev.error}`);
}

/** One evaluation: its note, its error if it has one, its table unless it failed with no result. */
export function evalSection(ev) {
  const table = ev.results?.length || ev.status !== "failed";
  return h("div", { class: "evaluation", "data-status": ev.status },
    evalNote(ev), ev.error ? evalError(ev) : null, table ? evalTable(ev) : null);
}

/** AutoAttack table: eps, clean, robust, one column per attack. */
export function evalTable(ev) {
  const attacks = [...new Set((ev.results || []).flatMap((r) => Object.keys(r.per_attack || {})))];
  return h("div", { class: "table-wrap" }, h("table", { class: "autoattack" },
    h("caption", {}, `AutoAttack (${ev.norm || "linf"}, preset ${ev.preset}, n = ${ev.n}, ${ev.status})`),
    h("thead", {}, h("tr", {}, ["eps", "clean", "robust", ...attacks].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, (ev.results || []).map((r) => h("tr", {},
      h("th", { scope: "row" }, num(r.eps)), h("td", {}, pct(r.clean_acc)), h("td", {}, pct(r.robust_acc)),
      attacks.map((a) => h("td", {}, pct(r.per_attack?.[a]))))))));
}

/** jobs: [{label, evaluations}] -> robust accuracy vs eps chart. */
export function robustVsEps(jobs) {
  const series = jobs.flatMap((job) => job.evaluations.filter((e) => e.results?.length).map((e) => ({
    label: `${jobs.length > 1 ? `${job.label}: ` : ""}${e.preset} n=${e.n}`,
    points: e.results.map((r) => [r.eps, r.robust_acc]).sort((a, b) => a[0] - b[0]),
  })));
  return lineChart(series, { title: "Robust accuracy vs eps", xLabel: "eps", yRange: [0, 1] });
}
