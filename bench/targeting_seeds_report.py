"""The report of bench.targeting_seeds: per data set and attack, each policy's accuracy over the seeds,
paired differences between policies, the verdict on FedTLU's two claims, and the figure."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine, pyplot, save_figure

CLEAN = "none"
COLORS = {"full": "C0", "random": "C1", "fedtlu": "C2", "agreement": "C3"}


def late(acc: Sequence[float]) -> float:
    """Mean test accuracy over the last three rounds (less noisy than the final one)."""
    tail = list(acc[-3:])
    return sum(tail) / len(tail)


def area(acc: Sequence[float]) -> float:
    """Mean test accuracy over all rounds: higher when a policy gets there sooner."""
    return sum(acc) / len(acc)


def spread(values: Sequence[float]) -> str:
    """'mean ± sd' in points (sd over seeds; '±0' with one seed)."""
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * sd:.1f}"


def arms(study: Any, args: argparse.Namespace, dataset: str, attack: str, policy: str) -> dict[int, dict]:
    """The stored runs of one (data set, attack, policy) under the settings of `args`, by seed."""
    from bench.targeting_seeds import arm_key

    out = {}
    for s in args.seeds:
        rec = study.runs.get(arm_key(dataset, s, attack, policy, args))
        if rec is not None:
            out[s] = rec
    return out


def paired(a: dict[int, dict], b: dict[int, dict], metric: Any) -> tuple[list[float], int]:
    """Per-seed differences metric(a) − metric(b) over the seeds both have, and how many are > 0."""
    diffs = [metric(a[s]["accuracy"]) - metric(b[s]["accuracy"]) for s in sorted(a) if s in b]
    return diffs, sum(d > 0 for d in diffs)


def diff_cell(diffs: list[float], wins: int) -> str:
    if not diffs:
        return "–"
    return f"{spread(diffs)} ({wins}/{len(diffs)} seeds > 0)"


def policy_table(
    study: Any, args: argparse.Namespace, dataset: str, attack: str, policies: Sequence[str]
) -> list[str]:
    full = arms(study, args, dataset, attack, "full")
    clean_of = {p: arms(study, args, dataset, CLEAN, p) for p in policies}
    lines = [
        "| policy | seeds | final acc | mean acc, last 3 rounds | mean acc, all rounds | per seed, last 3 "
        "| upstream vs full | last 3 vs clean run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in policies:
        runs = arms(study, args, dataset, attack, p)
        if not runs:
            lines.append(f"| {p} | 0 | – | – | – | – | – | – |")
            continue
        recs = [runs[s] for s in sorted(runs)]
        up = [sum(r["bytes_up"]) for r in recs]
        fup = [sum(full[s]["bytes_up"]) for s in sorted(runs) if s in full]
        ratio = f"{statistics.fmean(up) / statistics.fmean(fup):.2f}×" if fup else "–"
        if attack != CLEAN:
            drop, _ = paired(runs, clean_of[p], late)
            vs_clean = spread(drop) if drop else "–"
        else:
            vs_clean = "–"
        lines.append(
            f"| {p} | {len(recs)} | {spread([r['accuracy'][-1] for r in recs])} | "
            f"{spread([late(r['accuracy']) for r in recs])} | {spread([area(r['accuracy']) for r in recs])} | "
            + ", ".join(f"{100 * late(r['accuracy']):.1f}" for r in recs)
            + f" | {ratio} | {vs_clean} |"
        )
    return lines


def pair_table(
    study: Any, args: argparse.Namespace, dataset: str, attack: str, pairs: Sequence[tuple[str, str]]
) -> list[str]:
    lines = [
        "| comparison | last 3 rounds, points | all rounds, points |",
        "|---|---|---|",
    ]
    for a, b in pairs:
        ra, rb = arms(study, args, dataset, attack, a), arms(study, args, dataset, attack, b)
        lines.append(
            f"| {a} − {b} | {diff_cell(*paired(ra, rb, late))} | {diff_cell(*paired(ra, rb, area))} |"
        )
    return lines


def verdict(per_dataset: list[tuple[list[float], int]], what: str) -> str:
    """reproduced: better in every seed everywhere; partly: somewhere better on average and in most seeds;
    else not."""
    have = [(d, w) for d, w in per_dataset if d]
    if not have:
        return f"{what}: not measured yet."
    if all(w == len(d) for d, w in have) and len(have) == len(per_dataset):
        word = "**reproduced**"
    elif any(statistics.fmean(d) > 0 and 2 * w > len(d) for d, w in have):
        word = "**partly reproduced**"
    else:
        word = "**not reproduced**"
    parts = [f"{100 * statistics.fmean(d):+.1f} points ({w}/{len(d)} seeds better)" for d, w in have]
    return f"{what}: {word} ({'; '.join(parts)})."


def report(study: Any, args: argparse.Namespace, minutes: float) -> str:
    seeds = args.seeds
    n_seeds = len(seeds)
    cmd = "python -m bench.targeting_seeds" + (" --smoke" if args.smoke else "")
    stored = [r for r in study.runs.values()]
    lines = [
        f"# FedTLU with several seeds: targeted layer policies, non-IID (Dirichlet α = {args.alpha:g}), "
        f"{args.workers} workers",
        "",
        f"`{cmd}` ({machine()}; this invocation {minutes:.0f} min, "
        f"{sum(r.get('minutes', 0) for r in stored):.0f} min of training stored in all)",
        "",
        f"Each arm: {args.rounds} rounds; every worker takes {args.steps} AdamW steps of {args.batch_size} × "
        f"{args.max_len} tokens per round (lr {args.lr:g}); a pool of {args.pool} training examples per data "
        f"set and seed, split by Dirichlet(α = {args.alpha:g}) over labels; test accuracy on {args.eval_n} test "
        f"examples after every round. Targeted policies train k = {args.blocks} blocks besides the head per "
        f"round, every block at least every {args.refresh_every} rounds, all blocks in round 1. "
        f"Seeds {', '.join(map(str, seeds))}: a seed draws the pool, the test sample, the split, the head "
        "and the local shuffles. Accuracies are in points, mean ± standard deviation over the seeds; "
        "differences are paired (same seed, same data). Budget: fewer rounds and steps than the single-seed "
        "S3 run (12 rounds × 8 steps) so that three seeds, two data sets and the poisoned arms fit.",
        "",
    ]
    claims = []
    for dataset in args.datasets:
        lines += [f"## {dataset}, no attack", ""]
        lines += policy_table(study, args, dataset, CLEAN, args.policies)
        lines += ["", "Paired differences (mean ± sd over seeds):", ""]
        pairs = [
            (p, "random") for p in ("fedtlu", "agreement") if p in args.policies and "random" in args.policies
        ]
        pairs += [(p, "full") for p in args.policies if p != "full"]
        lines += pair_table(study, args, dataset, CLEAN, pairs)
        lines.append("")
        if "fedtlu" in args.policies and "random" in args.policies:
            claims.append(
                paired(
                    arms(study, args, dataset, CLEAN, "fedtlu"),
                    arms(study, args, dataset, CLEAN, "random"),
                    late,
                )
            )
    robust = []
    for attack in args.attacks:
        ds = args.attack_dataset
        lines += [
            f"## {ds}, worker 0 of {args.workers} sends {'+' if attack == 'scale' else '−'}{args.scale:g}·Δ ({attack}), no defence",
            "",
        ]
        lines += policy_table(study, args, ds, attack, args.attack_policies)
        lines += ["", "Paired differences under the attack (mean ± sd over seeds):", ""]
        pairs = [(p, "full") for p in args.attack_policies if p != "full"]
        lines += pair_table(study, args, ds, attack, pairs)
        lines.append("")
        for p in ("fedtlu", "agreement"):
            if p in args.attack_policies:
                robust.append(
                    (
                        p,
                        attack,
                        paired(arms(study, args, ds, attack, p), arms(study, args, ds, attack, "full"), late),
                    )
                )
    lines += ["## Verdicts", ""]
    lines.append(
        "- "
        + verdict(
            claims,
            "FedTLU's first claim, targeted layers (its score) beat random layer choice in non-IID settings "
            f"(mean accuracy of the last three rounds, fedtlu − random, on {', '.join(args.datasets)})",
        )
    )
    for p in ("fedtlu", "agreement"):
        mine = [r for q, _, r in robust if q == p]
        if mine:
            lines.append(
                "- "
                + verdict(
                    mine,
                    f"Its second claim, freezing layers avoids poisoned updates: {p} − full under "
                    f"{' and '.join(args.attacks)} (last three rounds)",
                )
            )
    lines += [
        "",
        f"A verdict reads **reproduced** when the targeted policy is better in every seed ({n_seeds}) of every "
        "comparison, **partly reproduced** when in at least one it is better on average and in most seeds, "
        "**not reproduced** otherwise.",
        "",
        "![mean accuracy per round, band: the seeds' range](targeting-seeds"
        + ("-smoke" if args.smoke else "")
        + ".png)",
        "",
    ]
    return "\n".join(lines)


def plot(study: Any, args: argparse.Namespace, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    panels = [(d, CLEAN, args.policies) for d in args.datasets]
    panels += [(args.attack_dataset, a, args.attack_policies) for a in args.attacks]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (dataset, attack, policies) in zip(axes[0], panels, strict=True):
        for p in policies:
            runs = list(arms(study, args, dataset, attack, p).values())
            if not runs:
                continue
            rounds = len(runs[0]["accuracy"])
            xs = list(range(0, rounds + 1))
            curves = [[r["initial_accuracy"], *r["accuracy"]] for r in runs]
            mean = [statistics.fmean(c[i] for c in curves) for i in xs]
            lo = [min(c[i] for c in curves) for i in xs]
            hi = [max(c[i] for c in curves) for i in xs]
            color = COLORS.get(p)  # one colour per policy in every panel
            ax.plot(xs, mean, marker="o", ms=3, color=color, label=f"{p} ({len(runs)} seeds)")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
        ax.set_title(dataset + ("" if attack == CLEAN else f", {attack} ×{args.scale:g}"), fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
    save_figure(fig, path, axes[0])
    return True
