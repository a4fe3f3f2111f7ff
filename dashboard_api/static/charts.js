// Charts of the federation page, drawn as SVG with no dependencies: axes with round-number ticks (a flat
// series gets a narrow axis around its value, never two equal labels), a value box on hover on every chart,
// and a click on a round that opens its detail (`onRound`).
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

function fmt(v, digits = 4) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.max(0, Math.floor(Math.log10(Math.abs(n)) / 3)));
  return `${(n / 10 ** (3 * i)).toFixed(i ? 1 : 0)} ${units[i]}`;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// About `n` ticks over [lo, hi] at 1, 2, 2.5 or 5 × 10^k, with as many decimals as the step needs. A range
// narrower than a thousandth of its magnitude (a flat series) is widened to that, centred on its value.
function niceScale(lo, hi, n = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
  if (hi < lo) [lo, hi] = [hi, lo];
  const mag = Math.max(Math.abs(lo), Math.abs(hi));
  const minSpan = mag > 0 ? mag * 1e-3 : 1;
  if (hi - lo < minSpan) {
    const mid = (lo + hi) / 2;
    lo = mid - minSpan / 2;
    hi = mid + minSpan / 2;
  }
  const raw = (hi - lo) / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw * (1 - 1e-9));
  const start = Math.floor(lo / step + 1e-9) * step, end = Math.ceil(hi / step - 1e-9) * step;
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (Math.abs(step / p - 2.5) < 1e-9 ? 1 : 0));
  const ticks = [];
  for (let k = 0; start + k * step <= end + step / 2; k += 1) ticks.push(Number((start + k * step).toFixed(12)));
  return { lo: start, hi: end, ticks, label: (v) => v.toFixed(digits) };
}

function clear(svg, width, height) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
}

function empty(svg, message) {
  clear(svg, 600, 120);
  svg.appendChild(el("text", { x: 300, y: 60, "text-anchor": "middle", class: "empty" }, message));
  svg.dataset.rendered = "empty";
}

// The value box: one per page, placed beside the pointer.
function tooltip() {
  let tip = document.getElementById("tooltip");
  if (!tip) {
    tip = document.createElement("div");
    tip.id = "tooltip";
    tip.setAttribute("role", "tooltip");
    tip.hidden = true;
    document.body.appendChild(tip);
  }
  return tip;
}

function showTip(evt, html) {
  const tip = tooltip();
  tip.innerHTML = html;
  tip.hidden = false;
  const x = evt.pageX + 14, y = evt.pageY + 14;
  const right = window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8;
  tip.style.left = `${Math.max(window.scrollX + 4, Math.min(x, right))}px`;
  tip.style.top = `${y}px`;
}

function hideTip() {
  tooltip().hidden = true;
}

function svgX(svg, evt) {
  const pt = svg.createSVGPoint();
  pt.x = evt.clientX;
  pt.y = evt.clientY;
  return pt.matrixTransform(svg.getScreenCTM().inverse()).x;
}

// A transparent layer over the plot: the round nearest the pointer gets a guide line and the value box
// (`lines(i)` its HTML); a click opens round xs[i].
function hoverLayer(svg, box, xs, sx, lines, onRound) {
  const guide = el("line", { y1: box.T, y2: box.H - box.B, class: "guide", visibility: "hidden" });
  const layer = el("rect", {
    x: box.L, y: box.T, width: box.W - box.L - box.R, height: box.H - box.T - box.B, class: "hover-layer",
  });
  const nearest = (evt) => {
    const x = svgX(svg, evt);
    let best = 0;
    xs.forEach((r, i) => { if (Math.abs(sx(r) - x) < Math.abs(sx(xs[best]) - x)) best = i; });
    return best;
  };
  layer.addEventListener("mousemove", (evt) => {
    const i = nearest(evt);
    guide.setAttribute("x1", sx(xs[i]));
    guide.setAttribute("x2", sx(xs[i]));
    guide.setAttribute("visibility", "visible");
    svg.dataset.hover = String(xs[i]);
    showTip(evt, lines(i));
  });
  layer.addEventListener("mouseleave", () => {
    guide.setAttribute("visibility", "hidden");
    delete svg.dataset.hover;
    hideTip();
  });
  if (onRound) layer.addEventListener("click", (evt) => onRound(xs[nearest(evt)]));
  svg.appendChild(guide);
  svg.appendChild(layer);
}

function roundTicks(svg, xs, sx, y, every = 12) {
  const step = Math.max(1, Math.ceil(xs.length / every));
  xs.forEach((r, i) => {
    if (i % step === 0) svg.appendChild(el("text", { x: sx(r), y, "text-anchor": "middle" }, r));
  });
}

