"""The report of bench.gap: each recipe's accuracy after every round against centralised training, per α,
over seeds; the cross-check with Flower's harness; and whether the 1-point goal is met."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from bench.common import machine, pyplot, save_figure

#: RESULTS-flower.md, reference workload, after rounds / epochs 1-5
FLOWER_FEDAVG = (0.5287, 0.5161, 0.5631, 0.7339, 0.7695)
FLOWER_CENTRAL = (0.8016, 0.8291, 0.8280, 0.8268, 0.8406)


def fmt(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.{digits}f} ± {100 * sd:.{digits}f}"


def fed(gap: Any, recipe: Any, alpha: float) -> dict[int, dict[str, Any]]:
    found = {s: gap.stored["fed"].get(gap.key("fed", recipe.text, alpha, s)) for s in gap.args.seeds}
    return {s: r for s, r in found.items() if r}


def central(gap: Any, arch: str) -> dict[int, dict[str, Any]]:
    found = {s: gap.stored["central"].get(gap.key("central", arch, s)) for s in gap.args.seeds}
    return {s: r for s, r in found.items() if r}


def gaps(gap: Any, recipe: Any, alpha: float, arch: str) -> list[float]:
    """Per seed: centralised accuracy after its last epoch minus the recipe's after its last round."""
    runs, cen = fed(gap, recipe, alpha), central(gap, arch)
    return [cen[s]["accuracy"][-1] - runs[s]["accuracy"][-1] for s in sorted(runs) if s in cen]


