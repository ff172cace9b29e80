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

export function progressBar(job, label) {
  const value = Math.round(100 * (job.progress || 0));
  return h("progress", { max: 100, value, "aria-label": label || `progress of ${job.name}` }, `${value}%`);
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
