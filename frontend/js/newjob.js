// #/new: a job form generated from the catalog; shows the server's 422 messages per field.
import { api, newKey } from "./api.js";
import { h, say } from "./dom.js";

const slug = (field) => field.replace(/[^a-zA-Z0-9_-]/g, "-");

function defaultOf(param, dataset) {
  if (param.default === null && param.eps_scale) return +(param.eps_scale * dataset.eps).toPrecision(6);
  if (param.name === "val_size" && param.default === null) return dataset.val_size;
  if (param.name === "eval_eps" && param.default === null) return dataset.eval_eps.map((e) => +e.toPrecision(6)).join(", ");
  if (Array.isArray(param.default)) return param.default.join(", ");
  return param.default;
}

function input(param, field, value) {
  const id = `field-${slug(field)}`;
  const common = { id, name: field, "data-field": field, "aria-describedby": `help-${slug(field)} err-${slug(field)}` };
  if (param.type === "choice") {
    const s = h("select", common, param.choices.map((c) => h("option", { value: c }, c)));
    s.value = value;
    return s;
  }
  if (param.type === "bool") {
    const c = h("input", { ...common, type: "checkbox" });
    c.checked = !!value;
    return c;
  }
  if (param.type === "int" || param.type === "float") {
    // Text, not type=number: Chromium turns a typed "0,3" into 3 and "1e" into "", silently;
    // here the page reads what was typed and says what is wrong with it.
    return h("input", { ...common, type: "text", inputmode: param.type === "int" ? "numeric" : undefined,
      autocomplete: "off", spellcheck: "false", value: value ?? "" });
  }
  return h("input", { ...common, type: "text", value: value ?? "" });
}

function fieldRow(param, field, value) {
  const range = param.min !== null && param.min !== undefined ? ` [${param.min} … ${param.max}]` : "";
  return h("div", { class: "field" },
    h("label", { for: `field-${slug(field)}` }, param.name),
    input(param, field, value),
    h("small", { id: `help-${slug(field)}`, class: "muted" }, `${param.help || ""}${range}`),
    h("small", { id: `err-${slug(field)}`, class: "field-error", "aria-live": "polite" }));
}

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** `text` as a finite number, or the reason it is not one. */
export function parseNumber(text, name) {
  if (!NUMBER.test(text)) {
    const hint = text.includes(",") ? " (a decimal point, not a comma)" : "";
    return { error: `${name}: "${text}" is not a number; write it like 0.3 or 5e-4${hint}` };
  }
  const value = Number(text);
  return Number.isFinite(value) ? { value } : { error: `${name}: ${text} is too large` };
}

/** A field's value as {value}, {} when blank (the server's default), or {error} when unreadable.
 * A blank list is the empty list, not the default: for eval_eps that is "no evaluation", as its
 * help says. */
function readValue(node, param) {
  if (param.type === "bool") return { value: node.checked };
  const raw = node.value.trim();
  if (raw === "") return param.type === "float_list" ? { value: [] } : {};
  if (param.type === "int" || param.type === "float") return parseNumber(raw, param.name);
  if (param.type === "float_list") {
    const items = raw.split(/[\s,]+/).filter(Boolean).map((x) => parseNumber(x, param.name));
    const bad = items.find((x) => x.error);
    return bad || { value: items.map((x) => x.value) };
  }
  return { value: raw };
}

function archOptions(catalog, dataset, select) {
  const current = select.value;
  select.replaceChildren(...catalog.architectures.map((a) => {
    const fits = dataset.image_size >= a.min_image_size && dataset.image_size <= a.max_image_size;
    return h("option", { value: a.name, disabled: !fits },
      fits ? a.title : `${a.title} — does not fit ${dataset.image_size}px images`);
  }));
  const ok = [...select.options].find((o) => o.value === current && !o.disabled);
  select.value = ok ? current : [...select.options].find((o) => !o.disabled)?.value ?? "";
}

/** -> {body, errors}: the request, and a {field, message} for each value that cannot be sent. */
function buildBody(form, catalog) {
  const body = { hparams: {} };
  const errors = [];
  for (const key of ["name", "dataset", "architecture", "method"]) {
    const v = form.elements[key].value.trim();
    if (v) body[key] = v;
  }
  const read = (param, field, put) => {
    const { value, error } = readValue(form.querySelector(`[data-field="${field}"]`), param);
    if (error) errors.push({ field, message: error });
    else if (value !== undefined) put(value);
  };
  const method = catalog.methods.find((m) => m.name === body.method);
  for (const p of method.params) read(p, `hparams.${p.name}`, (v) => { body.hparams[p.name] = v; });
  for (const p of catalog.train_params) read(p, p.name, (v) => { body[p.name] = v; });
  return { body, errors };
}