def report(gap: Any, args: argparse.Namespace, name: str) -> str:
    lines = [
        "# The gap to centralised training: Strata's server-side recipes on the reference workload",
        "",
        f"`python -m bench.gap{' --smoke' if args.smoke else ''}` ({machine()}; seeds "
        f"{', '.join(map(str, args.seeds))})",
        "",
        f"WORKLOAD.md's federation ({gap.wl.clients} clients × {gap.wl.per_client}, 1 local epoch of batch "
        f"{gap.wl.batch_size}, AdamW lr {gap.wl.lr:g} fresh each round, {args.rounds} rounds) against its "
        f"centralised training ({args.rounds} epochs of the same examples, one AdamW). Gap: centralised accuracy "
        "minus the federation's after the last round, in points (mean ± sd over seeds; positive: the "
        "federation is behind). Seed 0 is WORKLOAD.md's seeds.",
        "",
    ]
    best: dict[float, tuple[str, float]] = {}
    for alpha in args.alphas:
        lines += [f"## α = {alpha:g}", ""]
        lines.append(
            "| recipe | seeds | " + " | ".join(f"r{i}" for i in range(1, args.rounds + 1))
            + " | final | gap, own architecture | gap to plain centralised | vs fedavg |"
        )  # fmt: skip
        lines.append("|---|---|" + "---|" * args.rounds + "---|---|---|---|")
        base = next(fed(gap, r, alpha) for r in args.recipe_list if r.text == "fedavg")
        for recipe in args.recipe_list:
            runs = fed(gap, recipe, alpha)
            if not runs:
                lines.append(f"| {recipe.text} | 0 |" + " – |" * (args.rounds + 4))
                continue
            per_round = [
                statistics.fmean(r["accuracy"][i] for r in runs.values()) for i in range(args.rounds)
            ]
            own = gaps(gap, recipe, alpha, recipe.architecture)
            plain = gaps(gap, recipe, alpha, "plain")
            paired = [runs[s]["accuracy"][-1] - base[s]["accuracy"][-1] for s in runs if s in base]
            lines.append(
                f"| {recipe.text} | {len(runs)} | " + " | ".join(f"{a:.4f}" for a in per_round)
                + f" | {fmt([r['accuracy'][-1] for r in runs.values()], 2)} | {fmt(own)} | {fmt(plain)} | "
                + (f"{fmt(paired)} |" if recipe.text != "fedavg" else "– |")
            )  # fmt: skip
            if own and plain:  # judged against the stronger of the two centralised runs
                g = max(statistics.fmean(own), statistics.fmean(plain))
                if alpha not in best or g < best[alpha][1]:
                    best[alpha] = (recipe.text, g)
        lines.append("")
    lines += ["## Centralised training", "", "| architecture | seeds | "
              + " | ".join(f"epoch {e}" for e in range(1, args.rounds + 1)) + " |",
              "|---|---|" + "---|" * args.rounds]  # fmt: skip
    for arch in sorted({r.architecture for r in args.recipe_list}):
        runs = central(gap, arch)
        if runs:
            cells = [fmt([r["accuracy"][i] for r in runs.values()], 2) for i in range(args.rounds)]
            lines.append(f"| {arch} | {len(runs)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += cross_check(gap, args)
    lines += ["## Verdict", ""]
    for alpha in args.alphas:
        if alpha in best:
            text, g = best[alpha]
            met = "**met**" if g <= 0.01 else "**not met**"
            lines.append(
                f"- α = {alpha:g}: the closest recipe is **{text}**, {100 * g:.1f} points behind the stronger of "
                f"centralised training of its architecture and of the plain model: the goal (within 1 point) is {met}."
            )
    lines += ["", f"![accuracy per round against centralised]({name}.png)", ""]
    return "\n".join(lines)


def cross_check(gap: Any, args: argparse.Namespace) -> list[str]:
    """Seed 0's FedAvg at α = 0.5 and plain centralised training against Flower's harness."""
    if args.smoke or args.rounds != 5 or 0 not in args.seeds:
        return []
    fedavg = next((r for r in args.recipe_list if r.text == "fedavg"), None)
    ours = fed(gap, fedavg, 0.5).get(0) if fedavg and 0.5 in args.alphas else None
    cen = central(gap, "plain").get(0)
    lines = ["Cross-check with Flower's harness (RESULTS-flower.md, same data, seeds and initial model):", ""]
    if ours:
        same = sum(abs(a - b) < 5e-5 for a, b in zip(ours["accuracy"], FLOWER_FEDAVG, strict=False))
        lines.append(
            f"- FedAvg at α = 0.5, rounds 1–5: ours {', '.join(f'{a:.4f}' for a in ours['accuracy'])}; Flower's "
            f"{', '.join(f'{a:.4f}' for a in FLOWER_FEDAVG)} ({same} of 5 equal to 4 decimals)."
        )
    if cen:
        lines.append(
            f"- Centralised, epochs 1–5: ours {', '.join(f'{a:.4f}' for a in cen['accuracy'])}; Flower's harness "
            f"{', '.join(f'{a:.4f}' for a in FLOWER_CENTRAL)} (a different loop with the same recipe: equal "
            "seeds, not necessarily equal batches)."
        )
    return [*lines, ""]


def plot(gap: Any, args: argparse.Namespace, path: Any) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(args.alphas), figsize=(5.5 * len(args.alphas), 4), squeeze=False)
    for ax, alpha in zip(axes[0], args.alphas, strict=True):
        cen = central(gap, "plain")
        if cen:
            xs = list(range(1, args.rounds + 1))
            mean = [statistics.fmean(r["accuracy"][i] for r in cen.values()) for i in range(args.rounds)]
            ax.plot(
                xs, mean, "k--", label=f"centralised (plain, {len(cen)} seed{'s' if len(cen) > 1 else ''})"
            )
        for recipe in args.recipe_list:
            runs = fed(gap, recipe, alpha)
            if runs:
                mean = [statistics.fmean(r["accuracy"][i] for r in runs.values()) for i in range(args.rounds)]
                seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
                ax.plot(range(1, args.rounds + 1), mean, marker="o", ms=3, label=f"{recipe.text} ({seeds})")
        ax.set_title(f"α = {alpha:g}")
        ax.set_xticks(range(1, args.rounds + 1))
        ax.set_xlabel("round (centralised: epoch)")
        ax.set_ylabel("test accuracy")
    save_figure(fig, path, axes[0])
    return True
