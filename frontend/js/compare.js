// #/compare?ids=a,b: several jobs' curves overlaid and their AutoAttack tables side by side.
import { api } from "./api.js";
import { h, num, pct } from "./dom.js";
import { pager } from "./pager.js";
import { evalError, evalNote, evalWarnings, gradeOf, metricCharts, robustVsEps, runOf, shortId } from "./results.js";

async function loadJob(id) {
  const [job, metrics, evals] = await Promise.all([api(`/jobs/${id}`), api(`/jobs/${id}/metrics`),
    api(`/jobs/${id}/evaluations`)]);
  return { job, label: job.name || id.slice(0, 8), rows: metrics.items, evaluations: evals.items };
}

const datasetOf = (j) => j.job.config?.dataset ?? "";

const PRESET_RANK = { standard: 3, custom: 2, fast: 1 };

/** Best grade first: leaderboard-grade, then succeeded (not a partial run), then standard >
 * custom > fast, then more images, then the newest. */
function byGrade(a, b) {
  return (b.leaderboard_grade === true) - (a.leaderboard_grade === true)
    || (b.status === "succeeded") - (a.status === "succeeded")
    || (PRESET_RANK[b.preset] ?? 0) - (PRESET_RANK[a.preset] ?? 0)
    || b.n - a.n
    || (Date.parse(b.created_at) || 0) - (Date.parse(a.created_at) || 0);
}

const epsKey = (eps) => +(+eps).toPrecision(6);

/** A job's numbers per eps, each from the best-grade evaluation with a result there:
 * {cells: Map eps -> {ev, r}, sources: the evaluations used, best first}. */
function bestResults(j) {
  const cells = new Map();
  for (const ev of [...j.evaluations].sort(byGrade)) {
    for (const r of ev.results || []) {
      if (Number.isFinite(r.robust_acc) && !cells.has(epsKey(r.eps))) cells.set(epsKey(r.eps), { ev, r });
    }
  }
  const used = new Set([...cells.values()].map((c) => c.ev));
  return { cells, sources: j.evaluations.filter((ev) => used.has(ev)).sort(byGrade) };
}

const GRADE_TEXT = { leaderboard: "leaderboard-grade", quick: "quick, not comparable to leaderboard numbers" };

/** Where a row's numbers come from: preset, n, weights and grade of each evaluation used. */
function sourceList(sources, mark) {
  return h("ul", { class: "sources" }, sources.map((ev) => {
    const grade = gradeOf(ev);
    return h("li", { "data-grade": grade, "data-evaluation-id": ev.id }, mark(ev) ? h("sup", {}, mark(ev)) : null,
      `${runOf(ev)} `, h("code", {}, `#${shortId(ev)}`), " — ",
      h("span", { class: `grade grade-${grade}` }, GRADE_TEXT[grade] ?? `${ev.status}, partial`));
  }));
}

/** The paper's table, after a line on how to read it: one row per job, clean and robust accuracy
 * per eps, each from the job's best-grade evaluation there, and which evaluations (preset, n,
 * grade) the numbers came from. */
function paperTable(jobs) {
  const best = new Map(jobs.map((j) => [j, bestResults(j)]));
  const eps = [...new Set([...best.values()].flatMap((b) => [...b.cells.keys()]))].sort((x, y) => x - y);
  const cell = (hit, mark) => (hit
    ? h("td", { class: hit.ev.leaderboard_grade ? "leaderboard" : "not-leaderboard", "data-evaluation-id": hit.ev.id,
      title: `${runOf(hit.ev)} — ${GRADE_TEXT[gradeOf(hit.ev)] ?? hit.ev.status}` }, pct(hit.value), mark(hit.ev) ? h("sup", {}, mark(hit.ev)) : null)
    : h("td", {}, "–"));
  const how = h("p", { class: "muted table-note", id: "compare-how" }, "Each number comes from the job's best-grade "
    + "evaluation at that eps: leaderboard-grade first, then standard, custom, fast, then more images, then the "
    + "newest. Shaded numbers are not leaderboard-grade; a letter names the evaluation a number came from.");
  return [how, h("div", { class: "table-wrap" }, h("table", { class: "autoattack compare-table", "aria-describedby": "compare-how" },
    h("caption", {}, "AutoAttack accuracy per eps"),
    h("thead", {}, h("tr", {}, ["job", "dataset", "method", "clean"].map((t) => h("th", { scope: "col" }, t)),
      eps.map((e) => h("th", { scope: "col" }, `robust @ ${num(e)}`)), h("th", { scope: "col" }, "from evaluations"))),
    h("tbody", {}, jobs.map((j) => {
      const { cells, sources } = best.get(j);
      const letters = new Map(sources.length > 1 ? sources.map((ev, i) => [ev, String.fromCharCode(97 + (i % 26))]) : []);
      const mark = (ev) => letters.get(ev) ?? null;
      const top = sources[0];
      const clean = top?.results.find((r) => Number.isFinite(r.clean_acc));
      return h("tr", { "data-job-id": j.job.id }, h("th", { scope: "row" }, h("a", { href: `#/jobs/${j.job.id}` }, j.label)),
        h("td", { class: "dataset" }, datasetOf(j)), h("td", {}, j.job.config?.method ?? ""),
        cell(clean && { ev: top, value: clean.clean_acc }, mark),
        eps.map((e) => cell(cells.has(e) && { ev: cells.get(e).ev, value: cells.get(e).r.robust_acc }, mark)),
        h("td", { class: "from" }, sources.length ? sourceList(sources, mark) : h("span", { class: "muted" }, "no results yet")));
    }))))];
}

