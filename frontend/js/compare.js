// #/compare?ids=a,b: several jobs' curves overlaid and their AutoAttack tables side by side.
import { api } from "./api.js";
import { h, num, pct } from "./dom.js";
import { evalNote, metricCharts, robustVsEps } from "./results.js";

async function loadJob(id) {
  const [job, metrics, evals] = await Promise.all([api(`/jobs/${id}`), api(`/jobs/${id}/metrics`),
    api(`/jobs/${id}/evaluations`)]);
  return { job, label: job.name || id.slice(0, 8), rows: metrics.items, evaluations: evals.items };
}

/** The paper's table: one row per job, clean and robust accuracy per eps of its latest evaluation. */
function paperTable(jobs) {
  const latest = (j) => j.evaluations.filter((e) => e.results?.length).at(-1);
  const eps = [...new Set(jobs.flatMap((j) => (latest(j)?.results || []).map((r) => +r.eps.toPrecision(6))))].sort((a, b) => a - b);
  return h("div", { class: "table-wrap" }, h("table", { class: "autoattack compare-table" },
    h("caption", {}, "AutoAttack accuracy per eps (latest evaluation of each job)"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "job"), h("th", { scope: "col" }, "method"),
      h("th", { scope: "col" }, "clean"), eps.map((e) => h("th", { scope: "col" }, `robust @ ${num(e)}`)))),
    h("tbody", {}, jobs.map((j) => {
      const ev = latest(j);
      const at = (e) => ev?.results.find((r) => +r.eps.toPrecision(6) === e);
      return h("tr", { "data-job-id": j.job.id }, h("th", { scope: "row" }, h("a", { href: `#/jobs/${j.job.id}` }, j.label)),
        h("td", {}, j.job.config?.method ?? ""), h("td", {}, pct(ev?.results[0]?.clean_acc)),
        eps.map((e) => h("td", {}, pct(at(e)?.robust_acc))));
    }))));
}

async function picker(selected) {
  const data = await api("/jobs?limit=50");
  const boxes = data.items.map((j) => {
    const box = h("input", { type: "checkbox", id: `pick-${j.id}`, value: j.id });
    box.checked = selected.includes(j.id);
    return h("label", { for: `pick-${j.id}`, class: "pick" }, box, ` ${j.name || j.id} (${j.config?.method}, ${j.status})`);
  });
  const form = h("form", { class: "picker", onsubmit: (e) => {
    e.preventDefault();
    const ids = [...form.querySelectorAll("input:checked")].map((b) => b.value);
    location.hash = `#/compare?ids=${ids.join(",")}`;
  } }, h("fieldset", {}, h("legend", {}, "Jobs to compare"), boxes), h("button", { type: "submit" }, "Compare"));
  return form;
}

export async function comparePage(main, { params }) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  main.append(h("h1", {}, "Compare jobs"), await picker(ids));
  if (!ids.length) return null;
  const jobs = await Promise.all(ids.map(loadJob));
  main.append(h("h2", {}, "Training curves"), metricCharts(jobs), h("h2", {}, "AutoAttack"), paperTable(jobs),
    robustVsEps(jobs), h("div", { class: "side-by-side" }, jobs.map((j) => {
      const ev = j.evaluations.filter((e) => e.results?.length).at(-1);
      return h("section", { class: "card", "data-job-id": j.job.id }, h("h3", {}, j.label),
        ev ? evalNote(ev) : h("p", { class: "muted" }, "No evaluation yet."));
    })));
  return null;
}
