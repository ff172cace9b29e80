// #/jobs/<id>: live progress over SSE, charts, AutoAttack results, log, controls, downloads.
import { api, download, follow } from "./api.js";
import { badge, batched, duration, h, pct, position, progressBar, remaining, say } from "./dom.js";
import { evalForm } from "./evalform.js";
import { logPane } from "./logpane.js";
import { evalSection, isPending, metricCharts, robustVsEps, shortId } from "./results.js";

const FINAL = new Set(["succeeded", "failed", "canceled"]);
// Once the job's event stream has ended, its evaluations are read again every so often: often
// while one is queued or running, now and then otherwise (one may be requested from elsewhere).
const EVAL_POLL_PENDING_MS = 3000;
const EVAL_POLL_IDLE_MS = 10000;
// A running job's elapsed time goes on between its events (the stream sends the job only
// when something else about it changes): the clock is redrawn every second.
const CLOCK_MS = 1000;

function summary(job) {
  const m = job.latest_metrics || {};
  const where = position(job);
  const stage = job.status === "succeeded" ? ""
    : FINAL.has(job.status) ? (job.stage ? `stopped in ${where}` : "")
      : job.stage ? where : "waiting for a worker";
  return h("div", { class: "summary" },
    h("p", {}, badge(job.status), " ", h("span", { id: "stage" }, stage)),
    progressBar(job, "job progress"),
    h("dl", { class: "facts" }, // one element per label and value: the grid never splits a pair
      ...[["Elapsed", duration(job.elapsed_seconds), { id: "elapsed", "aria-live": "off" }],
        ["Remaining", remaining(job)],
        ["Val clean", pct(m.val_clean_acc)], ["Val PGD", pct(m.val_pgd_acc)],
        ["Best PGD", job.best ? `${pct(job.best.val_pgd_acc)} (epoch ${job.best.epoch})` : "–"],
        ["Attempts", job.attempts ?? 0]].map(([k, v, attrs]) => h("div", { class: "fact" }, h("dt", {}, k), h("dd", attrs || {}, v)))),
    job.error ? h("p", { class: "error" }, job.error) : null);
}

function config(job) {
  const c = job.config || {};
  return h("details", {}, h("summary", {}, `${c.dataset} / ${c.architecture} / ${c.method} — configuration`),
    h("pre", {}, JSON.stringify(c, null, 2)));
}

/** The job's Delete button and its inline confirmation ("Delete this job and its checkpoints?
 * [Delete] [Keep]"; Escape keeps). Only a finished job can be deleted: otherwise the button is
 * marked unavailable, as Cancel and Resume are. `deleting()` is called as the request is sent,
 * `deleted()` after the server's 204, `refused(error)` after anything else.
 * -> {button, confirm, update(job)}. */
