"""The report of bench.scaling: accuracy against the number of clients per model and data set, the
remedies at the largest federation, and the verdict on seed 002's claim."""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import machine, pyplot, save_figure


def get(
    stored: dict[str, Any], args: argparse.Namespace, d: str, m: str, n: int, r: str = "fedavg"
) -> dict | None:
    from bench.scaling import run_key

    rec: dict | None = stored["runs"].get(run_key((d, m, n, r), args))
    return rec


def late(acc: list[float]) -> float:
    tail = acc[-2:]
    return sum(tail) / len(tail)


def chance(stored: dict[str, Any], dataset: str) -> str:
    return {"sst2": "0.51 (majority class of the test set)", "reuters_c50": "0.02 (50 authors)"}.get(
        dataset, "–"
    )


def floor(dataset: str) -> float:
    """Accuracy at or below which a federation is at chance (one class) on the data set."""
    return 0.55 if dataset == "sst2" else 0.05


LEARNS = 0.05  # a model learned the task when, with the fewest clients, it ends this far above floor()


def albert_part(drop: tuple[float, float] | None, at: int | None, d: str, lo: int, hi: int) -> str:
    """ALBERT's line in the verdict: its accuracy from the fewest to the most clients, and where it ends at
    chance; or that it barely learns the task even with the fewest clients, so its scaling says little."""
    if drop is None:
        return ""
    first, last = drop
    text = f", ALBERT {first:.3f} → {last:.3f}"
    if first < floor(d) + LEARNS:
        return text + (
            f" (it barely learns the task even with {lo} client{'s' if lo != 1 else ''}: within "
            f"{100 * LEARNS:.0f} points of the chance line, so its {hi}-client result says little)"
        )
    return text + (f" (at chance from {at} clients)" if at else "")


def stalls_at(stored: dict[str, Any], args: argparse.Namespace, d: str, m: str) -> int | None:
    """The fewest clients at which model m ends at chance on d (None: it never does)."""
    for n in sorted(args.clients):
        rec = get(stored, args, d, m, n)
        if rec and late(rec["accuracy"]) <= floor(d):
            return n
    return None


