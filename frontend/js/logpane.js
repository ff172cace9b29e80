// The job page's log pane: the last MAX_LOG_LINES lines of the job's event stream.
import { batched, h } from "./dom.js";

export const MAX_LOG_LINES = 500;

const text = (line) => (typeof line === "string" ? line : `${line.ts ?? ""} ${line.level ?? ""} ${line.message}`);

/** -> {node, add(line), stop()}; a burst of lines (a stream's replay) is drawn once. A line
 * whose number (`id`, counted within the job) is not past the last one shown is one a replay
 * sends again (a stream that restarted from the beginning): it is not shown twice. */
export function logPane() {
  const node = h("pre", { id: "log", tabindex: "0", "aria-label": "log tail" });
  const lines = [];
  let last = 0;
  const draw = batched(() => {
    node.textContent = lines.join("\n");
    node.scrollTop = 1e9;
  });
  return {
    node,
    add(line) {
      if (Number.isInteger(line?.id)) {
        if (line.id <= last) return;
        last = line.id;
      }
      lines.push(text(line));
      if (lines.length > MAX_LOG_LINES) lines.splice(0, lines.length - MAX_LOG_LINES);
      draw();
    },
    stop: draw.cancel,
  };
}
