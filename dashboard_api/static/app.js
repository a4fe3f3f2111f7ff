// The federation page: reads the dashboard's REST API and draws SVG charts (charts.js) and round details
// (detail.js); no build step, no dependencies.
"use strict";

const API = "api/v1";
const REFRESH_MS = 5000;
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
  const dashes = ["", "5 3", "1 3", "8 3 1 3"];
  const series = m.blocks.flatMap((b, i) => m.members.map((member, k) => ({
    name: `${b} · ${member}`, values: m.weights[i][k], cls: `k${k % 6}`, dash: dashes[i % dashes.length],
    fmt: (v) => fmt(v, 3),
  })));
  lineChart(document.getElementById("chart-key-weights"), m.rounds, series, {
    axes: [{ lo: 0, hi: 1 }], legendRows: Math.ceil(series.length / 4), empty: "no round with key weights yet",
  });
  const svg = document.getElementById("chart-key-weights");
  if (svg.dataset.rendered !== "empty") svg.dataset.rendered = String(series.filter((s) => s.values.some((v) => v !== null)).length);
}

// The parent a sub-federation is a member of, and the parent rounds it served.
function parentRounds(tree, page) {
  const section = document.getElementById("parent");
  section.hidden = !(tree.parent || page.total);
  if (section.hidden) return;
  const inner = `${tree.inner_rounds} inner round${tree.inner_rounds === 1 ? "" : "s"} per parent round`;
  const address = `<code>${escapeHtml(tree.parent || "?")}</code>`;
  const at = dashboardLink(tree.parent_dashboard_url, address, "parent-link", "the parent's dashboard") || address;
  document.getElementById("parent-line").innerHTML = `member of the federation at ${at} · ${inner} · served ${page.total} parent round${page.total === 1 ? "" : "s"}`;
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

// `html` as a link to another federation's dashboard page in a new tab, marked ↗; "" unless `url` is an
// http or https address (the coordinators check it too: it came from another organisation).
function dashboardLink(url, html, cls, what) {
  if (!/^https?:\/\//i.test(url || "")) return "";
  const href = escapeHtml(url);
  return `<a class="${cls}" href="${href}" target="_blank" rel="noopener noreferrer" title="${what}: ${href}">${html} ↗</a>`;
}

// A member's name and badges. A member federation links to its own page: here when this dashboard also
// serves it, else on its own dashboard when it joined with that page's address (http or https only).
function member(w, known) {
  const local = w.local_epsilon ? ` <span class="badge">local DP-SGD ε ${fmt(w.local_epsilon, 3)}</span>` : "";
  const rank = w.lora_rank ? ` <span class="badge">LoRA rank ${w.lora_rank}</span>` : "";
  if (w.kind !== "federation") return escapeHtml(w.name) + local + rank;
  const inner = `${w.inner_rounds} inner round${w.inner_rounds === 1 ? "" : "s"}`;
  const plain = escapeHtml(w.name);
  const name = known.includes(w.name)
    ? `<a class="member-link" href="?federation=${encodeURIComponent(w.name)}">${plain}</a>`
    : dashboardLink(w.dashboard_url, plain, "member-link external", "its own dashboard") || plain;
  return `${name} <span class="badge">federation · ${w.members} worker${w.members === 1 ? "" : "s"} · ${inner}</span>`;
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
    { name: "ε after the round", values: priv.map((r) => r.dp_epsilon), fmt: (v) => fmt(v, 3) },
    { name: "clip S", values: priv.map((r) => r.dp_clip), axis: 1, fmt: (v) => fmt(v, 4) },
  ], {
    refs: p.target_epsilon ? [{ value: p.target_epsilon, name: `target ε ${fmt(p.target_epsilon, 3)}` }] : [],
    axes: [{ lo: 0 }],
    extra: (i) => (p.target_epsilon ? `<div class="muted">${(100 * priv[i].dp_epsilon / p.target_epsilon).toFixed(0)}% of the budget</div>` : ""),
    onRound: openRound,
  });
}