// Lines over rounds. Each series: {name, values, axis (0 left, 1 right), cls, fmt}; each axis: {lo, hi}
// to fix its range (e.g. 0..1 for an accuracy), else it fits its series. `refs`: horizontal reference
// lines {value, axis, name}. `extra(i)`: more HTML for the value box of round xs[i].
function lineChart(svg, xs, series, opts = {}) {
  const pts = series.map((s) => xs.map((r, i) => [r, s.values[i]]).filter(([, v]) => v !== null && v !== undefined));
  if (!pts.some((p) => p.length)) return empty(svg, opts.empty || "no completed round yet");
  const box = { W: 600, H: 240, L: 56, R: 56, T: 14, B: opts.legendRows ? 30 + 14 * opts.legendRows : 30 };
  clear(svg, box.W, box.H);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const sx = (r) => box.L + (x1 === x0 ? (box.W - box.L - box.R) / 2 : ((r - x0) / (x1 - x0)) * (box.W - box.L - box.R));
  const axes = [0, 1].map((a) => {
    const vs = series.flatMap((s, k) => ((s.axis || 0) === a ? pts[k].map(([, v]) => v) : []))
      .concat((opts.refs || []).filter((ref) => (ref.axis || 0) === a).map((ref) => ref.value));
    if (!vs.length) return null;
    const fixed = (opts.axes || [])[a] || {};
    const scale = niceScale(fixed.lo ?? Math.min(...vs), fixed.hi ?? Math.max(...vs), 4);
    const sy = (v) => box.T + (1 - (v - scale.lo) / (scale.hi - scale.lo)) * (box.H - box.T - box.B);
    return { scale, sy, fmt: fixed.fmt || scale.label };
  });
  axes.forEach((ax, a) => {
    if (!ax) return;
    for (const t of ax.scale.ticks) {
      if (a === 0) svg.appendChild(el("line", { x1: box.L, x2: box.W - box.R, y1: ax.sy(t), y2: ax.sy(t), class: "grid" }));
      const x = a === 0 ? box.L - 6 : box.W - box.R + 6;
      svg.appendChild(el("text", { x, y: ax.sy(t) + 4, "text-anchor": a === 0 ? "end" : "start", class: `tick${a}` }, ax.fmt(t)));
    }
  });
  svg.appendChild(el("line", { x1: box.L, y1: box.H - box.B, x2: box.W - box.R, y2: box.H - box.B, class: "axis" }));
  roundTicks(svg, xs, sx, box.H - box.B + 16);
  for (const ref of opts.refs || []) {
    const ax = axes[ref.axis || 0], y = ax.sy(ref.value);
    svg.appendChild(el("line", { x1: box.L, x2: box.W - box.R, y1: y, y2: y, class: "ref" }));
    svg.appendChild(el("text", { x: box.W - box.R - 4, y: y - 4, "text-anchor": "end", class: "ref-label" }, ref.name));
  }
  series.forEach((s, k) => {
    if (!pts[k].length) return;
    const ax = axes[s.axis || 0], cls = s.cls || `s${k}`;
    const d = pts[k].map(([r, v], i) => `${i ? "L" : "M"}${sx(r).toFixed(1)},${ax.sy(v).toFixed(1)}`).join("");
    svg.appendChild(el("path", { d, class: `${cls} series`, ...(s.dash ? { "stroke-dasharray": s.dash } : {}) }));
    for (const [r, v] of pts[k]) svg.appendChild(el("circle", { cx: sx(r), cy: ax.sy(v), r: 2.5, class: cls }));
  });
  const perRow = opts.legendRows ? Math.ceil(series.length / opts.legendRows) : series.length;
  series.forEach((s, k) => {
    const row = Math.floor(k / perRow), col = k % perRow;
    const x = opts.legendRows ? box.L + col * 120 : k === 0 ? box.L : box.W - box.R;
    const anchor = opts.legendRows || k === 0 ? "start" : "end";
    svg.appendChild(el("text", { x, y: box.H - 4 - 14 * (Math.max(1, opts.legendRows || 1) - 1 - row), "text-anchor": anchor, class: `l-${s.cls || `s${k}`}` }, s.name));
  });
  hoverLayer(svg, box, xs, sx, (i) => {
    const rows = series.map((s) => {
      const v = s.values[i];
      return `<div><span class="swatch ${s.cls || `s${series.indexOf(s)}`}"></span>${escapeHtml(s.name)}: <b>${v === null || v === undefined ? "–" : (s.fmt || ((x) => Number(x).toPrecision(5)))(v)}</b></div>`;
    });
    return `<div class="tip-head">round ${xs[i]}</div>${rows.join("")}${opts.extra ? opts.extra(i) : ""}`;
  }, opts.onRound);
  svg.dataset.rendered = String(pts.reduce((n, p) => n + p.length, 0));
}