def verdict(stored: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Does the smaller model degrade or collapse with many clients where MiniLM does not (or later)?"""
    lines = []
    lo, hi = min(args.clients), max(args.clients)
    for d in args.datasets:
        drops = {}
        for m in args.models:
            a, b = get(stored, args, d, m, lo), get(stored, args, d, m, hi)
            if a and b:
                drops[m] = (late(a["accuracy"]), late(b["accuracy"]))
        if "student" not in drops or "minilm" not in drops:
            lines.append(
                f"- {d}: not measured yet (the student and MiniLM at {lo} and {hi} clients are needed)."
            )
            continue
        (s1, sn), (m1, mn) = drops["student"], drops["minilm"]
        ds, dm = s1 - sn, m1 - mn
        at = {m: stalls_at(stored, args, d, m) for m in args.models}
        s_at, m_at = at["student"], at["minilm"]
        if s_at is not None and (m_at is None or s_at < m_at):
            word = (
                f"**{'reproduced' if m_at is None else 'partly reproduced'}** (the student ends at chance from "
                f"{s_at} clients, MiniLM {'never' if m_at is None else f'from {m_at}'})"
            )
        elif ds > dm + 0.02:
            word = "**partly reproduced** (the student degrades more, without ending at chance first)"
        else:
            word = "**not reproduced**"
        lines.append(
            f"- {d}: {word}. From {lo} to {hi} clients the student goes {s1:.3f} → {sn:.3f} ({100 * -ds:+.1f} "
            f"points), MiniLM {m1:.3f} → {mn:.3f} ({100 * -dm:+.1f} points)"
            + albert_part(drops.get("albert"), at.get("albert"), d, lo, hi)
            + "."
        )
        for r in args.remedies:
            rec, plain = (
                get(stored, args, d, "student", args.remedy_clients, r),
                get(stored, args, d, "student", args.remedy_clients),
            )
            if rec and plain and "student" in args.remedy_models:
                lines.append(
                    f"  - {r} at {args.remedy_clients} clients: student {late(plain['accuracy']):.3f} → "
                    f"{late(rec['accuracy']):.3f} ({100 * (late(rec['accuracy']) - late(plain['accuracy'])):+.1f} points)."
                )
    lines.append(
        "- Rule: reproduced when the student ends at chance (one class: ≤ 0.55 on sst2, ≤ 0.05 on reuters_c50) "
        "with many clients and MiniLM never does; partly when the student gets there at fewer clients than "
        "MiniLM, or loses at least 2 points more than MiniLM from the fewest to the most clients; not "
        "reproduced otherwise (accuracy: mean of the last two rounds)."
    )
    return lines


def report(stored: dict[str, Any], args: argparse.Namespace) -> str:
    steps = args.pool // args.batch_size
    lines = [
        "# Scaling to 32 clients (seed 002): accuracy against the number of clients, per model",
        "",
        f"`python -m bench.scaling{' --smoke' if args.smoke else ''}` ({machine()}; "
        f"{sum(r['minutes'] for r in stored['runs'].values()):.0f} min of federations stored)",
        "",
        f"{args.rounds} rounds; a pool of {args.pool} training examples per data set shared out IID; every client "
        f"one local epoch per round, batch {args.batch_size}, AdamW lr {args.lr:g}: about {steps} optimiser steps "
        "per round in all, whatever the number of clients; FedAvg; fp32 both ways. Each federation is a "
        "coordinator process and `strata simulate` with N virtual workers over gRPC; the coordinator evaluates "
        f"every round on {args.eval_n} test examples. Accuracy: mean of the last two rounds. Seed {args.seed}.",
        "",
        "Models (no pretrained DistilBERT or ALBERT checkpoint is available offline, so both are made from "
        "MiniLM-L6 with `strata adapt`): **minilm** is MiniLM-L6 itself (BERT architecture, 6 layers, 22.7M "
        "parameters); **student** keeps MiniLM's layers 0, 2 and 4 (`--every-other-layer`, DistilBERT's "
        "initialisation; unlike DistilBERT it keeps BERT's token-type embeddings and pooler, and it is not "
        "distilled); **albert** is the ALBERT architecture (one transformer layer shared by all 6 depths, "
        "`--albert`) with MiniLM's embeddings, pooler and head and the mean of its six layers as the shared "
        "layer: a partly pretrained ALBERT, which starts weaker than a real one.",
        "",
    ]
    for d in args.datasets:
        lines += [f"## {d} (chance: {chance(stored, d)})", ""]
        lines.append("| model | initial | " + " | ".join(f"{n} clients" for n in args.clients) + " |")
        lines.append("|---|---|" + "---|" * len(args.clients))
        for m in args.models:
            init = stored["initial"].get(f"{d}/{m}/e{args.eval_n}-s{args.seed}")
            cells = []
            for n in args.clients:
                rec = get(stored, args, d, m, n)
                cells.append(f"{late(rec['accuracy']):.3f}" if rec else "–")
            lines.append(f"| {m} | {init:.3f} | " if init is not None else f"| {m} | – | ")
            lines[-1] += " | ".join(cells) + " |"
        if args.remedies and args.remedy_models:
            lines += ["", f"At {args.remedy_clients} clients:", ""]
            lines.append("| model | fedavg | " + " | ".join(args.remedies) + " |")
            lines.append("|---|---|" + "---|" * len(args.remedies))
            for m in args.remedy_models:
                cells = []
                for r in ["fedavg", *args.remedies]:
                    rec = get(stored, args, d, m, args.remedy_clients, r)
                    cells.append(f"{late(rec['accuracy']):.3f}" if rec else "–")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Accuracy per round:", "", "| model | clients | remedy | " + " | ".join(
            f"r{i}" for i in range(1, args.rounds + 1)) + " | minutes |"]  # fmt: skip
        lines.append("|---|---|---|" + "---|" * args.rounds + "---|")
        for m in args.models:
            for n in args.clients:
                rec = get(stored, args, d, m, n)
                if rec:
                    acc = " | ".join(f"{a:.3f}" for a in rec["accuracy"])
                    lines.append(f"| {m} | {n} | fedavg | {acc} | {rec['minutes']:.1f} |")
        for m in args.remedy_models:
            for r in args.remedies:
                rec = get(stored, args, d, m, args.remedy_clients, r)
                if rec:
                    acc = " | ".join(f"{a:.3f}" for a in rec["accuracy"])
                    lines.append(f"| {m} | {args.remedy_clients} | {r} | {acc} | {rec['minutes']:.1f} |")
        lines.append("")
    name = "scaling-smoke" if args.smoke else "scaling"
    lines += ["## Verdict", "", *verdict(stored, args), "", f"![accuracy against clients]({name}.png)", ""]
    return "\n".join(lines)


def plot(stored: dict[str, Any], args: argparse.Namespace, path: Any) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(args.datasets), figsize=(5.5 * len(args.datasets), 5.2), squeeze=False)
    for ax, d in zip(axes[0], args.datasets, strict=True):
        for m in args.models:
            pts = [(n, late(rec["accuracy"])) for n in args.clients if (rec := get(stored, args, d, m, n))]
            if pts:
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
                for r, marker in zip(args.remedies, "s^", strict=False):
                    rec = get(stored, args, d, m, args.remedy_clients, r)
                    if rec:
                        ax.scatter([args.remedy_clients], [late(rec["accuracy"])], marker=marker,
                                   color=line.get_color(), label=f"{m} + {r}")  # fmt: skip
        ax.axhline(floor(d), ls=":", color="grey", lw=1, label="at chance below (the verdict's line)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients (same total steps per round)")
        ax.set_ylabel("test accuracy, last two rounds")
        ax.set_title(d)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2
        )  # below: no curve hidden
    save_figure(fig, path)
    return True
