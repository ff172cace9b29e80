// The job page's request for another AutoAttack run of one of its checkpoints
// (POST /jobs/<id>/evaluations); the server's 422 messages are shown under their fields.
import { api } from "./api.js";
import { h, say } from "./dom.js";
import { parseNumber } from "./newjob.js";

const PRESETS = ["standard", "custom", "fast"];
const CHECKPOINTS = [["", "best (else final)"], ["best", "best"], ["final", "final"]];

function field(name, label, control, help) {
  return h("div", { class: "field" }, h("label", { for: `ev-${name}` }, label), control,
    help ? h("small", { id: `ev-help-${name}`, class: "muted" }, help) : null,
    h("small", { id: `ev-err-${name}`, class: "field-error", "aria-live": "polite" }));
}

/** The request body from the form, or the {field, message} list of what cannot be read. */
function read(form) {
  const errors = [];
  const body = { preset: form.elements.preset.value };
  if (form.elements.checkpoint.value) body.checkpoint = form.elements.checkpoint.value;
  const eps = form.elements.eps.value.split(/[\s,]+/).filter(Boolean).map((x) => parseNumber(x, "eps"));
  const bad = eps.find((x) => x.error);
  if (bad) errors.push({ field: "eps", message: bad.error });
  body.eps = eps.map((x) => x.value);
  const n = form.elements.n.value.trim();
  if (n) {
    const parsed = parseNumber(n, "n");
    if (parsed.error) errors.push({ field: "n", message: parsed.error });
    body.n = parsed.value;
  }
  return { body, errors };
}

/** Each message under its field ("eps.1" is the eps field's), the rest under the button. */
function showErrors(form, detail) {
  const list = Array.isArray(detail) ? detail : [{ field: "", message: String(detail) }];
  const general = [];
  for (const d of list) {
    const name = String(d.field || "").split(".")[0];
    const slot = name && form.querySelector(`#ev-err-${name}`);
    if (!slot) { general.push(d.message); continue; }
    slot.textContent = slot.textContent ? `${slot.textContent}; ${d.message}` : d.message;
    form.querySelector(`#ev-${name}`).setAttribute("aria-invalid", "true");
  }
  form.querySelector("#ev-errors").textContent = general.join("; ");
  (form.querySelector("[aria-invalid=true]") || form.querySelector("#ev-errors")).focus();
}

function clearErrors(form) {
  form.querySelectorAll(".field-error").forEach((e) => (e.textContent = ""));
  form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  form.querySelector("#ev-errors").textContent = "";
}

/** -> a <details> holding the form; `requested(evaluation)` is called with the new evaluation. */
export function evalForm(job, requested) {
  const eps = (job.config?.eval_eps || []).map((e) => +(+e).toPrecision(6)).join(", ");
  const submit = h("button", { type: "submit" }, "Request evaluation");
  const form = h("form", { id: "eval-form", class: "eval-form", novalidate: true },
    field("checkpoint", "Checkpoint", h("select", { id: "ev-checkpoint", name: "checkpoint" },
      CHECKPOINTS.map(([value, text]) => h("option", { value }, text)))),
    field("eps", "eps", h("input", { id: "ev-eps", name: "eps", type: "text", value: eps, autocomplete: "off",
      spellcheck: "false", "aria-describedby": "ev-help-eps ev-err-eps" }), "L-inf radii on the pixel scale, comma-separated"),
    field("preset", "Preset", h("select", { id: "ev-preset", name: "preset" }, PRESETS.map((p) => h("option", { value: p }, p)))),
    field("n", "Test images (n)", h("input", { id: "ev-n", name: "n", type: "text", inputmode: "numeric", value: "1000",
      autocomplete: "off", "aria-describedby": "ev-help-n ev-err-n" }), "at most the test set (more means all of it)"),
    h("p", { id: "ev-errors", class: "error", tabindex: "-1", "aria-live": "assertive" }),
    h("div", { class: "buttons" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    clearErrors(form);
    const { body, errors } = read(form);
    if (errors.length) return showErrors(form, errors);
    submit.disabled = true;
    try {
      const ev = await api(`/jobs/${job.id}/evaluations`, { method: "POST", body });
      say(`Evaluation #${String(ev.id).slice(0, 8)} requested: AutoAttack ${ev.status}.`);
      requested(ev);
    } catch (error) {
      if (error.status === 422) showErrors(form, error.detail);
      else form.querySelector("#ev-errors").textContent = error.message;
    } finally {
      submit.disabled = false;
    }
    return undefined;
  });
  return h("details", { id: "eval-request" }, h("summary", {}, "Request an AutoAttack evaluation of a checkpoint"), form);
}
