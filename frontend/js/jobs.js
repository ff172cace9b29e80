// #/jobs: the user's jobs with filters, refreshed every few seconds; filters and page live in the hash.
import { api } from "./api.js";
import { badge, duration, h, pct, position, progressBar, remaining } from "./dom.js";
import { pager } from "./pager.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "canceled"];
const FILTERS = ["status", "method", "dataset"];
const REFRESH_MS = 3000;

function select(id, label, options, value, onchange) {
  const s = h("select", { id, onchange }, options.map((o) => h("option", { value: o }, o || "any")));
  if (options.includes(value)) s.value = value;
  return h("label", { for: id }, label, s);
}

/** A job's row; its checkbox and link stay the same nodes across refreshes (see fill), so focus
 * and ticks survive them. Status comes early: on a phone it is the column that must be seen. */
function row(job, picked) {
  const box = h("input", { type: "checkbox", class: "pick", "aria-label": `select ${job.name || job.id} to compare` });
  box.checked = picked.has(job.id);
  box.addEventListener("change", () => (box.checked ? picked.add(job.id) : picked.delete(job.id)));
  const link = h("a", { href: `#/jobs/${job.id}` });
  const tr = h("tr", { "data-job-id": job.id }, h("td", {}, box), h("td", {}, link));
  for (let i = 0; i < 8; i += 1) tr.append(h("td"));
  return fill(tr, job);
}

/** Puts the job's current values in its row's cells, leaving the checkbox and link in place. */
function fill(tr, job) {
  const cfg = job.config || {};
  const m = job.latest_metrics || {};
  const cells = tr.children;
  cells[1].firstChild.textContent = job.name || job.id;
  const values = [badge(job.status), job.stage ? position(job) : "–", progressBar(job),
    `${cfg.dataset} / ${cfg.architecture} / ${cfg.method}`, duration(job.elapsed_seconds), remaining(job),
    pct(m.val_clean_acc), pct(m.val_pgd_acc)];
  values.forEach((v, i) => cells[i + 2].replaceChildren(v));
  return tr;
}

/** The filters and page offset the hash asks for (#/jobs?status=running&offset=50). */
function wanted(params) {
  const offset = Number.parseInt(params?.get("offset") ?? "0", 10);
  return { ...Object.fromEntries(FILTERS.map((k) => [k, params?.get(k) ?? ""])), offset: offset > 0 ? offset : 0 };
}

export async function jobsPage(main, { params } = {}) {
  const catalog = await api("/catalog");
  const start = wanted(params);
  const picked = new Set();
  const rows = new Map(); // job id -> its row, reused by every refresh
  const body = h("tbody");
  const total = h("p", { class: "muted", "aria-live": "polite" });
  const lost = h("p", { id: "connection-lost", class: "warn", role: "status", hidden: true });
  const note = h("span", { id: "compare-note", class: "muted", role: "status" });
  const pages = pager("jobs", "Pages of jobs", () => load().catch(() => {}), 50, start.offset);
  const refilter = () => { pages.reset(); load().catch(() => {}); };
  const filters = h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
    select("f-status", "Status", STATUSES, start.status, refilter),
    select("f-method", "Method", ["", ...catalog.methods.map((m) => m.name)], start.method, refilter),
    select("f-dataset", "Dataset", ["", ...catalog.datasets.map((d) => d.name)], start.dataset, refilter),
    h("button", { type: "button", id: "compare-selected", onclick: () => {
      if (picked.size) location.hash = `#/compare?ids=${[...picked].join(",")}`;
      else note.textContent = "Tick the jobs to compare first (the boxes at the start of each row).";
    } }, "Compare selected"), note);
  const headers = ["", "Name", "Status", "Stage", "Progress", "Dataset / arch / method",
    "Elapsed", "Remaining", "Val clean", "Val PGD"];
  const table = h("div", { class: "table-wrap" }, h("table", { class: "jobs" },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))), body));
  main.append(h("h1", {}, "Jobs"), filters, lost, total, table, pages.node);

  /** The filters chosen now, also written into the hash (replacing, not adding, a history
   * entry) so that Back from a job and a reload show the same list. */
  let here = location.hash; // this page's address, while it is the one shown
  function query() {
    const q = new URLSearchParams();
    for (const k of FILTERS) {
      const v = document.getElementById(`f-${k}`)?.value;
      if (v) q.set(k, v);
    }
    if (pages.offset) q.set("offset", String(pages.offset));
    const hash = `#/jobs${q.size ? `?${q}` : ""}`;
    if (location.hash === here && here !== hash) {
      history.replaceState(null, "", hash);
      here = hash;
    }
    q.set("limit", String(pages.limit));
    q.set("offset", String(pages.offset));
    return q;
  }
  function show(items, filtered) {
    const now = items.map((j) => (rows.has(j.id) ? fill(rows.get(j.id), j) : row(j, picked)));
    rows.clear();
    items.forEach((j, i) => rows.set(j.id, now[i]));
    const focused = document.activeElement;
    // a row moves only when out of place, so a row that stays keeps the focus inside it
    now.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
    while (body.children.length > now.length) body.lastChild.remove();
    if (focused && focused !== document.activeElement) refocus(focused);
    if (!items.length) {
      body.append(h("tr", { class: "empty" }, h("td", { colspan: 10 }, filtered
        ? "No job matches these filters." : ["No jobs yet — ", h("a", { href: "#/new" }, "start one"), "."])));
    }
  }
  /** Focus that a moved or redrawn row lost goes back to the same control of the same job. */
  function refocus(was) {
    const tr = was.closest?.("tr[data-job-id]");
    const again = tr && rows.get(tr.dataset.jobId)?.querySelector(was.matches("a") ? "a" : "input.pick");
    if (again && again.isConnected) again.focus();
  }

  let latest = 0; // a slow answer to an older request (a poll, another page) is dropped
  async function load() {
    const mine = ++latest;
    const q = query();
    const data = await api(`/jobs?${q}`);
    if (mine !== latest) return undefined;
    lost.hidden = true;
    if (!pages.show(data)) return load();
    show(data.items, FILTERS.some((k) => q.has(k)));
    total.textContent = `${data.total} job(s)`;
    return undefined;
  }
  await load();
  const timer = setInterval(() => load().catch((error) => {
    if (error.status === 401) return; // the page is being signed out
    lost.hidden = false;
    lost.textContent = `Connection lost, retrying every ${REFRESH_MS / 1000} s… (${error.message}) `
      + "The rows below are as they were when last read.";
  }), REFRESH_MS);
  return () => clearInterval(timer);
}