function reported(w) {
  const r = w.reported;
  return r ? `acc ${fmt(r.accuracy)} · loss ${fmt(r.loss)} <span class="muted">(round ${r.round})</span>` : "";
}

function card(k, v, cls = "") {
  return `<div class="card ${cls}"><div class="k">${k}</div><div class="v">${v}</div></div>`;
}


const METRICS = {
  divergence: ["Layer-wise divergence D = V / ‖Δ̄‖² (darker: the workers' updates cancel more)", "D"],
  cancelled: ["Cancelled share ρ = V / E (the noise floor is 1 − Σ p_k²)", "ρ"],
  score: ["The targeting policy's score (carried from the block's last trained round when stale)", "score"],
  update_norm: ["‖Δ̄‖ of each block's aggregated update", "‖Δ̄‖"],
  relative: ["‖Δ̄‖ / ‖θ‖: the update's size relative to the block's weights", "rel"],
  consensus: ["Consensus ‖Δ̄‖² / Σ p_k‖Δ_k‖² (1: every worker moved the block alike)", "cons"],
};
let openRound = () => {};

function blocksChart(enc, matrix) {
  const metric = document.getElementById("block-metric").value;
  const [caption, short] = METRICS[metric];
  document.getElementById("blocks-caption").textContent =
    `${caption} per block and round; a dot marks a block applied in that round, an outline one trained but held back. Click a cell for the round.`;
  heatmap(document.getElementById("chart-divergence"), matrix, {
    label: metric, short, onRound: openRound,
    empty: metric === "divergence" ? "no divergence measured yet (it needs two or more updates in a round)" : "no block measured yet",
  });
}

function alignmentChart(align) {
  const series = align.workers.map((w, k) => ({ name: w, values: align.cosine[k], cls: `k${k % 6}`, fmt: (v) => fmt(v, 3) }));
  lineChart(document.getElementById("chart-alignment"), align.rounds, series, {
    axes: [{ lo: -1, hi: 1 }], legendRows: Math.ceil(series.length / 4), onRound: openRound,
    empty: "no alignment measured yet (it needs two or more updates in a round)",
    extra: (i) => `<div class="muted">‖Δ_k‖: ${align.workers.map((w, k) => `${escapeHtml(w)} ${num(align.norm[k][i], 3)}`).join(" · ")} · ‖Δ̄‖ ${num(align.mean_norm[i], 3)}</div>`,
  });
}

// embeddings, layer.3, pooler, head -> E,L3,P,H (as `strata demo` and `strata logs` print them)
function shortBlocks(blocks) {
  const names = { embeddings: "E", pooler: "P", head: "H" };
  return blocks.map((b) => names[b] || b.replace("layer.", "L")).join(",");
}

function roundsTable(rounds, lm) {
  document.querySelector("#rounds tbody").innerHTML = rounds.slice(-12).reverse().map((r) => `<tr data-round="${r.number}" class="clickable ${r.state}">
    <td class="num">${r.number}</td><td>${escapeHtml(r.state)}</td>
    <td class="num">${lm ? num(r.test_perplexity, 4) : fmt(r.test_accuracy)}</td><td class="num">${fmt(r.test_loss)}</td>
    <td class="num">${r.num_updates}</td><td class="num">${bytes(r.bytes_up)}</td>
    <td class="num">${r.duration_seconds === null ? "–" : r.duration_seconds.toFixed(1)}</td>
    <td title="${r.blocks ? escapeHtml(r.blocks.join(", ")) : "every block"}">${r.blocks ? escapeHtml(shortBlocks(r.blocks)) : "all"}</td></tr>`).join("");
  for (const tr of document.querySelectorAll("#rounds tbody tr")) tr.addEventListener("click", () => openRound(Number(tr.dataset.round)));
}

