"""The report of bench.lora (markdown and PNG), rendered from its JSON alone, so
`python -m bench.lora --from-json FILE` rewrites both without training anything."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.lora_plot import plot
from bench.lora_runs import mean, num, params, per_worker, ratio, size
from bench.report_parts import failed, ok, plural, ppl
from bench.worldlm_report import group_line


def render(result: dict[str, Any], out: Path) -> str:
    """Write lora.md and lora.png to `out`; return the markdown."""
    text = "\n".join(markdown(result))
    (out / "lora.md").write_text(text)
    plot(result, out / "lora.png")
    return text


def markdown(res: dict[str, Any]) -> list[str]:
    took = f"{res['minutes']:.1f} min" if "minutes" in res else "unfinished"
    est = ", ".join(f"{k} {v / 60:.0f} min" for k, v in res["estimate_s"].items())
    smoke = " — smoke run (--quick: tiny models, a few examples; the numbers mean nothing)"
    lines = [
        "# LoRA federations: LoRA against full fine-tuning, mixed ranks, instruction tuning"
        + (smoke if res["quick"] else ""),
        "",
        f"`{res['command']}`",
        "",
        f"Machine: {res['machine']}. Took {took}" + ("." if res["quick"] else f" (estimated {est})."),
        "",
        "Every federation is real: a coordinator serves gRPC on 127.0.0.1 with its own SQLite database, and "
        "workers run the worker's code in threads of one process (bench/lora_runs.py). Every worker takes "
        "part in every round and trains exactly max_steps AdamW steps a round (a fresh optimizer each "
        "round). All arms of a study use the same worker data, seeds, rounds, steps and batch size; full "
        "fine-tuning and LoRA each use a learning rate suited to them (named per arm). Divergence "
        "measurement is off in every arm. One seed, no repetitions. Times are on this 2-core machine, shared "
        "with other jobs while it ran: compare arms by their ratios, measured side by side in the same run.",
        "",
    ]
    if "sst2" in res:
        lines += section_sst2(res["sst2"], res["args"])
    if "ranks" in res:
        lines += section_ranks(res["ranks"], res.get("sst2"), res["args"])
    if "instruct" in res:
        lines += section_instruct(res["instruct"], res["args"])
    return [*lines, "## What was cut to fit the budget", "", *cuts(res), "", "![curves](lora.png)", ""]


def training(s: dict[str, Any], rounds: int, lr: float | None = None) -> str:
    how = f"lr {lr:g}" if lr else "at the arm's learning rate"
    return (
        f"{plural(rounds, 'round')}; each worker {s['max_steps']} steps a round, batch {s['batch_size']}, "
        f"AdamW {how} (fresh each round), max_seq_len {s['max_seq_len']}, seed {s['seed']}."
    )


def adapter(rec: dict[str, Any]) -> str:
    lo = rec.get("lora")
    if not lo:
        return "none: every tensor trains and travels"
    head = f"; trained whole: {', '.join(lo['modules_to_save'])}" if lo["modules_to_save"] else ""
    return (
        f"r {lo['rank']}, alpha {lo['alpha']:g}, dropout {lo['dropout']:g}, "
        f"targets {','.join(lo['targets'])}, aggregation {lo['aggregation']}{head}"
    )


# ---------------------------------------------------------------------------------------------- study 1


def section_sst2(exp: dict[str, Any], a: dict[str, Any]) -> list[str]:
    arms = ok(exp["arms"])
    n = exp["groups"]["sst2"]["test_rows"]
    full = arms.get("full fine-tuning")
    lines = [
        f"## 1. SST-2: LoRA against full fine-tuning, {exp['model']}, {plural(a['workers'], 'worker')}",
        "",
        f"Model {exp['model']} ({params(exp['parameters'])} parameters in its safetensors, a fresh 2-class "
        f"head, seeded; the base files a coordinator serves: {size(exp['base_bytes'])}). Dirichlet "
        f"α = {a['alpha']:g} over labels. " + training(exp["settings"], a["rounds"]) + " Test: the "
        f"coordinator evaluates each new version on the first {n} rows of the GLUE dev set (majority class "
        f"{exp['majority']:.4f}; one standard error of an accuracy near 0.8 is {math.sqrt(0.16 / n):.3f}).",
        "",
        *group_line(exp),
        "",
        *failed(exp["arms"], "arm"),
        "| arm | learning rate | adapter | parameters that travel | base model |",
        "|---|---|---|---|---|",
    ]
    for name, r in arms.items():
        share = f" ({100 * r['travelling'] / full['travelling']:.2f} % of full)" if full else ""
        base = "–" if not r["lora"] else "held by each worker" if r["holds_base"] else "downloaded"
        lines.append(f"| {name} | {r['lr']:g} | {adapter(r)} | {r['travelling']:,}{share} | {base} |")
    lines += ["", "Test accuracy after each round (the coordinator's evaluation of the new version):", ""]
    lines += ["| round | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for i in range(max((len(r["rounds"]) for r in arms.values()), default=0)):
        cells = [num(r["rounds"][i]["test_accuracy"]) if i < len(r["rounds"]) else "" for r in arms.values()]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return [*lines, "", *bytes_lines(exp, arms), "", *cost_lines(arms), "", *verdict_sst2(arms, n), ""]


def bytes_lines(exp: dict[str, Any], arms: dict[str, Any]) -> list[str]:
    pw = {k: per_worker(r) for k, r in arms.items()}
    full = pw.get("full fine-tuning") or {}
    out = [
        "Bytes per worker per round. Up and down are the rounds rows' bytes_up and bytes_down (wire bytes: "
        "zstd-framed fp32) divided by the round's workers; round 1 is apart (a full fine-tuning worker "
        "downloads the whole model then, the later rounds send the global update since its version). 'Sent "
        "before round 2' is the coordinator's Prometheus counter strata_bytes_sent (every model, asset and "
        "base byte it sent, whether a round was open or not) less the bytes_down of rounds 2 and later, per "
        "worker: round 1 including any base model download. 'Base in cache' is what each worker's cache "
        "holds of a downloaded base (0: it held its own copy).",
        "",
        "| arm | round 1 up | round 1 down | sent before round 2 | later rounds up | later rounds down "
        "| up vs full | down vs full | base in cache |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in pw.items():
        out.append(
            f"| {name} | {size(p['up1'])} | {size(p['down1'])} | {size(p['before2'])} | {size(p['up'])} | "
            f"{size(p['down'])} | {ratio(p['up'], full.get('up'))} | {ratio(p['down'], full.get('down'))} | "
            f"{size(p['cached'])} |"
        )
    for name, r in arms.items():
        if r["lora"] and not r["holds_base"]:
            p = pw[name]
            twin = arms.get(name.split(",")[0])  # the same arm with the base held
            same = ""
            if twin:
                pairs = zip(r["rounds"], twin["rounds"], strict=False)
                gaps = [abs(x["test_accuracy"] - y["test_accuracy"]) for x, y in pairs]
                same = (
                    f" Its accuracy in its rounds differs from {name.split(',')[0]}'s by at most "
                    f"{max(gaps):.4f} with the same data and seeds: the run-to-run variation of this setup."
                )
            out += [
                "",
                f"A worker without the base ({name}): the coordinator sent {size(p['before2'])} per worker "
                f"before round 2; the base's files are {size(exp['base_bytes'])} (its manifest), and each "
                f"worker's cache holds {size(p['cached'])}. Of all it sent, {size(p['outside'])} left while "
                "no round was open; the rest of the base download fell inside round 1 and is in its "
                "bytes_down. After round 1 such a worker moves what a worker holding the base moves." + same,
            ]
    return out


def cost_lines(arms: dict[str, Any]) -> list[str]:
    full = arms.get("full fine-tuning")
    out = [
        "Time and memory. 'train_seconds' is each update's recorded training time, mean over workers and "
        "rounds: the workers' threads share the 2 cores, so it measures contention as much as work; only the "
        "ratio between arms means something. One process holds every worker, so a worker's memory cannot be "
        "told apart there: each arm also ran one worker's round of training alone in a child process (the "
        "worker's own replica and train_round, worker 1's data, the same batch and max_seq_len, 2 torch "
        "threads). 'RSS loaded' is its resident memory once the model is loaded; 'peak RSS training' its "
        "peak during the round (VmHWM, reset after loading by writing 5 to /proc/self/clear_refs; where that "
        "is refused the peak includes loading); the increment (peak less loaded) is gradients, optimizer "
        "state and activations.",
        "",
        "| arm | train_seconds per round | alone: s per step | alone: trainable parameters | RSS loaded "
        "| peak RSS training | increment | increment vs full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    probe = (full or {}).get("probe")
    inc_full = probe["peak_mib"] - probe["loaded_mib"] if probe else None
    for name, r in arms.items():
        ts = mean([u["train_seconds"] for row in r["rounds"] for u in row["updates"]])
        p = r.get("probe")
        if not p:
            out.append(f"| {name} | {num(ts, '.1f')} | – | – | – | – | – | – |")
            continue
        inc = p["peak_mib"] - p["loaded_mib"]
        note = "" if p["peak_reset"] else " (not reset)"
        out.append(
            f"| {name} | {num(ts, '.1f')} | {p['seconds'] / max(p['steps'], 1):.3f} | {p['trainable']:,} | "
            f"{p['loaded_mib']:.0f} MiB | {p['peak_mib']:.0f} MiB{note} | {inc:.0f} MiB | "
            f"{ratio(inc, inc_full)} |"
        )
    return out


def verdict_sst2(arms: dict[str, Any], n: int) -> list[str]:
    full = arms.get("full fine-tuning")
    if not full:
        return ["No full fine-tuning arm finished: nothing to compare."]
    acc = full["rounds"][-1]["test_accuracy"]
    se = math.sqrt(2 * 0.16 / n)
    pf = per_worker(full)
    ts_full = mean([u["train_seconds"] for row in full["rounds"] for u in row["updates"]])
    out = [
        f"Measured (one seed; the standard error of a difference of two accuracies near 0.8 on {n} rows is "
        f"about {se:.3f}):"
    ]
    for name, r in arms.items():
        if not r["lora"] or not r["holds_base"] or len(r["rounds"]) != len(full["rounds"]):
            continue
        got = r["rounds"][-1]["test_accuracy"]
        p = per_worker(r)
        gap = got - acc
        ts = mean([u["train_seconds"] for row in r["rounds"] for u in row["updates"]])
        out.append(
            f"- **{name}** (lr {r['lr']:g}) ends at {got:.4f} against full fine-tuning's {acc:.4f} (lr "
            f"{full['lr']:g}): {100 * gap:+.1f} points, "
            + ("within" if abs(gap) <= se else "outside")
            + f" one standard error. After round 1 it sends {ratio(pf['up'], p['up'])} fewer bytes up and "
            f"receives {ratio(pf['down'], p['down'])} fewer down per worker per round; its workers' "
            f"train_seconds are {ratio(ts, ts_full)} full fine-tuning's."
        )
        lost = [x for x in r["discarded"] if x is not None]
        if lost:
            k = len(r["rounds"][0]["updates"])
            out.append(
                f"  Product aggregation re-factorises the mean of {k} rank-{r['lora']['rank']} products to "
                f"rank {r['lora']['rank']}: it discarded {min(lost):.3g}–{max(lost):.3g} of the mean "
                "product's energy per round (lora_discarded, mean over blocks)."
            )
    return out


# ---------------------------------------------------------------------------------------------- study 2


def section_ranks(exp: dict[str, Any], sst2: dict[str, Any] | None, a: dict[str, Any]) -> list[str]:
    arms = ok(exp["arms"])
    ranks = ", ".join(f"{w} r {r}" for w, r in exp["worker_ranks"].items())
    top = exp["federation_rank"]
    ref_name = f"LoRA r={top}"
    ref = ok(sst2["arms"]).get(ref_name) if sst2 else None
    lines = [
        f"## 2. Workers of mixed ranks: product against factors ({plural(a['workers'], 'worker')}, SST-2 "
        "as in 1)",
        "",
        f"Federation rank {top} (alpha {2 * top}, lr {a['lora_lr']:g}); the workers' own ranks (worker "
        f"setting lora_rank): {ranks}. "
        + training(exp["settings"], a["ranks_rounds"], a["lora_lr"])
        + " **product** "
        "averages the members' products B_k·A_k (each at its own rank) and re-factorises the mean to the "
        "federation's rank by SVD; **factors** averages A and B separately, a lower rank's factors being "
        "zero past its rank (RankMask, HetLoRA's zero-padding). 'Discarded' is the coordinator's "
        "lora_discarded (the share of the mean product's energy the SVD truncation drops; product only), "
        "mean over the layer blocks. 'Distance' is computed here for both arms from the updates the workers "
        "sent and the coordinator's checkpoints: ‖B'A' − P̄‖² / ‖P̄‖², mean over the adapted matrices, with "
        "B'A' the new version's product and P̄ the sample-weighted mean of the members' products at their "
        "ranks; for product it is the discarded share (a check of the recorded value).",
        "",
        *failed(exp["arms"], "arm"),
    ]
    head = ["round", *(f"{k} accuracy" for k in arms)]
    if ref:
        head.append(f"{ref_name} at every worker (study 1)")
    head += ["product discarded"] * ("product" in arms) + [f"{k} distance" for k in arms]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for i in range(a["ranks_rounds"]):
        row = [str(i + 1)] + [num(r["rounds"][i]["test_accuracy"]) for r in arms.values()]
        if ref:
            row.append(num(ref["rounds"][i]["test_accuracy"]) if i < len(ref["rounds"]) else "–")
        row += [num(arms["product"]["discarded"][i], ".3g")] * ("product" in arms)
        row += [num((r.get("distance") or [None] * (i + 1))[i], ".3g") for r in arms.values()]
        lines.append("| " + " | ".join(row) + " |")
    if "product" in arms and "factors" in arms:
        p, f = arms["product"], arms["factors"]
        ap, af = p["rounds"][-1]["test_accuracy"], f["rounds"][-1]["test_accuracy"]
        dp, df = mean(p.get("distance") or []), mean(f.get("distance") or [])
        rounds = a["ranks_rounds"]
        se = math.sqrt(2 * 0.16 / min(a["test"], 872))  # a difference of two accuracies near 0.8
        text = (
            f"Measured: after {plural(rounds, 'round')} product reaches {ap:.4f} and factors {af:.4f} "
            f"({100 * (ap - af):+.1f} points for product; "
            + ("more" if abs(ap - af) > se else "less")
            + f" than the {se:.3f} standard error of a difference). The new version's distance from the "
            f"exact mean product is {num(dp, '.3g')} for product (its SVD truncation) and {num(df, '.3g')} "
            f"for factors (means over rounds)" + (f": {ratio(df, dp)} product's." if dp and df else ".")
        )
        if ref and len(ref["rounds"]) >= rounds:
            text += (
                f" With every worker at rank {top} (study 1) round {rounds} ends at "
                f"{ref['rounds'][rounds - 1]['test_accuracy']:.4f}."
            )
        lines += ["", text]
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------- study 3


def section_instruct(exp: dict[str, Any], a: dict[str, Any]) -> list[str]:
    ll, pre, r0 = exp["llama"], exp["pretrain"], exp["round0"]
    ops = "; ".join(f"{w}: {', '.join(o)}" for w, o in exp["ops"].items())
    lines = [
        "## 3. Instruction tuning: a small LLaMA-architecture model with LoRA",
        "",
        f"Model: LlamaForCausalLM from a config ({ll['layers']} layers, hidden {ll['hidden']}, {ll['heads']} "
        f"heads, a WordPiece vocabulary of at most {ll['vocab']}; {params(exp['parameters'])} parameters), "
        f"first **pretrained centrally** (not federated) on generic text, {exp['pretrain_source']}: "
        f"{pre['steps']} AdamW steps of batch {pre['batch']}, lr {pre['lr']:g}, the whole model, next-token "
        f"loss {pre['first_loss']:.2f} → {pre['last_loss']:.2f} (mean of the first and last 10 steps), "
        f"{pre['seconds']:.0f} s. The federations then train only LoRA adapters on it. Data: prompt/response "
        "pairs whose response follows one of six rules over 3–5 words (reverse the words, sort them, repeat "
        f"them twice, count them, the first word, the last word); each worker sees {a['lm_ops']} of the six "
        f"({ops}), {exp['examples']} pairs each; the held-out set has {exp['test_rows']} pairs of all six "
        "types, none of its prompts in any worker's data. Task instruction: the loss covers the response "
        "tokens only (strata/instruct.py). " + training(exp["settings"], a["lm_rounds"], a["lm_lr"]),
        "",
        f"Round 0 is the pretrained base (a fresh adapter has B = 0 and changes nothing): held-out response "
        f"perplexity {ppl(r0['loss']):.2f}, token accuracy {r0['accuracy']:.4f}. The same model before "
        f"pretraining: {ppl(exp['scratch']['loss']):.1f} and {exp['scratch']['accuracy']:.4f}. For scale: "
        f"the prompts draw their words from a list of {exp.get('words', 32)}, so a perplexity near "
        f"{exp.get('words', 32)} is what knowing an answer's words come from that list, but not which one "
        "comes next, would give.",
        "",
        *failed(exp["arms"], "arm"),
    ]
    arms = ok(exp["arms"])
    if not arms:
        return lines
    lines += [
        "| round | " + " | ".join(f"{k}: perplexity | token accuracy" for k in arms) + " |",
        "|---|" + "---|---|" * len(arms),
        "| 0 | " + " | ".join(f"{ppl(r0['loss']):.2f} | {r0['accuracy']:.4f}" for _ in arms) + " |",
    ]
    for i in range(a["lm_rounds"]):
        cells = [
            f"{ppl(r['rounds'][i]['test_loss']):.2f} | {num(r['rounds'][i]['test_accuracy'])}"
            for r in arms.values()
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", "Claim: held-out response perplexity falls across rounds. Measured:"]
    for name, r in arms.items():
        ps = [ppl(x["test_loss"]) for x in r["rounds"]]
        falls = sum(b < c for b, c in zip(ps[1:], ps, strict=False))
        met = ps[-1] < ps[0] < ppl(r0["loss"])
        lines.append(
            f"- **{name}** ({adapter(r)}; lr {r['lr']:g}; {r['travelling']:,} parameters travel): "
            f"{ppl(r0['loss']):.2f} before the federation, {ps[0]:.2f} after round 1, {ps[-1]:.2f} after "
            f"round {len(ps)}; it fell in {falls} of the {len(ps) - 1} round-to-round steps"
            + (" (every one)" if falls == len(ps) - 1 else " (not monotone)")
            + f"; token accuracy {r['rounds'][-1]['test_accuracy']:.4f} at the end. "
            + ("**Met**" if met else "**Not met**")
            + " (read as: lower after the last round than after the first, and after the first than before)."
        )
    return [*lines, ""]


def cuts(res: dict[str, Any]) -> list[str]:
    a, est = res["args"], res["estimate_s"]
    hour = {k: 3600 / v for k, v in est.items() if v}
    out = []
    if res["quick"]:
        out.append("- --quick: a 2-layer BERT instead of MiniLM, a 1-layer LLaMA, a handful of examples.")
    if "sst2" in res:
        out.append(
            f"- sst2: {plural(a['rounds'], 'round')} of {a['steps']} steps, {a['examples']} examples per "
            f"worker on average (of 67,349), the first {a['test']} of 872 dev rows; the arm that downloads "
            f"the base ran {plural(a['download_rounds'], 'round')}; each memory probe {a['probe_steps']} "
            f"steps. The issue's ~1 hour per study would allow about {hour.get('sst2', 0):.1f}× this (the "
            f"estimate was {est.get('sst2', 0) / 60:.0f} min)."
        )
    if "ranks" in res:
        out.append(
            f"- ranks: {plural(a['ranks_rounds'], 'round')} on the data of sst2; about "
            f"{hour.get('ranks', 0):.1f}× this in an hour."
        )
    if "instruct" in res:
        out.append(
            f"- instruct: LLaMA {a['llama']}, {a['pretrain_steps']} pretraining steps on "
            f"{a['pretrain_texts']} sentences, {plural(a['lm_workers'], 'worker')} × {a['lm_examples']} "
            f"pairs, {a['lm_steps']} steps a round for {plural(a['lm_rounds'], 'round')}; about "
            f"{hour.get('instruct', 0):.1f}× this in an hour (or a larger model)."
        )
    out.append("- One seed; no repetitions, so differences of a point or two are not significant.")
    return out
