// The federation page: reads the dashboard's REST API and draws SVG charts; no build step, no dependencies.
"use strict";

const API = "api/v1";
const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
const token = params.get("token") || localStorage.getItem("strata-read-token") || "";
if (params.get("token")) localStorage.setItem("strata-read-token", params.get("token"));
let timer = null;

async function get(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(`${API}${path}`, { headers });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${r.status} ${detail} (${path})`);
  }
  return r.json();
}

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
  const i = Math.min(units.length - 1, Math.floor(Math.log10(n) / 3));
  return `${(n / 10 ** (3 * i)).toFixed(i ? 1 : 0)} ${units[i]}`;
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

// A line chart of up to two series over rounds, each on its own y range (left and right axes).
function lineChart(svg, rounds, series) {
  const points = series.map((s) => rounds.map((r, i) => [r, s.values[i]]).filter(([, v]) => v !== null && v !== undefined));
  if (!points.some((p) => p.length)) return empty(svg, "no completed round yet");
  const W = 600, H = 240, L = 48, R = 48, T = 14, B = 30;
  clear(svg, W, H);
  const x0 = Math.min(...rounds), x1 = Math.max(...rounds);
  const sx = (r) => L + (x1 === x0 ? (W - L - R) / 2 : ((r - x0) / (x1 - x0)) * (W - L - R));
  svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  const step = Math.max(1, Math.ceil((x1 - x0 + 1) / 12));
  for (let r = x0; r <= x1; r += step) svg.appendChild(el("text", { x: sx(r), y: H - B + 16, "text-anchor": "middle" }, r));
  series.forEach((s, k) => {
    const pts = points[k];
    if (!pts.length) return;
    const vs = pts.map(([, v]) => v);
    let lo = Math.min(...vs), hi = Math.max(...vs);
    if (s.unit) { lo = Math.min(lo, 0); hi = Math.max(hi, 1); }
    if (hi === lo) { hi += 1; lo -= s.unit ? 0 : 1; }
    const sy = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const d = pts.map(([r, v], i) => `${i ? "L" : "M"}${sx(r).toFixed(1)},${sy(v).toFixed(1)}`).join("");
    svg.appendChild(el("path", { d, class: `s${k}` }));
    for (const [r, v] of pts) svg.appendChild(el("circle", { cx: sx(r), cy: sy(v), r: 2.5, class: `s${k}` }));
    const x = k === 0 ? L - 6 : W - R + 6, anchor = k === 0 ? "end" : "start";
    svg.appendChild(el("text", { x, y: sy(hi) + 4, "text-anchor": anchor }, Number(hi).toPrecision(4)));
    svg.appendChild(el("text", { x, y: sy(lo), "text-anchor": anchor }, Number(lo).toPrecision(4)));
    svg.appendChild(el("text", { x: k === 0 ? L : W - R, y: H - 4, "text-anchor": k === 0 ? "start" : "end", class: `l${k}` }, s.name));
  });
  svg.dataset.rendered = String(points.reduce((n, p) => n + p.length, 0));
}

// Grouped bars per round: bytes up and down.
function barChart(svg, rounds, series) {
  if (!rounds.length) return empty(svg, "no round yet");
  const W = 600, H = 240, L = 64, R = 10, T = 14, B = 30;
  clear(svg, W, H);
  const hi = Math.max(1, ...series.flatMap((s) => s.values.map((v) => v || 0)));
  const slot = (W - L - R) / rounds.length, bw = Math.max(1, (slot * 0.8) / series.length);
  const sy = (v) => T + (1 - v / hi) * (H - T - B);
  svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  svg.appendChild(el("text", { x: L - 6, y: T + 4, "text-anchor": "end" }, bytes(hi)));
  svg.appendChild(el("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0"));
  const step = Math.max(1, Math.ceil(rounds.length / 12));
  let bars = 0;
  rounds.forEach((r, i) => {
    series.forEach((s, k) => {
      const v = s.values[i] || 0;
      const x = L + i * slot + slot * 0.1 + k * bw;
      const rect = el("rect", { x, y: sy(v), width: bw, height: H - B - sy(v), class: `bar${k}` });
      rect.appendChild(el("title", {}, `round ${r}, ${s.name}: ${bytes(v)}`));
      svg.appendChild(rect);
      bars += 1;
    });
    if (i % step === 0) svg.appendChild(el("text", { x: L + (i + 0.5) * slot, y: H - B + 16, "text-anchor": "middle" }, r));
  });
  series.forEach((s, k) => svg.appendChild(el("text", { x: L + k * 90, y: H - 4, class: `l${k}` }, s.name)));
  svg.dataset.rendered = String(bars);
}

// The blocks x rounds heatmap of divergence, with the applied blocks marked.
function heatmap(svg, m) {
  if (!m.rounds.length || !m.blocks.length) return empty(svg, "no divergence measured yet (it needs two or more updates in a round)");
  const cell = Math.max(10, Math.min(36, Math.floor(900 / m.rounds.length)));
  const L = 90, T = 8, H = T + m.blocks.length * 20 + 30, W = L + m.rounds.length * cell + 80;
  clear(svg, W, H);
  svg.setAttribute("width", W);  // drawn at its natural size (scaled down only to fit the page)
  svg.setAttribute("height", H);
  const finite = m.values.flat().filter((v) => v !== null && v > 0);
  const lo = finite.length ? Math.log10(Math.min(...finite)) : 0;
  const hi = finite.length ? Math.log10(Math.max(...finite)) : 1;
  const shade = (v) => {
    const t = hi === lo ? 0.5 : (Math.log10(v) - lo) / (hi - lo);
    const light = 95 - 65 * Math.max(0, Math.min(1, t));
    return `hsl(215, 70%, ${light.toFixed(0)}%)`;
  };
  let cells = 0;
  m.blocks.forEach((b, i) => {
    const y = T + i * 20;
    svg.appendChild(el("text", { x: L - 6, y: y + 14, "text-anchor": "end" }, b));
    m.rounds.forEach((r, j) => {
      const v = m.values[i][j];
      const rect = el("rect", {
        x: L + j * cell, y, width: cell - 1, height: 19,
        fill: v === null ? "#eef0f4" : v > 0 ? shade(v) : "hsl(215, 70%, 97%)",
        class: "cell",
      });
      rect.appendChild(el("title", {}, `${b}, round ${r}: D = ${v === null ? "n/a" : v.toPrecision(3)}${m.applied[i][j] ? ", applied" : ""}`));
      svg.appendChild(rect);
      cells += 1;
      if (m.applied[i][j]) {
        svg.appendChild(el("circle", { cx: L + j * cell + cell / 2, cy: y + 10, r: 2.5, fill: "#1d2330", class: "applied" }));
      }
    });
  });
  const step = Math.max(1, Math.ceil(m.rounds.length / 20));
  m.rounds.forEach((r, j) => {
    if (j % step === 0) svg.appendChild(el("text", { x: L + j * cell + cell / 2, y: T + m.blocks.length * 20 + 14, "text-anchor": "middle" }, r));
  });
  svg.appendChild(el("text", { x: L + m.rounds.length * cell + 8, y: T + 14 }, `D ${finite.length ? (10 ** hi).toPrecision(2) : ""}`));
  svg.appendChild(el("text", { x: L + m.rounds.length * cell + 8, y: T + m.blocks.length * 20 }, `D ${finite.length ? (10 ** lo).toPrecision(2) : ""}`));
  svg.dataset.rendered = String(cells);
}

// Key-block weights α over rounds: one line per block (dash) and member (colour), on [0, 1].
function keyChart(svg, m) {
  if (!m.rounds.length) return empty(svg, "no round with key weights yet");
  const W = 600, H = 240, L = 40, R = 10, T = 14, B = 46;
  clear(svg, W, H);
  const x0 = m.rounds[0], x1 = m.rounds[m.rounds.length - 1];
  const sx = (r) => L + (x1 === x0 ? (W - L - R) / 2 : ((r - x0) / (x1 - x0)) * (W - L - R));
  const sy = (v) => T + (1 - v) * (H - T - B);
  svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  svg.appendChild(el("text", { x: L - 6, y: sy(1) + 4, "text-anchor": "end" }, "1"));
  svg.appendChild(el("text", { x: L - 6, y: sy(0), "text-anchor": "end" }, "0"));
  const step = Math.max(1, Math.ceil(m.rounds.length / 12));
  m.rounds.forEach((r, j) => {
    if (j % step === 0) svg.appendChild(el("text", { x: sx(r), y: H - B + 16, "text-anchor": "middle" }, r));
  });
  const dashes = ["", "5 3", "1 3", "8 3 1 3"];
  let lines = 0;
  m.blocks.forEach((b, i) => m.members.forEach((member, k) => {
    const pts = m.rounds.map((r, j) => [r, m.weights[i][k][j]]).filter(([, v]) => v !== null);
    if (!pts.length) return;
    const d = pts.map(([r, v], n) => `${n ? "L" : "M"}${sx(r).toFixed(1)},${sy(v).toFixed(1)}`).join("");
    const path = el("path", { d, class: `k${k % 6} key-line`, "stroke-dasharray": dashes[i % dashes.length] });
    path.appendChild(el("title", {}, `${b}, ${member}`));
    svg.appendChild(path);
    for (const [r, v] of pts) svg.appendChild(el("circle", { cx: sx(r), cy: sy(v), r: 2, class: `k${k % 6}` }));
    lines += 1;
  }));
  m.members.forEach((member, k) => svg.appendChild(el("text", { x: L + k * 110, y: H - 16, class: `k${k % 6}` }, member)));
  svg.appendChild(el("text", { x: L, y: H - 3 }, m.blocks.map((b, i) => `${b}: ${["solid", "dashed", "dotted", "dash-dot"][i % 4]}`).join(" · ")));
  svg.dataset.rendered = String(lines);
}

// The key blocks: their settings, the newest round's weights per block and member, and α over rounds.
function keyBlocks(tree, m) {
  const section = document.getElementById("key-blocks");
  section.hidden = !(tree.local_blocks || m.rounds.length);
  if (section.hidden) return;
  const resolved = m.blocks.length ? ` → ${m.blocks.map(escapeHtml).join(", ")}` : "";
  document.getElementById("key-settings").innerHTML = [
    `localised blocks: <b>${escapeHtml(tree.local_blocks || "none")}</b>${resolved}`,
    `β = ${tree.residual_keep} (the share of its own a member federation keeps)`,
    `τ = ${tree.attention_temperature}`,
    `aggregation: ${escapeHtml(tree.key_aggregation)}`,
  ].join(" · ");
  const table = document.getElementById("key-weights");
  const j = m.rounds.length - 1;
  document.getElementById("key-caption").textContent = j < 0
    ? "Attention weights α per key block and member: no round yet"
    : `Attention weights α per key block and member in round ${m.rounds[j]} (cosine to the mean on hover)`;
  table.querySelector("thead").innerHTML = `<tr><th>block</th>${m.members.map((n) => `<th class="num">${escapeHtml(n)}</th>`).join("")}</tr>`;
  table.querySelector("tbody").innerHTML = j < 0 ? "" : m.blocks.map((b, i) => `<tr><td>${escapeHtml(b)}</td>${m.members.map((_, k) => {
    const w = m.weights[i][k][j], c = m.cosines[i][k][j];
    const bg = w === null ? "" : ` style="background: hsl(215, 70%, ${(97 - 45 * w).toFixed(0)}%)"`;
    return `<td class="w"${bg} title="cos = ${c === null ? "n/a" : fmt(c, 3)}">${fmt(w, 3)}</td>`;
  }).join("")}</tr>`).join("");
  keyChart(document.getElementById("chart-key-weights"), m);
}

// The parent a sub-federation is a member of, and the parent rounds it served.
function parentRounds(tree, page) {
  const section = document.getElementById("parent");
  section.hidden = !(tree.parent || page.total);
  if (section.hidden) return;
  const inner = `${tree.inner_rounds} inner round${tree.inner_rounds === 1 ? "" : "s"} per parent round`;
  document.getElementById("parent-line").innerHTML = `member of the federation at <code>${escapeHtml(tree.parent || "?")}</code> · ${inner} · served ${page.total} parent round${page.total === 1 ? "" : "s"}`;
  document.querySelector("#parent-rounds tbody").innerHTML = page.items.map((p) => `<tr>
    <td class="num">${p.parent_round}</td><td class="num">${p.parent_version}</td><td class="num">${p.start_version}</td>
    <td>${p.inner_rounds.join(", ")}</td><td>${escapeHtml(p.state)}</td><td class="num">${p.num_samples}</td>
    <td class="num">${fmt(p.test_accuracy)}</td><td class="num">${fmt(p.test_loss)}</td>
    <td>${p.finished_at ? new Date(p.finished_at).toLocaleString() : ""}</td></tr>`).join("");
}

// The newest rounds of the key-weights matrix (one more request only past 1000 rounds).
async function keyWeights(enc) {
  const m = await get(`/federations/${enc}/key-weights?limit=1000`);
  if (m.total_rounds <= m.rounds.length) return m;
  return get(`/federations/${enc}/key-weights?limit=1000&offset=${m.total_rounds - 1000}`);
}

function member(w) {
  const local = w.local_epsilon ? ` <span class="badge">local DP-SGD ε ${fmt(w.local_epsilon, 3)}</span>` : "";
  const rank = w.lora_rank ? ` <span class="badge">LoRA rank ${w.lora_rank}</span>` : "";
  if (w.kind !== "federation") return escapeHtml(w.name) + local + rank;
  const inner = `${w.inner_rounds} inner round${w.inner_rounds === 1 ? "" : "s"}`;
  return `${escapeHtml(w.name)} <span class="badge">federation · ${w.members} worker${w.members === 1 ? "" : "s"} · ${inner}</span>`;
}

function privacy(status, rounds) {
  const p = status.privacy;
  document.getElementById("privacy").hidden = !p.enabled;
  if (!p.enabled) return;
  const spent = p.epsilon === null ? "none yet" : fmt(p.epsilon, 3);
  document.getElementById("privacy-line").textContent =
    `user-level DP-FedAvg: ε spent ${spent} of the budget ${fmt(p.target_epsilon, 3)} (δ = ${p.delta}), ` +
    `noise multiplier z = ${p.noise_multiplier}, sampling rate q = ${p.sampling_rate}, ` +
    `${p.adaptive_clip ? "adaptive" : "fixed"} clipping` + (status.reason ? `. ${status.reason}` : "");
  const priv = rounds.filter((r) => r.private && r.dp_epsilon !== null);
  lineChart(document.getElementById("chart-privacy"), priv.map((r) => r.number), [
    { name: "ε after the round", values: priv.map((r) => r.dp_epsilon) },
    { name: "clip S", values: priv.map((r) => r.dp_clip) },
  ]);
}

function reported(w) {
  const r = w.reported;
  return r ? `acc ${fmt(r.accuracy)} · loss ${fmt(r.loss)} <span class="muted">(round ${r.round})</span>` : "";
}

function card(k, v, cls = "") {
  return `<div class="card ${cls}"><div class="k">${k}</div><div class="v">${v}</div></div>`;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function render(name) {
  const enc = encodeURIComponent(name);
  const [status, page, matrix, workers, keys, served] = await Promise.all([
    get(`/federations/${enc}`),
    get(`/federations/${enc}/rounds?limit=500`),
    get(`/federations/${enc}/blocks?metric=divergence&limit=1000`),
    get(`/federations/${enc}/workers`),
    keyWeights(enc),
    get(`/federations/${enc}/parent-rounds?limit=500`),
  ]);
  const rounds = page.items;
  const done = rounds.filter((r) => r.state === "completed");
  const lm = status.task_kind !== "sequence-classification";
  document.getElementById("status").innerHTML = [
    card("state", escapeHtml(status.state), `state-${escapeHtml(status.state)}`),
    card("round", `${status.current_round} / ${status.total_rounds}`),
    card("model version", status.model_version),
    card("workers online", `${status.workers_online} / ${status.workers_total}`),
    card(lm ? "test perplexity" : "test accuracy",
      lm ? fmt(done.length ? done[done.length - 1].test_perplexity : null, 2) : fmt(status.last_test_accuracy)),
    card("policy", escapeHtml((status.config && status.config.policy) || "full")),
    ...(status.config && status.config.lora
      ? [card("adapter", `LoRA r = ${status.config.lora.rank} · ${escapeHtml(status.config.lora.aggregation)}`)]
      : []),
    ...(status.privacy.enabled ? [card("ε spent", `${fmt(status.privacy.epsilon, 3)} / ${fmt(status.privacy.target_epsilon, 3)}`)] : []),
  ].join("");
  const nums = done.map((r) => r.number);
  lineChart(document.getElementById("chart-accuracy"), nums, [
    { name: lm ? "test perplexity" : "test accuracy", values: done.map((r) => (lm ? r.test_perplexity : r.test_accuracy)), unit: !lm },
    { name: "test loss", values: done.map((r) => r.test_loss) },
  ]);
  barChart(document.getElementById("chart-bytes"), rounds.map((r) => r.number), [
    { name: "upstream", values: rounds.map((r) => r.bytes_up) },
    { name: "downstream", values: rounds.map((r) => r.bytes_down) },
  ]);
  heatmap(document.getElementById("chart-divergence"), matrix);
  privacy(status, rounds);
  keyBlocks(status.tree, keys);
  parentRounds(status.tree, served);
  document.querySelector("#workers tbody").innerHTML = workers.map((w) => `<tr class="${w.kind}">
    <td>${member(w)}</td>
    <td class="${w.online ? "dot-on" : "dot-off"}">${w.online ? "● online" : "○ offline"}</td>
    <td>${escapeHtml(w.device)}</td><td class="num">${w.num_samples}</td><td class="num">${w.rounds_joined}</td>
    <td class="num">${w.updates_accepted}</td><td class="num">${w.updates_rejected}</td>
    <td class="num">${bytes(w.bytes_up)}</td><td>${reported(w)}</td><td>${new Date(w.last_seen).toLocaleString()}</td>
    <td>${w.rejections.length ? `round ${w.rejections[0].round}: ${escapeHtml(w.rejections[0].reject_reason || w.rejections[0].status)}` : ""}</td></tr>`).join("");
  const live = ["running", "created"].includes(status.state);
  document.getElementById("live").textContent = live ? `live: refreshing every ${REFRESH_MS / 1000}s` : `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.state = status.state;
  document.body.dataset.ready = "1";
  return live;
}

async function refresh() {
  clearTimeout(timer);
  const name = document.getElementById("federation").value;
  const error = document.getElementById("error");
  try {
    const live = await render(name);
    error.hidden = true;
    if (live) timer = setTimeout(refresh, REFRESH_MS);
  } catch (e) {
    error.textContent = `Could not load the federation: ${e.message}`;
    error.hidden = false;
    timer = setTimeout(refresh, REFRESH_MS * 2);
  }
}

async function main() {
  const select = document.getElementById("federation");
  try {
    const feds = await get("/federations");
    if (!feds.length) throw new Error("no federation in this database yet");
    for (const f of feds) select.appendChild(new Option(f.name, f.name));
    const wanted = params.get("federation");
    if (wanted && feds.some((f) => f.name === wanted)) select.value = wanted;
    select.addEventListener("change", () => {
      params.set("federation", select.value);
      history.replaceState(null, "", `?${params}`);
      refresh();
    });
    await refresh();
  } catch (e) {
    const error = document.getElementById("error");
    error.textContent = `Could not load federations: ${e.message}`;
    error.hidden = false;
  }
}

main();