function deleteControl(id, { deleting, deleted, refused }) {
  const button = h("button", { type: "button", id: "delete", class: "secondary", "aria-expanded": "false",
    "aria-controls": "delete-confirm" }, "Delete");
  const yes = h("button", { type: "button", id: "delete-yes", class: "danger" }, "Delete");
  const keep = h("button", { type: "button", id: "delete-keep", class: "secondary" }, "Keep");
  const confirm = h("div", { id: "delete-confirm", class: "confirm", role: "group", "aria-labelledby": "delete-question",
    hidden: true }, h("span", { id: "delete-question" }, "Delete this job and its checkpoints?"), yes, keep);
  const ask = (open, focus = true) => {
    confirm.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    if (focus) (open ? keep : button).focus(); // the safe answer first; Delete is one Shift+Tab away
  };
  button.addEventListener("click", () => {
    if (button.getAttribute("aria-disabled") !== "true") ask(confirm.hidden);
  });
  keep.addEventListener("click", () => ask(false));
  confirm.addEventListener("keydown", (event) => { if (event.key === "Escape") ask(false); });
  yes.addEventListener("click", async () => {
    if (yes.getAttribute("aria-disabled") === "true") return;
    yes.setAttribute("aria-disabled", "true"); // one request at a time
    deleting();
    try {
      await api(`/jobs/${id}`, { method: "DELETE" });
      deleted();
    } catch (error) {
      ask(false);
      refused(error);
    } finally { yes.removeAttribute("aria-disabled"); }
  });
  const update = (job) => {
    const finished = FINAL.has(job.status);
    button.setAttribute("aria-disabled", String(!finished));
    // resumed from elsewhere: nothing left to confirm (focus inside the question goes back to Delete)
    if (!finished && !confirm.hidden) ask(false, confirm.contains(document.activeElement));
  };
  return { button, confirm, update };
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
  let jobAt = performance.now(); // when `job` was read: its elapsed_seconds held then
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
    h("h2", {}, "AutoAttack"), evalForm(job, () => drawEvals().catch(() => {})), parts$.evals, h("h2", {}, "Checkpoints"), parts$.checkpoints,
    h("h2", {}, "Log"), log.node);

  // The buttons are made once and only marked unavailable (aria-disabled, still focusable), so
  // neither a job event nor a press takes the keyboard focus away from them.
  const act = (verb) => async ({ currentTarget }) => {
    if (currentTarget.getAttribute("aria-disabled") === "true") return;
    try {
      job = await api(`/jobs/${id}/${verb}`, { method: "POST" });
      jobAt = performance.now();
      say(`Job ${verb} requested.`);
      drawJob();
      if (verb === "resume") listen(); // the last stream ended with the job's last run
    } catch (error) { say(error.message); }
  };
  const cancelButton = h("button", { type: "button", id: "cancel", onclick: act("cancel") }, "Cancel");
  const resumeButton = h("button", { type: "button", id: "resume", class: "secondary", onclick: act("resume") }, "Resume");
  const remover = deleteControl(id, {
    deleting: () => {
      holding = true;
      clearTimeout(pollTimer);
    },
    deleted: () => {
      leave(); // nothing of this job is asked for again: it is gone
      say(`Job ${job.name || id.slice(0, 8)} deleted.`, "#/jobs");
      location.hash = "#/jobs";
    },
    refused: (error) => {
      holding = false;
      say(`Job not deleted: ${error.message}`);
      drawEvals().catch(() => pollEvals()); // a 409 may be about an evaluation this page has not seen yet
      refreshCheckpoints();
    },
  });
  parts$.controls.append(cancelButton, resumeButton, remover.button,
    h("a", { href: `#/compare?ids=${id}`, class: "button-link" }, "Compare…"),
    h("a", { href: `#/new?from=${id}`, id: "again", class: "button-link" }, "New job from this…"));
  parts$.controls.after(remover.confirm);
  function drawJob() {
    parts$.summary.replaceChildren(summary(job));
    cancelButton.setAttribute("aria-disabled", String(FINAL.has(job.status) || !!job.cancel_requested));
    cancelButton.textContent = job.cancel_requested && !FINAL.has(job.status) ? "Cancel requested" : "Cancel";
    resumeButton.setAttribute("aria-disabled", String(!["failed", "canceled"].includes(job.status)));
    remover.update(job);
  }
  const chartsNow = () => parts$.charts.replaceChildren(metricCharts([{ label: job.name, rows }]));
  const drawCharts = batched(chartsNow);
  let evs = [];
  let evsShown = null; // what is drawn, as JSON: a poll that finds nothing new redraws nothing
  let streamEnded = false;
  let closed = false;
  let holding = false; // a delete is on its way: nothing more is read of a job that may be gone
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
    if (holding) return;
    const items = (await api(`/jobs/${id}/evaluations`)).items;
    if (closed) return;
    evs = items;
    const shown = JSON.stringify(evs);
    if (shown !== evsShown) {
      evsShown = shown;
      const chart = evs.some((ev) => ev.results?.length) ? robustVsEps([{ label: job.name, evaluations: evs }]) : null;
      const focused = document.activeElement?.closest?.("#evaluations [data-evaluation-id]");
      parts$.evals.replaceChildren(...(evs.length ? [chart, ...evs.map((ev) => evalSection(ev, { actions: evalActions(ev) }))]
        .filter(Boolean) : [h("p", { class: "muted" }, "No evaluation yet.")]));
      // focus on an evaluation's button goes back to the same evaluation's button after the redraw
      if (focused) parts$.evals.querySelector(`[data-evaluation-id="${focused.dataset.evaluationId}"] button`)?.focus();
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
    if (holding) return;
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
    if (type === "job") { job = data; jobAt = performance.now(); drawJob(); }
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
  const clock = setInterval(() => {
    const shown = parts$.summary.querySelector("#elapsed");
    if (shown && job.status === "running" && Number.isFinite(job.elapsed_seconds)) {
      shown.textContent = duration(job.elapsed_seconds + (performance.now() - jobAt) / 1000);
    }
  }, CLOCK_MS);
  function leave() {
    closed = true;
    clearInterval(clock);
    clearTimeout(pollTimer);
    stop(); log.stop(); [drawCharts, refreshCheckpoints, refreshEvals].forEach((f) => f.cancel());
  }
  listen();
  return leave;
}
