// #/jobs: the user's jobs with filters, refreshed every few seconds.
import { api } from "./api.js";
import { badge, duration, h, pct, progressBar } from "./dom.js";
import { pager } from "./pager.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "canceled"];

function select(id, label, options, onchange) {
  const s = h("select", { id, onchange }, options.map((o) => h("option", { value: o }, o || "any")));
  return h("label", { for: id }, label, s);
}

function row(job, picked) {
  const cfg = job.config || {};
  const m = job.latest_metrics || {};
  const box = h("input", { type: "checkbox", "aria-label": `select ${job.name} to compare` });
  box.checked = picked.has(job.id);
  box.addEventListener("change", () => (box.checked ? picked.add(job.id) : picked.delete(job.id)));
  return h("tr", { "data-job-id": job.id },
    h("td", {}, box),
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.name || job.id)),
    h("td", {}, `${cfg.dataset} / ${cfg.architecture} / ${cfg.method}`),
    h("td", {}, badge(job.status)),
    h("td", {}, job.stage ? `${job.stage} ${job.epoch ?? ""}` : "–"),
    h("td", {}, progressBar(job)),
    h("td", {}, duration(job.elapsed_seconds)),
    h("td", {}, duration(job.eta_seconds)),
    h("td", {}, pct(m.val_clean_acc)),
    h("td", {}, pct(m.val_pgd_acc)));
}

export async function jobsPage(main) {
  const catalog = await api("/catalog");
  const picked = new Set();
  const body = h("tbody");
  const total = h("p", { class: "muted", "aria-live": "polite" });
  const pages = pager("jobs", "Pages of jobs", () => load().catch(() => {}));
  const refilter = () => { pages.reset(); load().catch(() => {}); };
  const filters = h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
    select("f-status", "Status", STATUSES, refilter),
    select("f-method", "Method", ["", ...catalog.methods.map((m) => m.name)], refilter),
    select("f-dataset", "Dataset", ["", ...catalog.datasets.map((d) => d.name)], refilter),
    h("button", { type: "button", onclick: () => {
      if (picked.size) location.hash = `#/compare?ids=${[...picked].join(",")}`;
    } }, "Compare selected"));
  const headers = ["", "Name", "Dataset / arch / method", "Status", "Stage", "Progress",
    "Elapsed", "Remaining", "Val clean", "Val PGD"];
  const table = h("div", { class: "table-wrap" }, h("table", { class: "jobs" },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))), body));
  main.append(h("h1", {}, "Jobs"), filters, total, table, pages.node);

  let latest = 0; // a slow answer to an older request (a poll, another page) is dropped
  async function load() {
    const mine = ++latest;
    const q = new URLSearchParams({ limit: String(pages.limit), offset: String(pages.offset) });
    for (const k of ["status", "method", "dataset"]) {
      const v = document.getElementById(`f-${k}`)?.value;
      if (v) q.set(k, v);
    }
    const data = await api(`/jobs?${q}`);
    if (mine !== latest) return undefined;
    if (!pages.show(data)) return load();
    body.replaceChildren(...data.items.map((j) => row(j, picked)));
    if (!data.items.length) body.append(h("tr", {}, h("td", { colspan: 10 }, "No jobs yet — ", h("a", { href: "#/new" }, "start one"), ".")));
    total.textContent = `${data.total} job(s)`;
  }
  await load();
  const timer = setInterval(() => load().catch(() => {}), 3000);
  return () => clearInterval(timer);
}
