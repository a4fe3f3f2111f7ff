// One round in detail (a click on a round in any chart or in the rounds table): its metrics, every block's
// outcome and scores, every update with its alignment to the mean, and the workers' evaluations.
"use strict";

function yesNo(b) {
  return b ? "✓" : "";
}

function num(v, digits = 4) {
  return v === null || v === undefined ? "–" : Number(v).toPrecision(digits);
}

function detailSummary(r) {
  const parts = [
    `<b>${escapeHtml(r.state)}</b>`,
    `version ${r.base_version} → ${r.result_version ?? "–"}`,
    `${r.num_updates} update${r.num_updates === 1 ? "" : "s"} of ${r.participants.length} invited (quorum ${r.min_updates})`,
    `${r.num_samples} samples`,
    r.test_accuracy !== null ? `test acc ${fmt(r.test_accuracy)} · loss ${fmt(r.test_loss)}` : "",
    r.train_loss !== null ? `train loss ${fmt(r.train_loss)}` : "",
    `up ${bytes(r.bytes_up)} · down ${bytes(r.bytes_down)}`,
    r.duration_seconds !== null ? `${r.duration_seconds.toFixed(1)} s` : "",
    r.probe ? "probe round" : "",
    r.private ? `private: ε ${num(r.dp_epsilon, 3)} after it, clip ${num(r.dp_clip, 3)}` : "",
    r.error ? `<span class="error">${escapeHtml(r.error)}</span>` : "",
  ];
  return parts.filter(Boolean).join(" · ");
}

function detailBlocks(r) {
  return r.block_outcomes.map((b) => `<tr class="${b.applied ? "applied" : b.trained ? "held" : ""}">
    <td>${escapeHtml(b.block)}</td><td>${yesNo(b.trained)}</td><td>${yesNo(b.applied)}</td>
    <td class="num">${num(b.score)}${b.fresh || b.score === null ? "" : ' <span class="muted">(carried)</span>'}</td>
    <td class="num">${num(b.divergence)}</td><td class="num">${num(b.cancelled, 3)}</td>
    <td class="num">${num(b.update_norm)}</td></tr>`).join("");
}

function detailUpdates(r, align) {
  const j = align.rounds.indexOf(r.number);
  const cos = (w) => {
    const i = align.workers.indexOf(w);
    return i < 0 || j < 0 ? null : align.cosine[i][j];
  };
  return r.updates.map((u) => `<tr class="${u.status}">
    <td>${escapeHtml(u.worker)}</td><td>${escapeHtml(u.status)}${u.reject_reason ? `: ${escapeHtml(u.reject_reason)}` : ""}</td>
    <td class="num">${u.num_samples}</td><td class="num">${u.num_steps}</td><td class="num">${fmt(u.train_loss)}</td>
    <td class="num">${bytes(u.bytes)}</td><td class="num">${num(u.update_norm)}</td><td class="num">${num(cos(u.worker), 3)}</td>
    <td class="num">${u.train_seconds === null ? "–" : u.train_seconds.toFixed(1)}</td></tr>`).join("");
}

function detailEvaluations(r) {
  return r.evaluations.map((e) => `<tr><td>${escapeHtml(e.worker)}</td><td>${escapeHtml(e.split)}</td>
    <td class="num">${e.model_version}</td><td class="num">${e.num_samples}</td><td class="num">${fmt(e.accuracy)}</td>
    <td class="num">${fmt(e.loss)}</td></tr>`).join("");
}

// Show round `number` of federation `enc` (its alignment from `align`); the URL keeps it (?round=N).
async function showRound(enc, number, align) {
  const section = document.getElementById("round-detail");
  const r = await get(`/federations/${enc}/rounds/${number}`);
  document.getElementById("round-title").textContent = `Round ${r.number}`;
  document.getElementById("round-summary").innerHTML = detailSummary(r);
  document.querySelector("#round-blocks tbody").innerHTML = detailBlocks(r);
  document.querySelector("#round-updates tbody").innerHTML = detailUpdates(r, align);
  document.querySelector("#round-evaluations tbody").innerHTML = detailEvaluations(r);
  document.getElementById("round-evaluations").hidden = !r.evaluations.length;
  section.hidden = false;
  section.dataset.round = String(r.number);
  params.set("round", r.number);
  history.replaceState(null, "", `?${params}`);
}

function hideRound() {
  document.getElementById("round-detail").hidden = true;
  params.delete("round");
  history.replaceState(null, "", `?${params}`);
}
