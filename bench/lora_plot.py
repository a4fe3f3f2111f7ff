"""The figure of bench.lora: test accuracy per round (SST-2, mixed ranks) and the instruction study's
held-out perplexity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import pyplot, save_figure
from bench.report_parts import ok, ppl


def plot(res: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import MaxNLocator

    panels = []  # (title, y label, [(arm, rounds, values)])
    for key, title in (("sst2", "1: SST-2 test accuracy"), ("ranks", "2: mixed ranks, test accuracy")):
        if key in res:
            arms = ok(res[key]["arms"]).items()
            acc = [(n, [x["test_accuracy"] for x in r["rounds"]]) for n, r in arms]
            panels.append((title, "accuracy", [(n, list(range(1, len(ys) + 1)), ys) for n, ys in acc]))
    if "instruct" in res:
        exp = res["instruct"]
        p0 = ppl(exp["round0"]["loss"])
        ps = [(n, [p0] + [ppl(x["test_loss"]) for x in r["rounds"]]) for n, r in ok(exp["arms"]).items()]
        title = "3: held-out response perplexity (round 0: the base)"
        panels.append((title, "perplexity", [(n, list(range(len(ys))), ys) for n, ys in ps]))
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4.5), squeeze=False)
    for ax, (title, ylabel, curves) in zip(axes[0], panels, strict=False):
        for i, (name, xs, ys) in enumerate(curves):
            ax.plot(xs, ys, marker="o", ms=3, color=f"C{i}", label=name)
        ax.set(
            title=title, xlabel="round", ylabel=ylabel, yscale="log" if ylabel == "perplexity" else "linear"
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=100)
    return True
