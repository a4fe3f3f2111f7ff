"""The figure of bench.worldlm: accuracy (A), bytes per tier (C) and perplexity (B) per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import pyplot, save_figure
from bench.report_parts import MB, ok, ppl


def plot(res: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    if "A" in res:
        for ax, g in zip(axes[0], res["A"]["groups"], strict=False):
            ax.set_visible(True)
            for i, (name, rec) in enumerate(ok(res["A"]["arms"]).items()):
                ys = rec["per_round"][g]["accuracy"]
                ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, color=f"C{i}", label=name)
            ax.set(title=f"A: accuracy, {g}", xlabel="round", ylabel="test accuracy")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if "C" in res:
        ax = axes[0][2]
        ax.set_visible(True)
        labels, up, down = [], [], []
        for levels, rec in ok(res["C"]["levels"]).items():
            for tier, t in sorted(rec["tiers"].items()):
                labels.append(f"{levels}L t{tier}")
                up.append(sum(t["up"]) / len(t["up"]) / MB)
                down.append(sum(t["down"]) / len(t["down"]) / MB)
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], up, 0.4, label="up")
        ax.bar([x + 0.2 for x in xs], down, 0.4, label="down")
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set(title="C: MB per round per tier (L levels, tier t)", ylabel="MB, mean of the rounds")
        ax.legend(fontsize=8)
    if "B" in res:
        for ax, g in zip(axes[1], res["B"]["groups"], strict=False):
            ax.set_visible(True)
            for i, (name, rec) in enumerate(ok(res["B"]["arms"]).items()):
                ys = [ppl(x) for x in rec["per_round"][g]["loss"]]
                ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, color=f"C{i}", label=name)
            ax.set(title=f"B: perplexity, {g}", xlabel="round", ylabel="perplexity", yscale="log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    save_figure(fig, path, dpi=100)
    return True
