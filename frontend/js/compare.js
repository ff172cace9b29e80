// #/compare?ids=a,b: several jobs' curves overlaid and their AutoAttack tables side by side.
import { api } from "./api.js";
import { h, num, pct } from "./dom.js";
import { pager } from "./pager.js";
import { evalError, evalNote, metricCharts, robustVsEps } from "./results.js";

async function loadJob(id) {
  const [job, metrics, evals] = await Promise.all([api(`/jobs/${id}`), api(`/jobs/${id}/metrics`),
    api(`/jobs/${id}/evaluations`)]);
  return { job, label: job.name || id.slice(0, 8), rows: metrics.items, evaluations: evals.items };
}

const datasetOf = (j) => j.job.config?.dataset ?? "";

/** The paper's table: one row per job, clean and robust accuracy per eps of its latest evaluation. */
function paperTable(jobs) {
  const latest = (j) => j.evaluations.filter((e) => e.results?.length).at(-1);
  const eps = [...new Set(jobs.flatMap((j) => (latest(j)?.results || []).map((r) => +r.eps.toPrecision(6))))].sort((a, b) => a - b);
  return h("div", { class: "table-wrap" }, h("table", { class: "autoattack compare-table" },
    h("caption", {}, "AutoAttack accuracy per eps (latest evaluation of each job)"),
    h("thead", {}, h("tr", {}, ["job", "dataset", "method", "clean"].map((t) => h("th", { scope: "col" }, t)),
      eps.map((e) => h("th", { scope: "col" }, `robust @ ${num(e)}`)))),
    h("tbody", {}, jobs.map((j) => {
      const ev = latest(j);
      const at = (e) => ev?.results.find((r) => +r.eps.toPrecision(6) === e);
      return h("tr", { "data-job-id": j.job.id }, h("th", { scope: "row" }, h("a", { href: `#/jobs/${j.job.id}` }, j.label)),
        h("td", { class: "dataset" }, datasetOf(j)), h("td", {}, j.job.config?.method ?? ""),
        h("td", {}, pct(ev?.results[0]?.clean_acc)), eps.map((e) => h("td", {}, pct(at(e)?.robust_acc))));
    }))));
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

/** A job's latest AutoAttack result, and the error of its latest evaluation if that one failed. */
function evalCard(j) {
  const ev = j.evaluations.filter((e) => e.results?.length).at(-1);
  const last = j.evaluations.at(-1);
  return h("section", { class: "card", "data-job-id": j.job.id }, h("h3", {}, `${j.label} (${datasetOf(j)})`),
    ev ? evalNote(ev) : h("p", { class: "muted" }, "No evaluation yet."), last?.error ? evalError(last) : null);
}

export async function comparePage(main, { params }) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  main.append(h("h1", {}, "Compare jobs"), await picker(ids));
  if (!ids.length) return null;
  const jobs = await Promise.all(ids.map(loadJob));
  const warning = datasetWarning(jobs);
  if (warning) main.append(warning);
  main.append(h("h2", {}, "Training curves"), metricCharts(jobs), h("h2", {}, "AutoAttack"), paperTable(jobs),
    robustVsEps(jobs), h("div", { class: "side-by-side" }, jobs.map(evalCard)));
  return null;
}