/** A warning when the jobs were trained on different datasets: eps and accuracies do not compare. */
function datasetWarning(jobs) {
  const datasets = [...new Set(jobs.map(datasetOf))];
  if (datasets.length < 2) return null;
  return h("p", { class: "warn", role: "note", id: "dataset-warning" },
    `These jobs were trained on different datasets (${datasets.join(", ")}): each dataset has its own `
    + "eps scale and test set, so their accuracies and eps columns do not compare.");
}

function pickBox(job, chosen) {
  const box = h("input", { type: "checkbox", id: `pick-${job.id}`, value: job.id });
  box.checked = chosen.has(job.id);
  box.addEventListener("change", () => (box.checked ? chosen.add(job.id) : chosen.delete(job.id)));
  const c = job.config || {};
  return h("label", { for: `pick-${job.id}`, class: "pick" }, box,
    ` ${job.name || job.id} (${c.dataset}, ${c.method}, ${job.status})`);
}

/** Jobs to compare, a page at a time, searchable by name or id; picks survive paging. */
async function picker(selected) {
  const chosen = new Set(selected);
  const list = h("div", { class: "pick-list" });
  const count = h("span", { class: "muted", "aria-live": "polite" });
  const search = h("input", { type: "search", id: "pick-q", placeholder: "name or id", "aria-label": "Search jobs by name or id" });
  const pages = pager("pick", "Pages of jobs to compare", () => load().catch(() => {}), 20);
  let latest = 0;
  async function load() {
    const mine = ++latest;
    const q = new URLSearchParams({ limit: String(pages.limit), offset: String(pages.offset) });
    if (search.value.trim()) q.set("q", search.value.trim());
    const data = await api(`/jobs?${q}`);
    if (mine !== latest) return undefined;
    if (!pages.show(data)) return load();
    list.replaceChildren(...(data.items.length ? data.items.map((j) => pickBox(j, chosen)) : [h("p", { class: "muted" }, "No job matches.")]));
    return undefined;
  }
  search.addEventListener("input", () => { pages.reset(); load().catch(() => {}); });
  const form = h("form", { class: "picker", onsubmit: (e) => {
    e.preventDefault();
    location.hash = `#/compare?ids=${[...chosen].join(",")}`;
  } }, h("fieldset", {}, h("legend", {}, "Jobs to compare"), h("label", { class: "pick-search" }, "Search ", search), list),
  pages.node, h("div", { class: "buttons" }, h("button", { type: "submit" }, "Compare"), count));
  list.addEventListener("change", () => { count.textContent = `${chosen.size} selected`; });
  count.textContent = `${chosen.size} selected`;
  await load();
  return form;
}

/** Every evaluation of a job, newest first: its grade (or that it is pending, failed,
 * canceled) and its error if it has one. */
function evalCard(j) {
  const evs = [...j.evaluations].reverse();
  return h("section", { class: "card", "data-job-id": j.job.id }, h("h3", {}, `${j.label} (${datasetOf(j)})`),
    evs.length ? evs.map((ev) => h("div", { class: "eval-line", "data-evaluation-id": ev.id, "data-status": ev.status },
      h("code", { class: "eval-id" }, `#${shortId(ev)}`), evalNote(ev), evalWarnings(ev), ev.error ? evalError(ev) : null))
      : h("p", { class: "muted" }, "No evaluation yet."));
}

export async function comparePage(main, { params }) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  main.append(h("h1", {}, "Compare jobs"), await picker(ids));
  if (!ids.length) return null;
  // a job that is gone or not yours (404) is named and left out; any other error fails the page
  const loaded = await Promise.all(ids.map((id) => loadJob(id).catch((error) => {
    if (error.status === 404) return { missing: id };
    throw error;
  })));
  const missing = loaded.filter((j) => j.missing).map((j) => j.missing);
  const jobs = loaded.filter((j) => !j.missing);
  if (missing.length) {
    main.append(h("p", { class: "warn", role: "note", id: "compare-missing" },
      `Not found (deleted, mistyped, or not yours): ${missing.join(", ")}. `
      + (jobs.length ? "The other jobs are compared below." : "There is nothing else to compare.")));
  }
  if (!jobs.length) return null;
  const warning = datasetWarning(jobs);
  if (warning) main.append(warning);
  main.append(h("h2", {}, "Training curves"), metricCharts(jobs), h("h2", {}, "AutoAttack"), ...paperTable(jobs),
    robustVsEps(jobs), h("div", { class: "side-by-side" }, jobs.map(evalCard)));
  return null;
}
