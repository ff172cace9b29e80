// #/jobs/<id>: live progress over SSE, charts, AutoAttack results, log, controls, downloads.
import { api, download, follow } from "./api.js";
import { badge, batched, duration, h, pct, progressBar, say } from "./dom.js";
import { logPane } from "./logpane.js";
import { evalSection, isPending, metricCharts, robustVsEps, shortId } from "./results.js";

const FINAL = new Set(["succeeded", "failed", "canceled"]);
// Once the job's event stream has ended, its evaluations are read again every so often: often
// while one is queued or running, now and then otherwise (one may be requested from elsewhere).
const EVAL_POLL_PENDING_MS = 3000;
const EVAL_POLL_IDLE_MS = 10000;

/** "train, epoch 3 of 6": job.epoch counts within its stage, so it is shown against that stage's epochs. */
function position(job) {
  if (job.stage === "evaluate") return "evaluate (AutoAttack)";
  const c = job.config || {};
  const of = { burn_in: c.burn_in_epochs, train: c.epochs }[job.stage];
  return `${job.stage}, epoch ${job.epoch ?? 0}${Number.isFinite(of) ? ` of ${of}` : ""}`;
}

function summary(job) {
  const m = job.latest_metrics || {};
  const where = position(job);
  const stage = job.status === "succeeded" ? ""
    : FINAL.has(job.status) ? (job.stage ? `stopped in ${where}` : "")
      : job.stage ? where : "waiting for a worker";
  return h("div", { class: "summary" },
    h("p", {}, badge(job.status), " ", h("span", { id: "stage" }, stage)),
    progressBar(job, "job progress"),
    h("dl", { class: "facts" },
      ...[["Elapsed", duration(job.elapsed_seconds)], ["Remaining", duration(job.eta_seconds)],
        ["Val clean", pct(m.val_clean_acc)], ["Val PGD", pct(m.val_pgd_acc)],
        ["Best PGD", job.best ? `${pct(job.best.val_pgd_acc)} (epoch ${job.best.epoch})` : "–"],
        ["Attempts", job.attempts ?? 0]].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    job.error ? h("p", { class: "error" }, job.error) : null);
}

function config(job) {
  const c = job.config || {};
  return h("details", {}, h("summary", {}, `${c.dataset} / ${c.architecture} / ${c.method} — configuration`),
    h("pre", {}, JSON.stringify(c, null, 2)));
}

function checkpointRow(ck) {
  const out = h("span", { class: "muted", "aria-live": "polite" });
  const buttons = Object.entries(ck.files || {}).map(([format, url]) => h("button", {
    type: "button", class: "secondary", "data-format": format,
    onclick: async () => {
      try {
        const file = await download(url);
        out.textContent = `saved ${file.name} (${file.size} bytes)`;
      } catch (error) { out.textContent = error.message; }
    },
  }, `Download ${format}`));
  return h("li", { class: "checkpoint", "data-kind": ck.kind },
    h("strong", {}, ck.kind), ` ${ck.stage} epoch ${ck.epoch} · ${ck.size} bytes · sha256 `,
    h("code", { class: "sha256" }, ck.sha256), h("div", { class: "buttons" }, buttons), out);
}

export async function detailPage(main, { parts }) {
  const id = parts[1];
  let job = await api(`/jobs/${id}`);
  let rows = (await api(`/jobs/${id}/metrics`)).items;
  const log = logPane(); // filled by the event stream, which starts with the log's first line
  const parts$ = {
    summary: h("section", { id: "summary", "aria-live": "polite" }),
    controls: h("div", { class: "buttons" }),
    charts: h("section", { id: "charts", "aria-label": "Training curves" }),
    evals: h("section", { id: "evaluations", "aria-label": "AutoAttack evaluations" }),
    checkpoints: h("ul", { id: "checkpoints" }),
  };
  const title = h("h1", {}, job.name || job.id);
  main.append(title, parts$.summary, parts$.controls, config(job), h("h2", {}, "Training curves"), parts$.charts,
    h("h2", {}, "AutoAttack"), parts$.evals, h("h2", {}, "Checkpoints"), parts$.checkpoints,
    h("h2", {}, "Log"), log.node);

  const act = (verb) => async () => {
    try {
      job = await api(`/jobs/${id}/${verb}`, { method: "POST" });
      say(`Job ${verb} requested.`);
      drawJob();
      if (verb === "resume") listen(); // the last stream ended with the job's last run
    } catch (error) { say(error.message); }
  };
  function drawJob() {
    parts$.summary.replaceChildren(summary(job));
    parts$.controls.replaceChildren(
      h("button", { type: "button", id: "cancel", disabled: FINAL.has(job.status) || job.cancel_requested, onclick: act("cancel") }, "Cancel"),
      h("button", { type: "button", id: "resume", class: "secondary", disabled: !["failed", "canceled"].includes(job.status), onclick: act("resume") }, "Resume"),
      h("a", { href: `#/compare?ids=${id}`, class: "button-link" }, "Compare…"));
  }
  const chartsNow = () => parts$.charts.replaceChildren(metricCharts([{ label: job.name, rows }]));
  const drawCharts = batched(chartsNow);
  let evs = [];
  let evsShown = null; // what is drawn, as JSON: a poll that finds nothing new redraws nothing
  let streamEnded = false;
  let closed = false;
  let pollTimer = null;
  async function cancelEval(ev) {
    try {
      await api(`/jobs/${id}/evaluations/${ev.id}/cancel`, { method: "POST" });
      say(`Evaluation #${shortId(ev)} cancel requested.`);
    } catch (error) { say(`Evaluation #${shortId(ev)} not canceled: ${error.message}`); }
    await drawEvals().catch(() => {});
  }
  function evalActions(ev) {
    if (!isPending(ev)) return null;
    // the job's own evaluation (no checkpoint row of its own) stops with the job, not by itself
    if (ev.status === "running" && !ev.checkpoint_id) {
      return h("span", { class: "muted own-evaluation" }, "the job's own evaluation: cancel the job to stop it");
    }
    return h("button", { type: "button", class: "secondary cancel-evaluation", disabled: ev.cancel_requested === true,
      onclick: () => cancelEval(ev) }, ev.cancel_requested ? "Cancel requested" : "Cancel evaluation");
  }
  async function drawEvals() {
    const items = (await api(`/jobs/${id}/evaluations`)).items;
    if (closed) return;
    evs = items;
    const shown = JSON.stringify(evs);
    if (shown !== evsShown) {
      evsShown = shown;
      const chart = evs.some((ev) => ev.results?.length) ? robustVsEps([{ label: job.name, evaluations: evs }]) : null;
      parts$.evals.replaceChildren(...(evs.length ? [chart, ...evs.map((ev) => evalSection(ev, { actions: evalActions(ev) }))]
        .filter(Boolean) : [h("p", { class: "muted" }, "No evaluation yet.")]));
    }
    pollEvals();
  }
  /** Reads the evaluations again later while one is pending or the stream no longer tells. */
  function pollEvals() {
    clearTimeout(pollTimer);
    pollTimer = null;
    const pending = evs.some(isPending);
    if (closed || (!pending && !streamEnded)) return;
    pollTimer = setTimeout(() => {
      pollTimer = null;
      if (document.hidden) pollEvals();
      else drawEvals().catch(() => pollEvals());
    }, pending ? EVAL_POLL_PENDING_MS : EVAL_POLL_IDLE_MS);
  }
  async function drawCheckpoints() {
    const cks = (await api(`/jobs/${id}/checkpoints`)).items;
    parts$.checkpoints.replaceChildren(...(cks.length ? cks.map(checkpointRow) : [h("li", { class: "muted" }, "No checkpoint yet.")]));
  }
  const refreshCheckpoints = batched(() => drawCheckpoints().catch(() => {}), 250);
  const refreshEvals = batched(() => drawEvals().catch(() => {}), 250);
  function addRow(row) { // the stream replays rows already loaded: one row per stage and epoch
    rows = [...rows.filter((r) => r.stage !== row.stage || r.epoch !== row.epoch), row];
    drawCharts();
    refreshCheckpoints();
  }
  drawJob(); chartsNow();
  await Promise.all([drawEvals(), drawCheckpoints()]);

  let paused = false; // the stream said the database is unreachable
  let cursor = null; // the last event id seen: a new stream starts after it, nothing twice
  let stop = () => {};
  function onEvent(type, data, eventId) {
    if (eventId) cursor = eventId;
    if (type === "unavailable") { paused = true; say(data.detail); return; }
    if (paused) { paused = false; say("Live updates resumed."); }
    if (type === "job") { job = data; drawJob(); }
    else if (type === "metric") addRow(data);
    else if (type === "log") log.add(data);
    else if (type === "evaluation") refreshEvals();
    else if (type === "end") {
      streamEnded = true;
      refreshEvals(); refreshCheckpoints(); say(`Job ${job.status}.`);
    }
  }
  function listen() {
    stop();
    streamEnded = false;
    stop = follow(`/jobs/${id}/events`, onEvent, { since: cursor });
  }
  listen();
  return () => {
    closed = true;
    clearTimeout(pollTimer);
    stop(); log.stop(); [drawCharts, refreshCheckpoints, refreshEvals].forEach((f) => f.cancel());
  };
}