// Grouped bars per round (bytes up and down), with the value box and a click per round.
function barChart(svg, xs, series, opts = {}) {
  if (!xs.length) return empty(svg, "no round yet");
  const box = { W: 600, H: 240, L: 64, R: 10, T: 14, B: 30 };
  clear(svg, box.W, box.H);
  const scale = niceScale(0, Math.max(1, ...series.flatMap((s) => s.values.map((v) => v || 0))), 4);
  const slot = (box.W - box.L - box.R) / xs.length, bw = Math.max(1, (slot * 0.8) / series.length);
  const sy = (v) => box.T + (1 - v / scale.hi) * (box.H - box.T - box.B);
  const sx = (r) => box.L + (xs.indexOf(r) + 0.5) * slot;
  for (const t of scale.ticks) {
    svg.appendChild(el("line", { x1: box.L, x2: box.W - box.R, y1: sy(t), y2: sy(t), class: "grid" }));
    svg.appendChild(el("text", { x: box.L - 6, y: sy(t) + 4, "text-anchor": "end" }, bytes(t)));
  }
  let bars = 0;
  xs.forEach((r, i) => series.forEach((s, k) => {
    const v = s.values[i] || 0;
    svg.appendChild(el("rect", { x: box.L + i * slot + slot * 0.1 + k * bw, y: sy(v), width: bw, height: box.H - box.B - sy(v), class: `bar${k}` }));
    bars += 1;
  }));
  svg.appendChild(el("line", { x1: box.L, y1: box.H - box.B, x2: box.W - box.R, y2: box.H - box.B, class: "axis" }));
  roundTicks(svg, xs, sx, box.H - box.B + 16);
  series.forEach((s, k) => svg.appendChild(el("text", { x: box.L + k * 90, y: box.H - 4, class: `l-s${k}` }, s.name)));
  hoverLayer(svg, box, xs, sx, (i) => `<div class="tip-head">round ${xs[i]}</div>` + series.map((s, k) =>
    `<div><span class="swatch s${k}"></span>${escapeHtml(s.name)}: <b>${bytes(s.values[i] || 0)}</b>${s.ratio ? ` (${s.ratio[i] ? `${s.ratio[i].toFixed(1)}× < fp32` : "–"})` : ""}</div>`).join(""), opts.onRound);
  svg.dataset.rendered = String(bars);
}

// Blocks × rounds: the metric per cell (log shading for positive metrics), a dot on the blocks applied,
// a hatched edge on blocks trained but not applied; the value box per cell, a click opens the round.
function heatmap(svg, m, opts = {}) {
  if (!m.rounds.length || !m.blocks.length) return empty(svg, opts.empty || "no block measured yet");
  const cell = Math.max(10, Math.min(36, Math.floor(900 / m.rounds.length)));
  const L = 90, T = 8, H = T + m.blocks.length * 20 + 30, W = L + m.rounds.length * cell + 90;
  clear(svg, W, H);
  svg.setAttribute("width", W);  // drawn at its natural size (scaled down only to fit the page)
  svg.setAttribute("height", H);
  const finite = m.values.flat().filter((v) => v !== null && Number.isFinite(v));
  const log = finite.length > 0 && finite.every((v) => v > 0);
  const tr = (v) => (log ? Math.log10(v) : v);
  const lo = finite.length ? Math.min(...finite.map(tr)) : 0, hi = finite.length ? Math.max(...finite.map(tr)) : 1;
  const shade = (v) => {
    const t = hi === lo ? 0.5 : (tr(v) - lo) / (hi - lo);
    return `hsl(215, 70%, ${(95 - 65 * Math.max(0, Math.min(1, t))).toFixed(0)}%)`;
  };
  let cells = 0;
  m.blocks.forEach((b, i) => {
    const y = T + i * 20;
    svg.appendChild(el("text", { x: L - 6, y: y + 14, "text-anchor": "end" }, b));
    m.rounds.forEach((r, j) => {
      const v = m.values[i][j];
      const rect = el("rect", {
        x: L + j * cell, y, width: cell - 1, height: 19, fill: v === null ? "#eef0f4" : shade(v),
        class: `cell${m.trained[i][j] && !m.applied[i][j] ? " held" : ""}`, "data-round": r, "data-block": b,
      });
      const state = m.applied[i][j] ? "trained and applied" : m.trained[i][j] ? "trained, not applied" : "not trained";
      rect.addEventListener("mousemove", (evt) => showTip(evt,
        `<div class="tip-head">${escapeHtml(b)} · round ${r}</div><div>${escapeHtml(opts.label || m.metric)}: <b>${v === null ? "n/a" : Number(v).toPrecision(4)}</b></div><div class="muted">${state}</div>`));
      rect.addEventListener("mouseleave", hideTip);
      if (opts.onRound) rect.addEventListener("click", () => opts.onRound(r));
      svg.appendChild(rect);
      cells += 1;
      if (m.applied[i][j]) svg.appendChild(el("circle", { cx: L + j * cell + cell / 2, cy: y + 10, r: 2.5, class: "applied" }));
    });
  });
  const sx = (r) => L + m.rounds.indexOf(r) * cell + cell / 2;
  roundTicks(svg, m.rounds, sx, T + m.blocks.length * 20 + 14, 20);
  const key = (v) => (finite.length ? Number(log ? 10 ** v : v).toPrecision(2) : "");
  svg.appendChild(el("text", { x: L + m.rounds.length * cell + 8, y: T + 14 }, `${opts.short || ""} ${key(hi)}`));
  svg.appendChild(el("text", { x: L + m.rounds.length * cell + 8, y: T + m.blocks.length * 20 }, `${opts.short || ""} ${key(lo)}`));
  svg.dataset.rendered = String(cells);
  svg.dataset.metric = m.metric;
}
