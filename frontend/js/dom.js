// DOM and formatting helpers shared by the pages.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function pct(v) {
  return Number.isFinite(v) ? `${(100 * v).toFixed(1)}%` : "–";
}

export function num(v, digits = 4) {
  return Number.isFinite(v) ? String(+v.toPrecision(digits)) : "–";
}

export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  return hh ? `${hh}h ${mm}m` : mm ? `${mm}m ${ss}s` : `${ss}s`;
}

export function badge(status) {
  return h("span", { class: `badge badge-${status}` }, status);
}

/** True while the job's AutoAttack stage runs: its length is unknown (the API gives no eta). */
export const attacking = (job) => job.status === "running" && job.stage === "evaluate";

/** Training progress; while AutoAttack runs, an indeterminate bar (training is done, the
 * attack's length is not known). */
export function progressBar(job, label) {
  const aria = label || `progress of ${job.name}`;
  if (attacking(job)) return h("progress", { max: 100, "aria-label": aria, "data-attacking": "true" }, "AutoAttack running");
  const value = Math.round(100 * (job.progress || 0));
  return h("progress", { max: 100, value, "aria-label": aria }, `${value}%`);
}

/** Where a job is in its stages, job.epoch counted against its stage's epochs. While it runs:
 * "train, epoch 3 of 6 running" (a step of it is recorded) or "train, epoch 3 of 6 done" (between
 * epochs); otherwise "train, during epoch 3 of 6" or "train, after epoch 3 of 6". */
export function position(job) {
  if (job.stage === "evaluate") return attacking(job) ? "AutoAttack running" : "AutoAttack evaluation";
  if (!job.stage) return "";
  const c = job.config || {};
  const of = { burn_in: c.burn_in_epochs, train: c.epochs }[job.stage];
  const epoch = `epoch ${job.epoch ?? 0}${Number.isFinite(of) ? ` of ${of}` : ""}`;
  const inside = job.step !== null && job.step !== undefined;
  if (job.status === "running") return `${job.stage}, ${epoch} ${inside ? "running" : "done"}`;
  return `${job.stage}, ${inside ? "during" : "after"} ${epoch}`;
}

/** Time left: "AutoAttack running" while that stage runs (no estimate), else the estimate or "–". */
export function remaining(job) {
  return attacking(job) ? "AutoAttack running" : duration(job.eta_seconds);
}

// The status line's notice belongs to one page: the one it was said on, or the one
// given (a submission's notice is for the job page it opens). Leaving it clears it.
let noticePage = null;

export function say(message, page = location.hash) {
  const line = document.getElementById("status");
  if (line) line.textContent = message;
  noticePage = message ? page : null;
}

export function clearStaleNotice() {
  if (noticePage !== null && noticePage !== location.hash) say("");
}

/** fn, run once `ms` after the first of a burst of calls (a stream's replay draws once). */
export function batched(fn, ms = 50) {
  let timer = null;
  const call = () => {
    if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
  call.cancel = () => { clearTimeout(timer); timer = null; };
  return call;
}
