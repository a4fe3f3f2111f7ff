"""The report of bench.worldlm (markdown and PNG), rendered from its JSON alone, so
`python -m bench.worldlm --from-json FILE` rewrites both without training anything."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.report_parts import MB, failed, ok, plural, ppl
from bench.worldlm_plot import plot

GOAL = 1.5  # the project's goal: perplexity at least 1.5x lower than flat on heterogeneous sub-federations


def attention_lines(arms: dict[str, Any]) -> list[str]:
    """Per arm whose parent recorded key-block weights: each member's mean α against its sample share."""
    out = []
    for name, rec in arms.items():
        rows = rec.get("key_weights") or []
        if not rows:
            continue
        total: dict[tuple[int, str], int] = {}
        for r in rows:
            total[(r["round"], r["block"])] = total.get((r["round"], r["block"]), 0) + r["samples"]
        parts = []
        for m in sorted({r["member"] for r in rows}):
            mine = [r for r in rows if r["member"] == m]
            share = sum(r["samples"] / total[(r["round"], r["block"])] for r in mine) / len(mine)
            cos = [r["cosine"] for r in mine if r["cosine"] is not None]
            parts.append(f"{m} α {sum(r['weight'] for r in mine) / len(mine):.3f} (sample share {share:.3f}"
                         + (f", cos {sum(cos) / len(cos):.2f}" if cos else "") + ")")  # fmt: skip
        blocks = ", ".join(sorted({r["block"] for r in rows}))
        rounds = plural(len({r["round"] for r in rows}), "round")
        out.append(f"- {name}: " + "; ".join(parts) + f" (mean over key blocks {blocks} and {rounds}).")
    if out:
        out = ["Key-block weights the parent recorded: each member's α against its share of the samples, and the "
               "cosine of its key-block update with the weighted mean:", "", *out, ""]  # fmt: skip
    return out


def fmt_bytes(n: float) -> str:
    return f"{n / MB:.2f}"


