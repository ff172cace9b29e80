// Previous / next buttons over a list endpoint's page ({items, total, limit, offset}).
import { h } from "./dom.js";

/** -> {node, offset, limit, reset(), show(page)}; a click moves the offset and calls go().
 * Starts at `offset` (a page's address may name one). */
export function pager(prefix, label, go, limit = 50, offset = 0) {
  const state = { offset, limit };
  const prev = h("button", { type: "button", id: `${prefix}-prev`, class: "secondary" }, "Previous");
  const next = h("button", { type: "button", id: `${prefix}-next`, class: "secondary" }, "Next");
  const where = h("span", { id: `${prefix}-where`, class: "muted", "aria-live": "polite" });
  prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - limit); go(); });
  next.addEventListener("click", () => { state.offset += limit; go(); });
  return {
    node: h("nav", { class: "pager", "aria-label": label }, prev, where, next),
    get offset() { return state.offset; },
    limit,
    reset() { state.offset = 0; },
    /** Shows `page`; false when its offset is past the end (the list shrank): moved back, load again. */
    show(page) {
      if (!page.items.length && page.offset > 0) {
        state.offset = Math.max(0, Math.floor((page.total - 1) / limit) * limit);
        return false;
      }
      where.textContent = page.total ? `${page.offset + 1}–${page.offset + page.items.length} of ${page.total}` : "";
      prev.disabled = page.offset === 0;
      next.disabled = page.offset + page.items.length >= page.total;
      return true;
    },
  };
}