async function render(name) {
  const enc = encodeURIComponent(name);
  const metric = document.getElementById("block-metric").value;
  const [status, page, matrix, workers, keys, served, align, feds] = await Promise.all([
    get(`/federations/${enc}`),
    get(`/federations/${enc}/rounds?limit=500`),
    get(`/federations/${enc}/blocks?metric=${metric}&limit=1000`),
    get(`/federations/${enc}/workers`),
    keyWeights(enc),
    get(`/federations/${enc}/parent-rounds?limit=500`),
    get(`/federations/${enc}/alignment?limit=1000`),
    get("/federations"),
  ]);
  openRound = (n) => showRound(enc, n, align).catch((e) => showError(`Could not load round ${n}: ${e.message}`));
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
    { name: lm ? "test perplexity" : "test accuracy", values: done.map((r) => (lm ? r.test_perplexity : r.test_accuracy)), fmt: (v) => fmt(v, 4) },
    { name: "test loss", values: done.map((r) => r.test_loss), axis: 1, fmt: (v) => fmt(v, 4) },
  ], {
    axes: lm ? [] : [{ lo: 0, hi: 1 }],
    onRound: openRound,
    extra: (i) => `<div class="muted">train loss ${fmt(done[i].train_loss)} · ${done[i].num_updates} updates · ${(done[i].duration_seconds || 0).toFixed(1)} s</div>`,
  });
  barChart(document.getElementById("chart-bytes"), rounds.map((r) => r.number), [
    { name: "upstream", values: rounds.map((r) => r.bytes_up), ratio: rounds.map((r) => r.up_ratio) },
    { name: "downstream", values: rounds.map((r) => r.bytes_down), ratio: rounds.map((r) => r.down_ratio) },
  ], { onRound: openRound });
  blocksChart(enc, matrix);
  alignmentChart(align);
  privacy(status, rounds);
  keyBlocks(status.tree, keys);
  parentRounds(status.tree, served);
  roundsTable(rounds, lm);
  const known = feds.map((f) => f.name);
  document.querySelector("#workers tbody").innerHTML = workers.map((w) => `<tr class="${w.kind}">
    <td>${member(w, known)}</td>
    <td class="${w.online ? "dot-on" : "dot-off"}">${w.online ? "● online" : "○ offline"}</td>
    <td>${escapeHtml(w.device)}</td><td class="num">${w.num_samples}</td><td class="num">${w.rounds_joined}</td>
    <td class="num">${w.updates_accepted}</td><td class="num">${w.updates_rejected}</td>
    <td class="num">${bytes(w.bytes_up)}</td><td>${reported(w)}</td><td>${new Date(w.last_seen).toLocaleString()}</td>
    <td>${w.rejections.length ? `round ${w.rejections[0].round}: ${escapeHtml(w.rejections[0].reject_reason || w.rejections[0].status)}` : ""}</td></tr>`).join("");
  const wanted = Number(params.get("round"));
  if (wanted && document.getElementById("round-detail").hidden) await showRound(enc, wanted, align).catch(() => hideRound());
  const live = ["running", "created"].includes(status.state);
  document.getElementById("live").textContent = live ? `live: refreshing every ${REFRESH_MS / 1000}s` : `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.state = status.state;
  document.body.dataset.ready = "1";
  return live;
}

function showError(message) {
  const error = document.getElementById("error");
  error.textContent = message;
  error.hidden = false;
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
      hideRound();
      refresh();
    });
    const metric = document.getElementById("block-metric");
    if (params.get("metric") in METRICS) metric.value = params.get("metric");
    metric.addEventListener("change", () => {
      params.set("metric", metric.value);
      history.replaceState(null, "", `?${params}`);
      refresh();
    });
    document.getElementById("round-close").addEventListener("click", hideRound);
    await refresh();
  } catch (e) {
    const error = document.getElementById("error");
    error.textContent = `Could not load federations: ${e.message}`;
    error.hidden = false;
  }
}

main();
