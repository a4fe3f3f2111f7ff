"""bench.privacy's figure: accuracy and ε per round of study 1, perplexity per source of study 2."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common import pyplot, save_figure
from bench.report_parts import ok, ppl


def plot(res: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    style = lambda r: "-" if not r.get("dp") else (":" if r.get("adaptive") else "--")  # noqa: E731
    if "accuracy" in res:
        arms = ok(res["accuracy"]["arms"])
        ax = axes[0][0]
        ax.set_visible(True)
        for i, (name, r) in enumerate(arms.items()):
            ys = r["per_round"]["accuracy"]
            ax.plot(range(1, len(ys) + 1), ys, style(r), marker="o", ms=3, color=f"C{i}", label=name)
        ax.axhline(res["accuracy"]["majority"], color="grey", lw=0.8)
        ax.set(title="1: test accuracy per round", xlabel="round", ylabel="accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6)
        ax = axes[0][1]
        ax.set_visible(True)
        for k, scope in enumerate(("full", "targeted")):
            base = [r for r in arms.values() if r["scope"] == scope and not r.get("dp")]
            for clip, mark in (("fixed", "o"), ("adaptive", "s")):
                pts = sorted((r["epsilon"], r["per_round"]["accuracy"][-1]) for r in arms.values()
                             if r["scope"] == scope and r.get("dp") and r["adaptive"] == (clip == "adaptive"))  # fmt: skip
                if pts:
                    ls = "--" if clip == "fixed" else ":"
                    ax.plot(
                        *zip(*pts, strict=True), ls, marker=mark, color=f"C{k}", label=f"{scope}, {clip} clip"
                    )
            if base:
                ax.axhline(base[0]["per_round"]["accuracy"][-1], color=f"C{k}", lw=1, label=f"{scope}, no DP")
        ax.axhline(res["accuracy"]["majority"], color="grey", lw=0.8, label="majority class")
        eps = sorted({float(e) for e in res["accuracy"]["z"]})
        ax.set_xscale("log")
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.minorticks_off()
        ax.set(title="1: final accuracy against the budget ε", xlabel="ε", ylabel="accuracy")
        ax.legend(fontsize=7)
        ax = axes[0][2]
        ax.set_visible(True)
        for i, (name, r) in enumerate(arms.items()):
            if r.get("dp"):
                ys = [x["clip"] for x in r["rounds"]]
                ax.plot(range(1, len(ys) + 1), ys, style(r), marker="o", ms=3, color=f"C{i}", label=name)
        ax.set(title="1: clip S per round", xlabel="round", ylabel="S", yscale="log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6)
    if "worldlm" in res:
        arms = ok(res["worldlm"]["arms"])
        for ax, g in zip(axes[1], res["worldlm"]["groups"], strict=False):
            ax.set_visible(True)
            cap = 10.0 * float(res["worldlm"].get("vocab") or 1e4)  # far beyond guessing: drawn at the top
            for i, (name, r) in enumerate(arms.items()):
                ys = [min(ppl(x), cap) if math.isfinite(ppl(x)) else cap for x in r["per_round"][g]["loss"]]
                ax.plot(range(1, len(ys) + 1), ys, style(r), marker="o", ms=3, color=f"C{i}", label=name)
            ax.set(
                title=f"2: perplexity, {g} (top line: overflowed)",
                xlabel="round",
                ylabel="perplexity",
                yscale="log",
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=6)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=100)
    return True