/** Puts back the values the user gave fields in `boxes` (those that exist on this method). */
function restoreValues(boxes, values) {
  for (const node of boxes.flatMap((box) => [...box.querySelectorAll("[data-field]")])) {
    if (!values.has(node.dataset.field)) continue;
    const v = values.get(node.dataset.field);
    if (node.type === "checkbox") node.checked = v;
    else if (node.tagName !== "SELECT" || [...node.options].some((o) => o.value === v)) node.value = v;
  }
}

export function showErrors(form, detail) {
  const list = Array.isArray(detail) ? detail : [{ field: "", message: String(detail) }];
  const general = [];
  for (const d of list) {
    const slot = form.querySelector(`#err-${slug(d.field || "none")}`);
    if (slot) {
      slot.textContent = d.message;
      form.querySelector(`#field-${slug(d.field)}`)?.setAttribute("aria-invalid", "true");
    } else general.push(d.message);
  }
  form.querySelector("#form-errors").textContent = general.join("; ");
  (form.querySelector("[aria-invalid=true]") || form.querySelector("#form-errors")).focus?.();
}

/** A stored value as its field shows it (the inverse of readValue). */
function shown(param, value) {
  if (param.type === "bool") return !!value;
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

/** The job whose settings the form starts from (#/new?from=<id>), or a line saying why
 * it starts from the defaults instead. -> {job} | {problem} | {} */
async function startingJob(id) {
  if (!id) return {};
  try {
    return { job: await api(`/jobs/${encodeURIComponent(id)}`) };
  } catch (error) {
    if (error.status !== 404) throw error;
    return { problem: `Job ${id} was not found (deleted, mistyped, or not yours): the form shows the defaults.` };
  }
}

/** Whether a field's default comes from the dataset (an eps-like value, the validation
 * part, the AutoAttack radii): a copied value of it belongs to the copied job's dataset. */
const fromDataset = (param) => param.default === null && (!!param.eps_scale || ["val_size", "eval_eps"].includes(param.name));

/** The edits that make the form show `config`: every hyperparameter of its method and
 * every training setting it has (one stored before a setting existed keeps that default). */
function editsFrom(config, catalog) {
  const edits = new Map();
  const method = catalog.methods.find((m) => m.name === config.method);
  for (const p of method?.params || []) {
    const value = config.hparams?.[p.name];
    if (value !== undefined && value !== null) edits.set(`hparams.${p.name}`, shown(p, value));
  }
  for (const p of catalog.train_params) {
    const value = config[p.name];
    if (value !== undefined && value !== null) edits.set(p.name, shown(p, value));
  }
  return edits;
}

export async function newJobPage(main, { params } = { params: new URLSearchParams() }) {
  const catalog = await api("/catalog");
  const { job: source, problem } = await startingJob(params.get("from"));
  const presets = catalog.eval_presets || ["standard", "custom", "fast"];
  const datasetSel = h("select", { id: "field-dataset", name: "dataset", "data-field": "dataset" },
    catalog.datasets.map((d) => h("option", { value: d.name, disabled: d.available === false },
      d.available === false ? `${d.title} (not installed)` : d.title)));
  datasetSel.value = catalog.datasets.find((d) => d.available !== false)?.name ?? "";
  const archSel = h("select", { id: "field-architecture", name: "architecture", "data-field": "architecture" });
  const methodSel = h("select", { id: "field-method", name: "method", "data-field": "method" },
    catalog.methods.map((m) => h("option", { value: m.name }, m.title)));
  methodSel.value = catalog.methods.some((m) => m.name === "dyart") ? "dyart" : catalog.methods[0].name;
  const hparamBox = h("fieldset", { id: "hparams" });
  const trainBox = h("fieldset", { id: "train-params" });
  const simple = (label, control, field) => h("div", { class: "field" },
    h("label", { for: control.id }, label), control,
    h("small", { id: `err-${slug(field)}`, class: "field-error", "aria-live": "polite" }));
  const form = h("form", { id: "job-form", novalidate: true },
    simple("Name", h("input", { id: "field-name", name: "name", "data-field": "name", type: "text" }), "name"),
    simple("Dataset", datasetSel, "dataset"),
    simple("Architecture", archSel, "architecture"),
    simple("Method", methodSel, "method"),
    hparamBox, trainBox,
    h("p", { id: "form-errors", class: "error", tabindex: "-1", "aria-live": "assertive" }),
    h("button", { type: "submit" }, "Start training"));

  // A redraw (another method or dataset) keeps what the user gave each field it still has,
  // even one another method lacked; the rest show the method's and dataset's defaults.
  const sourceEdits = source ? editsFrom(source.config, catalog) : new Map(); // what the copied job had
  const edits = new Map(sourceEdits); // field -> the value the user gave it
  // Copied values that depend on the copied job's dataset and were not touched here: another
  // dataset shows its own defaults for them (MNIST's eps 0.3 is not CIFAR's 8/255).
  const fields = catalog.train_params.concat(...catalog.methods.map((m) => m.params.map((p) => ({ ...p, name: `hparams.${p.name}` }))));
  const copied = new Set(source ? fields.filter((p) => fromDataset(p) && edits.has(p.name)).map((p) => p.name) : []);
  const remember = ({ target }) => {
    if (!target.dataset?.field) return;
    edits.set(target.dataset.field, target.type === "checkbox" ? target.checked : target.value);
    copied.delete(target.dataset.field);
  };
  for (const box of [hparamBox, trainBox]) for (const type of ["input", "change"]) box.addEventListener(type, remember);
  function render() {
    const dataset = catalog.datasets.find((d) => d.name === datasetSel.value) || catalog.datasets[0];
    archOptions(catalog, dataset, archSel);
    const method = catalog.methods.find((m) => m.name === methodSel.value);
    hparamBox.replaceChildren(h("legend", {}, `${method.title} hyperparameters`),
      ...method.params.map((p) => fieldRow(p, `hparams.${p.name}`, defaultOf(p, dataset))));
    trainBox.replaceChildren(h("legend", {}, "Training and evaluation"),
      ...catalog.train_params.map((p) => {
        const param = p.name === "eval_preset" ? { ...p, choices: presets } : p;
        return fieldRow(param, p.name, defaultOf(p, dataset));
      }));
    restoreValues([hparamBox, trainBox], edits);
  }
  datasetSel.addEventListener("change", () => {
    for (const field of copied) {
      if (datasetSel.value === source.config.dataset) edits.set(field, sourceEdits.get(field));
      else edits.delete(field);
    }
    render();
  });
  methodSel.addEventListener("change", render);
  if (source) { // the job's dataset, method and architecture, where this server still has them
    const c = source.config;
    const pick = (select, value) => {
      if ([...select.options].some((o) => o.value === value && !o.disabled)) select.value = value;
    };
    pick(datasetSel, c.dataset);
    pick(methodSel, c.method);
    render();
    pick(archSel, c.architecture);
    form.elements.name.value = source.name ? `${source.name} (again)` : "";
  }
  render();
  // One Idempotency-Key per distinct request: a retry of the same form (a dropped
  // connection, a second click) finds the job the first attempt created.
  let pending = null;
  const submit = form.querySelector("button[type=submit]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    form.querySelectorAll(".field-error").forEach((e) => (e.textContent = ""));
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
    form.querySelector("#form-errors").textContent = "";
    const { body, errors } = buildBody(form, catalog);
    if (errors.length) {
      showErrors(form, errors);
      say("The job was not sent: some values are not numbers; see the messages in the form.");
      return;
    }
    const text = JSON.stringify(body);
    if (!pending || pending.text !== text) pending = { text, key: newKey() };
    submit.disabled = true;
    try {
      const job = await api("/jobs", { method: "POST", body, extraHeaders: { "Idempotency-Key": pending.key } });
      pending = null;
      say(`Job ${job.name || job.id} queued.`, `#/jobs/${job.id}`);
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (error.status === 422) showErrors(form, error.detail);
      else form.querySelector("#form-errors").textContent = error.message;
      say("The job was not accepted; see the messages in the form.");
    } finally {
      submit.disabled = false;
    }
  });
  const from = source
    ? h("p", { id: "form-source", class: "muted" }, "Settings from job ",
      h("a", { href: `#/jobs/${source.id}` }, source.name || source.id.slice(0, 8)),
      ": change any, then start.")
    : problem ? h("p", { id: "form-source", class: "warn", role: "note" }, problem) : null;
  main.append(h("h1", {}, "New training job"), from, form);
}
