// Small SVG line charts: axes, ticks, a legend, one polyline + markers per series.
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2"];
// Once the colours run out, the next round of series changes its line and marker too,
// so no two of the first COLORS.length * LOOKS.length series look the same.
const LOOKS = [
  { dash: "", marker: "circle" },
  { dash: "6 3", marker: "square" },
  { dash: "2 3", marker: "triangle" },
  { dash: "9 3 2 3", marker: "diamond" },
];
const W = 480, H = 240, PAD = { l: 48, r: 12, t: 12, b: 32 };

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function extent(values, fallback) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return fallback;
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 0.5;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

function ticks(lo, hi, n = 5) {
  return Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / (n - 1));
}

/** A tick label with as many decimals as the tick spacing `step` needs. */
function fmt(v, step) {
  const a = Math.abs(v);
  if (a >= 1e4 || (a !== 0 && a < 1e-4)) return v.toExponential(1);
  const decimals = Math.min(5, Math.max(0, Math.ceil(-Math.log10(Math.abs(step) || 1)) + 1));
  return v.toFixed(a >= 10 && step >= 1 ? 0 : decimals);
}

/** Series i's colour, dash pattern and marker shape. */
function seriesLook(i) {
  const look = LOOKS[Math.floor(i / COLORS.length) % LOOKS.length];
  return { color: COLORS[i % COLORS.length], ...look };
}

/** A marker of `shape` centred on (x, y), `r` its half-size. */
function marker(shape, x, y, r, color) {
  const at = (pts) => pts.map(([dx, dy]) => `${(x + dx * r).toFixed(1)},${(y + dy * r).toFixed(1)}`).join(" ");
  if (shape === "square") return el("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r, fill: color });
  if (shape === "triangle") return el("polygon", { points: at([[0, -1.2], [1.1, 0.9], [-1.1, 0.9]]), fill: color });
  if (shape === "diamond") return el("polygon", { points: at([[0, -1.3], [1.3, 0], [0, 1.3], [-1.3, 0]]), fill: color });
  return el("circle", { cx: x, cy: y, r, fill: color });
}

/** The legend's sample of a series: a short stretch of its line with its marker. */
function sample(look) {
  const svg = el("svg", { viewBox: "0 0 26 12", width: 26, height: 12, class: "swatch-line", "aria-hidden": "true" });
  svg.append(el("line", { x1: 1, x2: 25, y1: 6, y2: 6, stroke: look.color, "stroke-width": 2, "stroke-dasharray": look.dash || null }));
  svg.append(marker(look.marker, 13, 6, 3, look.color));
  return svg;
}

function drawAxes(svg, sx, sy, xr, yr, opts) {
  const g = el("g", { class: "axes" });
  const yStep = (yr[1] - yr[0]) / 4, xStep = (xr[1] - xr[0]) / 4;
  for (const y of ticks(...yr)) {
    g.append(el("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(y), y2: sy(y), class: "grid" }));
    g.append(el("text", { x: PAD.l - 4, y: sy(y) + 4, "text-anchor": "end" }, fmt(y, yStep)));
  }
  ticks(...xr).forEach((x, i, all) => { // the last label ends at the axis' end, not past the edge
    const anchor = i === all.length - 1 ? "end" : "middle";
    g.append(el("text", { x: sx(x), y: H - PAD.b + 14, "text-anchor": anchor }, fmt(x, xStep)));
  });
  g.append(el("text", { x: (PAD.l + W - PAD.r) / 2, y: H - 4, "text-anchor": "middle" }, opts.xLabel || ""));
  svg.append(g);
}

/**
 * Line chart. series: [{label, points: [[x, y], ...]}]; opts: {title, xLabel, yRange}.
 * Returns a <figure> holding the SVG and a legend; data-points counts drawn points.
 */
export function lineChart(series, opts = {}) {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const xr = extent(xs, [0, 1]);
  const yr = opts.yRange || extent(ys, [0, 1]);
  const sx = (x) => PAD.l + ((x - xr[0]) / (xr[1] - xr[0])) * (W - PAD.l - PAD.r);
  const sy = (y) => H - PAD.b - ((y - yr[0]) / (yr[1] - yr[0])) * (H - PAD.t - PAD.b);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart" });
  svg.append(el("title", {}, opts.title || "chart"));
  drawAxes(svg, sx, sy, xr, yr, opts);
  let count = 0;
  const looks = series.map((_, i) => seriesLook(i));
  series.forEach((s, i) => {
    const look = looks[i];
    const pts = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    count += pts.length;
    const d = pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    const g = el("g", { class: "series", "data-series": i });
    g.append(el("polyline", { points: d, fill: "none", stroke: look.color, "stroke-width": 2,
      "stroke-dasharray": look.dash || null }));
    for (const p of pts) {
      const dot = marker(look.marker, sx(p[0]), sy(p[1]), 3, look.color);
      dot.setAttribute("class", "pt");
      dot.setAttribute("data-x", String(p[0]));
      g.append(dot);
    }
    svg.append(g);
  });
  const figure = document.createElement("figure");
  figure.className = "chart-box";
  figure.dataset.points = String(count);
  const caption = document.createElement("figcaption");
  caption.textContent = opts.title || "";
  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, i) => {
    const li = document.createElement("li");
    const look = looks[i];
    li.dataset.series = String(i);
    li.dataset.look = `${look.color} ${look.dash || "solid"} ${look.marker}`;
    li.append(sample(look), document.createTextNode(s.label));
    legend.append(li);
  });
  figure.append(caption, svg, legend);
  return figure;
}