def render(result: dict[str, Any], out: Path) -> str:
    """Write worldlm.md and worldlm.png to `out`; return the markdown."""
    text = "\n".join(markdown(result))
    (out / "worldlm.md").write_text(text)
    plot(result, out / "worldlm.png")
    return text


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs of different experiments: each experiment from the last run that has it,
    with that run's arguments; the runs' commands and times listed."""
    if len(results) == 1:
        return results[0]
    out: dict[str, Any] = dict(results[0])
    out["args_by_exp"], out["runs"] = {}, []
    for res in results:
        for run in res.get("runs") or [res]:
            took = f"{run['minutes']:.1f} min" if "minutes" in run else run.get("took", "unfinished")
            exps = run.get("experiments") or ", ".join(e for e in "ABC" if e in res)
            out["runs"].append(
                dict(command=run["command"], took=took, estimate_s=run["estimate_s"], experiments=exps)
            )
        for exp in "ABC":
            if exp in res:
                out[exp] = res[exp]
                out["args_by_exp"][exp] = args_of(res, exp)
    out.pop("minutes", None)
    return out


def args_of(res: dict[str, Any], exp: str) -> dict[str, Any]:
    """The arguments experiment `exp` ran with (a merged report holds one set per experiment)."""
    return res.get("args_by_exp", {}).get(exp, res["args"])


def markdown(res: dict[str, Any]) -> list[str]:
    a = res["args"]
    took = f"{res['minutes']:.1f} min" if "minutes" in res else "unfinished"
    runs = res.get("runs") or [
        dict(command=res["command"], took=took, estimate_s=res["estimate_s"], experiments="")
    ]
    exps = [e for e in "ABC" if e in res]
    taus = {e: args_of(res, e)["tau"] for e in exps if e != "C"}
    tau = (
        f"τ = {a['tau']:g}"
        if len(set(taus.values())) <= 1
        else ", ".join(f"τ = {t:g} in {e}" for e, t in taus.items())
    )
    lines = [
        "# Federations of federations (WorldLM) against flat federations"
        + (
            " — smoke run (--quick: tiny models, a few examples; the numbers mean nothing)"
            if res["quick"]
            else ""
        ),
        "",
    ]
    for run in runs:
        what = f" ({run['experiments']})" if run["experiments"] else ""
        est = "" if res["quick"] else f" (estimated {run['estimate_s'] / 60:.0f} min from the probe's rate)"
        lines += [f"`{run['command']}`{what}: took {run['took']}{est}.", ""]
    lines += [
        f"Machine: {res['machine']}.",
        "",
        "Every federation is real: coordinators serve gRPC on 127.0.0.1, each with its own SQLite database, "
        "and workers run the worker's code in threads of one process (bench/worldlm_run.py). Every worker "
        "trains exactly the same number of AdamW steps in every round of every arm (max_steps, with enough "
        "local epochs that the cap decides), from the same data, with the same seeds (a worker keeps its name "
        "across arms, and its local seed depends on its name and the round). A sub-federation runs one inner "
        "round per parent round (inner_rounds 1), so every arm trains every worker the same number of rounds. "
        f"All coordinators aggregate with FedAvg (server lr 1), fp32 updates. Key blocks (docs/methods.md "
        f"section 5): β = {a['beta']:g} (the share of its own key blocks a sub-federation keeps), "
        f"{tau} (attention temperature).",
        "",
    ]
    if "A" in res:
        lines += section_a(res["A"], args_of(res, "A"))
    if "B" in res:
        lines += section_b(res["B"], args_of(res, "B"))
    if "C" in res:
        lines += section_c(res)
    lines += ["## What was cut to fit the budget", "", *cuts(res), "", "![curves](worldlm.png)", ""]
    return lines


def group_line(exp: dict[str, Any]) -> list[str]:
    out = []
    for g, v in exp["groups"].items():
        counts = ", ".join("/".join(str(c) for c in w) for w in v["label_counts"])
        where = ""
        if v.get("positions"):
            a, b = v["positions"]
            where = f"; training rows at positions {a}–{b - 1} of one seeded permutation of the 67,349 rows"
        out.append(
            f"- **{g}**: workers {', '.join(v['workers'])}; examples per label per worker {counts}; "
            f"{v['test_rows']} held-out rows{where}."
        )
    return out


def training_line(s: dict[str, Any], rounds: int) -> str:
    return (
        f"{plural(rounds, 'round')}; each worker {s['max_steps']} steps a round, batch {s['batch_size']}, AdamW lr "
        f"{s['learning_rate']:g} (fresh each round), max_seq_len {s['max_seq_len']}, seed {s['seed']}."
    )


def section_a(exp: dict[str, Any], a: dict[str, Any]) -> list[str]:
    arms = ok(exp["arms"])
    groups = list(exp["groups"])
    lines = [
        "## A. Sentiment across languages: English SST-2 and Portuguese sst2_pt as two sub-federations",
        "",
        f"Model {exp['model']} ({exp['parameters'] or '?'} parameters, a fresh 2-class head, seeded). "
        f"Dirichlet α = {a['alpha']:g} over labels inside each language. " + training_line(exp["settings"], a["rounds_a"]),
        "",
        *group_line(exp),
        "",
        "Accuracy on each language's test set with the model that language uses: flat, the one global model; "
        "a tree, its sub-federation's model after its inner round (with its own key blocks), as its "
        "coordinator evaluated it; local only, the sub-federation trained alone. 'World' is the tree "
        "parent's final model on each test set.",
        "",
        "| arm | " + " | ".join(f"{g} acc" for g in groups) + " | mean | " + " | ".join(f"world {g}" for g in groups) + " | seconds |",
        "|---|" + "---|" * (2 * len(groups) + 2),
    ]  # fmt: skip
    for name, rec in arms.items():
        final = [rec["per_round"][g]["accuracy"][-1] for g in groups]
        world = [f"{rec['world'][g]['accuracy']:.4f}" if "world" in rec else "–" for g in groups]
        lines.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in final) + f" | {sum(final) / len(final):.4f} | "
                     + " | ".join(world) + f" | {rec['seconds']:.0f} |")  # fmt: skip
    lines += ["", *failed(exp["arms"], "arm")]
    if not arms:
        return lines
    mean = {n: sum(r["per_round"][g]["accuracy"][-1] for g in groups) / len(groups) for n, r in arms.items()}
    best = max(mean, key=lambda n: mean[n])
    lines += [f"Highest mean accuracy: **{best}** ({mean[best]:.4f}); flat {mean.get('flat', float('nan')):.4f}, "
              f"tree without key blocks {mean.get('tree', float('nan')):.4f}, local only {mean.get('local only', float('nan')):.4f} "
              f"(differences of a point or two are within the run-to-run noise of {exp['groups'][groups[0]]['test_rows']} test rows: "
              f"one standard error is about {100 * math.sqrt(0.25 / exp['groups'][groups[0]]['test_rows']):.1f} points).", ""]  # fmt: skip
    lines += attention_lines(arms)
    for g in groups:
        lines += [
            f"Accuracy per round, {g}:",
            "",
            "| round | " + " | ".join(arms) + " |",
            "|---|" + "---|" * len(arms),
        ]
        for t in range(len(next(iter(arms.values()))["per_round"][g]["accuracy"])):
            lines.append(
                f"| {t + 1} | "
                + " | ".join(f"{r['per_round'][g]['accuracy'][t]:.4f}" for r in arms.values())
                + " |"
            )
        lines.append("")
    return lines


def section_b(exp: dict[str, Any], a: dict[str, Any]) -> list[str]:
    arms = ok(exp["arms"])
    groups = list(exp["groups"])
    size = exp["gpt2"]
    local = next((n for n in arms if n.startswith("tree ") and "attention" in n), None)
    lines = [
        "## B. Language modelling from scratch: news, forum posts and Portuguese as three sub-federations",
        "",
        f"GPT-2 built from a config: {size['layers']} layers, hidden {size['hidden']}, {size['heads']} heads, "
        f"a WordPiece vocabulary of up to {size['vocab']} trained on the workers' text ({exp['parameters'] or '?'} "
        f"parameters); key blocks {a['lm_local_blocks']} (GPT-2's output matrix is tied to the embeddings, "
        "which stay shared). Sources: news = ag_news_subset (title + description), forum = 20newsgroups "
        "(header block stripped), pt = sst2_pt; whitespace collapsed, texts under 5 words dropped; "
        f"Dirichlet α = {a['alpha']:g} over each source's labels. " + training_line(exp["settings"], a["rounds_b"]),
        "",
        *group_line(exp),
        "",
        "Perplexity (exp of the mean next-token loss) on each source's held-out text with the model that "
        "source uses (as in A).",
        "",
        "| arm | " + " | ".join(groups) + " | seconds |",
        "|---|" + "---|" * (len(groups) + 1),
    ]  # fmt: skip
    for name, rec in arms.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{ppl(rec['per_round'][g]['loss'][-1]):.1f}" for g in groups)
            + f" | {rec['seconds']:.0f} |"
        )
    lines += ["", *failed(exp["arms"], "arm")]
    if local is None or "flat" not in arms:
        return [
            *lines,
            "**The goal cannot be judged**: the flat or the tree-with-key-blocks arm did not finish.",
            "",
        ]
    final = {n: {g: ppl(r["per_round"][g]["loss"][-1]) for g in groups} for n, r in arms.items()}
    ratio = {g: final["flat"][g] / final[local][g] for g in groups}
    met = [g for g in groups if ratio[g] >= GOAL]
    lines += [
        f"| source | flat | {local} | flat / {local} | local only | flat / local only | tree | goal ≥ {GOAL:g}× |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        lo = final.get("local only", {}).get(g, math.nan)
        lines.append(f"| {g} | {final['flat'][g]:.1f} | {final[local][g]:.1f} | **{ratio[g]:.2f}×** | {lo:.1f} | "
                     f"{final['flat'][g] / lo:.2f}× | {final.get('tree', {}).get(g, math.nan):.1f} | {'met' if g in met else 'not met'} |")  # fmt: skip
    lines += ["", verdict_b(arms, final, ratio, local, groups), "", *attention_lines(arms)]
    lines += ["Perplexity per round (each source's model):", "", "| round | " + " | ".join(f"{n} / {g}" for n in arms for g in groups) + " |",
              "|---|" + "---|" * (len(arms) * len(groups))]  # fmt: skip
    for t in range(len(arms["flat"]["per_round"][groups[0]]["loss"])):
        lines.append(
            f"| {t + 1} | "
            + " | ".join(f"{ppl(r['per_round'][g]['loss'][t]):.1f}" for r in arms.values() for g in groups)
            + " |"
        )
    return [*lines, ""]


def verdict_b(
    arms: dict[str, Any],
    final: dict[str, dict[str, float]],
    ratio: dict[str, float],
    local: str,
    groups: list[str],
) -> str:
    met = [g for g in groups if ratio[g] >= GOAL]
    if len(met) == len(groups):
        return (
            f"**The goal is met**: {local} has at least {GOAL:g}× lower perplexity than flat on every source."
        )
    head = (f"**The goal is {'partly met' if met else 'not met'}**" + (f" (met on {', '.join(met)})" if met else "")
            + f": flat / {local} is {', '.join(f'{g} {ratio[g]:.2f}×' for g in groups)}.")  # fmt: skip
    why = []
    if "local only" in final:
        lo = {g: final["flat"][g] / final["local only"][g] for g in groups}
        why.append("Even each sub-federation training alone on its own source reaches only "
                   + ", ".join(f"{g} {lo[g]:.2f}×" for g in groups) + " against flat: at this scale the shared model is "
                   "not much worse on any one source than a specialist, so there is little for localisation to win.")  # fmt: skip
    drops = {}
    for g in groups:
        curve = [ppl(x) for x in arms["flat"]["per_round"][g]["loss"]]
        if len(curve) >= 2:
            drops[g] = 1 - curve[-1] / curve[-2]
    if drops and max(drops.values()) > 0.02:
        why.append("Flat's perplexity still fell in the last round (" + ", ".join(f"{g} −{100 * d:.0f} %" for g, d in drops.items())
                   + "): training is far from converged, and the gaps WorldLM reports come from long training, "
                   "where the shared model's compromise between sources starts to cost.")  # fmt: skip
    if "tree" in final:
        tr = {g: final["flat"][g] / final["tree"][g] for g in groups}
        why.append("The tree without key blocks gets " + ", ".join(f"{g} {tr[g]:.2f}×" for g in groups) + ": its sub-federation models "
                   "are the shared model plus one inner round on their own source, which is where most of the tree's advantage comes from.")  # fmt: skip
    return " ".join([head, *why])


def tier_row(setup: str, tier: str, t: dict[str, Any]) -> str:
    up, down = t["up"], t["down"]
    later = lambda xs: fmt_bytes(sum(xs[1:]) / len(xs[1:])) if len(xs) > 1 else "–"  # noqa: E731
    return (f"| {setup} | {tier} | {t['coordinators']:.0f} | {fmt_bytes(up[0])} | {later(up)} | "
            f"{fmt_bytes(down[0])} | {later(down)} |")  # fmt: skip


def section_c(res: dict[str, Any]) -> list[str]:
    exp = res["C"]
    lines = [
        "## C. Bytes per tier and coordinator memory",
        "",
        "Bytes: each coordinator's rounds rows (bytes_up: the updates it received; bytes_down: what its "
        "members downloaded), summed over the coordinators of a tier, for round 1 (which carries the first "
        "download of the model by members joining) and the mean of the later rounds. Tier 0 is the top "
        "federation; a sub-federation's download of its parent's version counts at the parent's tier.",
        "",
        "| setup | tier | coordinators | MB up, round 1 | MB up, later rounds | MB down, round 1 | MB down, later rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for levels, rec in ok(exp["levels"]).items():
        for tier, t in sorted(rec["tiers"].items()):
            lines.append(tier_row(f"C: {levels} level(s), 4 workers", tier, t))
    for exp_name in ("A", "B"):
        for name, rec in ok(res.get(exp_name, {}).get("arms", {})).items():
            if name in ("flat", "tree"):
                for tier, t in sorted(rec["tiers"].items()):
                    lines.append(tier_row(f"{exp_name}: {name}", tier, t))
    lines += ["", *failed(exp["levels"], "levels")]
    if exp["processes"]:
        mem = (
            "Memory: each coordinator ran as its own `python -m strata.cli coordinator` process (torch_threads 1); "
            "RSS once it listened (model loaded) and its peak (VmHWM), polled every 0.25 s. Every process "
            "carries torch and transformers, which alone take a few hundred MiB"
        )
    else:
        mem = (
            "Memory (--tiers-in-process): every coordinator and worker ran in this one process, so only the "
            "process's RSS before the run and its peak so far (VmHWM, over the whole invocation) are known, "
            "not a coordinator's own"
        )
    if exp.get("parameters"):
        mem += f"; the model's fp32 tensors are {4 * exp['parameters'] / 2**20:.0f} MiB"
    lines += [
        mem + ".",
        "",
        "| levels | coordinator | tier | RSS at start (MiB) | peak RSS (MiB) |",
        "|---|---|---|---|---|",
    ]
    for levels, rec in ok(exp["levels"]).items():
        for name, r in rec["rss"].items():
            tier = rec["tier_of"].get(name, "all")
            lines.append(f"| {levels} | {name} | {tier} | {r['start']:.0f} | {r['peak']:.0f} |")
    s = exp["settings"]
    lines += ["", f"C's training: {training_line(s, s['rounds'])} Workers en-1, en-2, pt-1, pt-2 of A; 2 levels: world → en, pt; "
              "3 levels: world → region-en, region-pt → one sub-federation per worker.", ""]  # fmt: skip
    return lines


def cuts(res: dict[str, Any]) -> list[str]:
    out = []
    if res["quick"]:
        out.append(
            "- --quick: tiny models (a 2-layer BERT, a 1-layer GPT-2) and a handful of examples; a smoke run only."
        )
    if "A" in res:
        a = args_of(res, "A")
        out.append(f"- A: {a['a_examples']} examples per worker on average (of 67,349), {a['a_steps']} steps a round for "
                   f"{plural(a['rounds_a'], 'round')}; test sets capped at their first {a['a_test']} of 872 rows.")  # fmt: skip
    if "B" in res:
        a = args_of(res, "B")
        out.append(f"- B: {plural(a['b_workers'], 'worker')} per source × {a['b_examples']} texts, {a['b_steps']} steps a round for "
                   f"{plural(a['rounds_b'], 'round')}, texts truncated at {a['max_len_b']} tokens, {a['b_test']} held-out texts per source; "
                   f"GPT-2 {a['gpt2']}.")  # fmt: skip
    if "C" in res:
        a = args_of(res, "C")
        out.append(f"- C: four workers, {a['rounds_c']} round(s) per level; no evaluation.")
    out.append("- One seed; no repetitions, so differences of a point or two are not significant.")
    return out
