"""The report of bench.optimizers: optimizers.md (the tables per α, the verdict on which settings close
the gap to centralised training, the note on τ against √v, the cross-check with the Flower harness, what
the plan cut, the machine and command) and optimizers.png (accuracy per round), from an `Outcome`."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, pyplot, save_figure
from bench.optimizers_data import REFERENCE, Workload
from bench.optimizers_plan import Outcome, final_accuracy, rounds_of
from bench.optimizers_runs import DEFAULT_LRS, METHODS, Study, plural, server_lrs
from strata.optimizers import ServerOptimizer


def central_at(central: dict[str, Any], steps: int) -> float:
    return float(central["accuracy"][central["steps"].index(steps)])


def central_curve(central: dict[str, Any], wl: Workload, rounds: int) -> list[float]:
    """Centralised accuracy after 1..rounds round-equivalents (steps_per_round steps each)."""
    return [central_at(central, r * wl.steps_per_round) for r in range(1, rounds + 1)]


def first_reaching(curve: Sequence[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(curve) if a >= target), None)


def signed_points(x: float) -> str:
    return f"{100 * x:+.2f}".replace("-", "−")


def verdict(out: Outcome, study: Study) -> str:
    """Which settings close the gap to centralised training most, and by how much (from the numbers)."""
    args, wl = study.args, study.wl
    assert out.central is not None
    parts = []
    for i, alpha in enumerate(args.alphas):
        rounds = rounds_of(args, i)
        runs = [(s, r["accuracy"][rounds - 1]) for s, r in out.final[alpha] if r]
        if not runs:
            continue
        c = central_at(out.central, rounds * wl.steps_per_round)
        best, acc = max(runs, key=lambda sr: sr[1])
        text = (
            f"At α = {alpha:g} ({plural(rounds, 'round')}), centralised training with the same {rounds * wl.steps_per_round} "
            f"optimiser steps reaches {c:.4f}. "
        )
        fedavg = next((a for s, a in runs if s.method == "fedavg"), None)
        if fedavg is not None:
            text += f"FedAvg ends at {fedavg:.4f}, {signed_points(fedavg - c)} points from it. "
        text += f"The closest setting is **{best.label()} with server η = {best.lr:g}** at {acc:.4f} ({signed_points(acc - c)} points"
        if fedavg is not None and best.method != "fedavg":
            gap = c - fedavg
            closed = acc - fedavg
            share = f", {100 * closed / gap:.0f} % of FedAvg's gap" if gap > 0 else ""
            text += f"): it closes {100 * closed:.2f} points{share}. "
        else:
            text += "). "
        others = sorted((sr for sr in runs if sr[0] != best), key=lambda sr: -sr[1])
        if others:
            text += (
                "Then "
                + ", ".join(f"{s.label()} (η = {s.lr:g}) {signed_points(a - c)}" for s, a in others)
                + "."
            )
        parts.append(text)
    return "\n\n".join(parts)


def cuts(out: Outcome, study: Study) -> list[str]:
    """What this plan leaves out of the full study (every method at every α for 10 rounds, swept)."""
    args = study.args
    lines = []
    for i, alpha in enumerate(args.alphas):
        r = rounds_of(args, i)
        methods = ", ".join(s.label() for s, _ in out.final[alpha])
        lines.append(
            f"- α = {alpha:g}: {plural(r, 'round')}{'' if r >= 10 else ' (not 10)'}; methods: {methods}."
        )
    missing = [m for m in METHODS if m not in args.methods]
    if missing:
        lines.append(f"- Not run: {', '.join(missing)}.")
    if len(args.alphas) > 1:
        lines.append(
            f"- Later α use the server learning rates chosen at α = {args.alphas[0]:g} (no sweep of their own)"
            + (f"; `best` was {out.best}." if out.best else ".")
        )
    lrs = {**server_lrs(DEFAULT_LRS), **args.server_lrs}
    swept = [f"{m} η ∈ {{{', '.join(f'{s.lr:g}' for s, _ in runs)}}}" for m, runs in out.sweeps.items()]
    if swept:
        lines.append(
            f"- Server learning-rate sweep over {min(args.sweep_rounds, rounds_of(args, 0))} rounds only: "
            + "; ".join(swept)
            + " (a short sweep favours rates that learn fast early)."
        )
    fixed = [
        f"{m} uses {v}'s rate" if isinstance(v, str) else f"{m} η = {v[0]:g}"
        for m, v in lrs.items()
        if m in args.methods and m not in ("fedavg", "fedprox") and m not in out.sweeps
    ]
    if fixed:
        lines.append(f"- Server learning rate not swept: {'; '.join(fixed)}.")
    d = ServerOptimizer()
    same = (args.momentum, args.beta1, args.beta2, args.tau) == (d.momentum, d.beta1, d.beta2, d.tau)
    lines.append(
        f"- Not swept{' (the product defaults)' if same else ''}: server momentum {args.momentum:g} (fedavgm); "
        f"β1 {args.beta1:g}, β2 {args.beta2:g}, τ {args.tau:g} (adaptive methods). FedProx: one μ = {args.prox_mu:g}."
    )
    lines.append("- One seed per setting, no repetitions: the run-to-run spread is not measured.")
    if not args.central_epochs:
        lines.append(
            "- The centralised run stops at the federated runs' step count; WORKLOAD.md's 5-epoch convention "
            f"({5 * study.wl.steps_per_epoch} steps) was not run (--central-epochs 5 adds it)."
        )
    return lines


def flower_reference() -> tuple[list[float], list[float]]:
    """Flower's FedAvg accuracy per round and its centralised accuracy per epoch (RESULTS-flower.md, the
    "Side by side" table: α = 0.5), or two empty lists without that file."""
    path = REFERENCE / "RESULTS-flower.md"
    if not path.is_file():
        return [], []
    text = path.read_text().split("## Side by side", 1)[-1]
    rows = re.findall(
        r"^\|\s*(\d+)\s*\|\s*([0-9.]+)\s*\|\s*[0-9.]+\s*\|\s*[0-9.]+\s*\|\s*([0-9.]+)\s*\|", text, re.M
    )
    return [float(a) for _, a, _ in rows], [float(c) for _, _, c in rows]


def cross_check(out: Outcome, study: Study) -> str:
    """Our FedAvg and centralised accuracies beside the Flower harness's on the same workload."""
    args, wl = study.args, study.wl
    fed = next((r for s, r in out.final[args.alphas[0]] if s.method == "fedavg"), None)
    flower, flower_central = flower_reference()
    if args.smoke or args.alphas[0] != wl.reference_alpha or not fed or not flower or out.central is None:
        return ""
    ours = fed["accuracy"][: min(len(flower), rounds_of(args, 0))]
    same = sum(f"{a:.4f}" == f"{b:.4f}" for a, b in zip(ours, flower, strict=False))
    text = (
        f"Cross-check with the Flower harness (same data, seeds and initial model; RESULTS-flower.md): FedAvg "
        f"after rounds 1–{len(ours)}, ours {', '.join(f'{a:.4f}' for a in ours)}, Flower's "
        f"{', '.join(f'{a:.4f}' for a in flower[: len(ours)])} (equal to 4 decimals in {same} of {len(ours)})."
    )
    epochs = [s for s in out.central["steps"] if s % wl.steps_per_epoch == 0]
    if flower_central:
        mine = ", ".join(f"{central_at(out.central, s):.4f}" for s in epochs[: len(flower_central)])
        text += (
            f" Centralised after epochs 1–{len(flower_central)}, Flower's harness: "
            f"{', '.join(f'{a:.4f}' for a in flower_central)}" + (f"; ours: {mine}." if mine else ".")
        )
    return text


def tau_note(out: Outcome, study: Study) -> str:
    """Whether τ or √v dominated the adaptive optimizers' denominator, from their last round's state."""
    args = study.args
    notes = []
    for spec, rec in out.final[args.alphas[0]]:
        q = (rec or {}).get("sqrt_v")
        if not q:
            continue
        note = (
            f"{spec.label()} (η = {spec.lr:g}) after round {q['round']}: √v is {q['median']:.2g} at the median "
            f"moving coordinate, {q['p99']:.2g} at the 99th percentile, against τ = {args.tau:g}"
        )
        if q["p99"] < args.tau / 3:
            note += (
                f": τ dominates the denominator, so the step is close to server momentum (an average of "
                f"Δ̄ with β1 = {args.beta1:g}) at rate η(1−β1)/τ = {spec.lr * (1 - args.beta1) / args.tau:.3g}"
            )
        notes.append(note + ".")
    return " ".join(notes)


def report(out: Outcome, study: Study, minutes: float, command: str) -> str:
    args, wl = study.args, study.wl
    assert out.central is not None
    init = study.results["initial"][study.fp]
    first = study.split(args.alphas[0])
    lines = [
        f"# Server optimizers and FedProx against centralised training: {'SST-2 × MiniLM-L6' if not args.smoke else 'smoke (tiny model, generated data)'}, "
        f"{wl.clients} clients × {wl.per_client}",
        "",
        f"`{command}`",
        "",
        f"Every federated round: all {wl.clients} clients train with the worker's own entry point "
        f"(`worker.trainer.train_round`: 1 epoch, batch {wl.batch_size}, AdamW lr {wl.lr:g} fresh each round, "
        f"max_length {wl.max_len}, shuffle and dropout seeded 1000·round + client), the sample-weighted mean Δ̄ "
        f"(`strata.aggregate.FedAvgAccumulator`) goes through the server optimizer (`strata.optimizers.step`), "
        f"and the model is evaluated on the {len(wl.test)}-row test set (batch {wl.eval_batch}). FedProx is "
        f"FedAvg (η = 1) whose clients add the worker's proximal term μ/2·‖θ − θ_t‖² (`TrainingConfig.prox_mu`). "
        f"Centralised: the union of the {len(first.pool)} examples, batch {wl.batch_size}, one AdamW for the whole run, "
        f"stopped after as many optimiser steps as one client takes in all rounds ({wl.steps_per_round} per round); "
        f"its curve below is read every {wl.steps_per_round} steps (one round-equivalent). Initial model: accuracy "
        f"{init['accuracy']:.4f}, loss {init['loss']:.4f}.",
        "",
    ]
    for i, alpha in enumerate(args.alphas):
        rounds = rounds_of(args, i)
        split = study.split(alpha)
        c_curve = central_curve(out.central, wl, rounds)
        c = c_curve[-1]
        lines += [
            f"## α = {alpha:g}, {plural(rounds, 'round')}",
            "",
            "Clients (negative/positive): "
            + ", ".join(f"{n}/{p}" for n, p in split.counts)
            + f"; Dirichlet q_pos drawn: {', '.join(f'{q:.4f}' for q in split.q_pos)}. Data: {split.check}.",
            "",
            f"| method | server lr | final acc | best acc | gap to centralised (points) | rounds to {100 * args.target:g} % |",
            "|---|---|---|---|---|---|",
        ]
        reach = first_reaching(c_curve, args.target)
        lines.append(
            f"| centralised, {rounds * wl.steps_per_round} steps | – | {c:.4f} | {max(c_curve):.4f} | 0.00 | "
            f"{reach if reach else '—'} |"
        )
        for spec, rec in out.final[alpha]:
            assert rec is not None
            acc = rec["accuracy"][:rounds]
            reach = first_reaching(acc, args.target)
            lines.append(
                f"| {spec.label()} | {spec.lr:g} | {acc[-1]:.4f} | {max(acc):.4f} | {signed_points(acc[-1] - c)} | "
                f"{reach if reach else '—'} |"
            )
        if args.central_epochs:
            steps = [e * wl.steps_per_epoch for e in range(1, args.central_epochs + 1)]
            accs = [central_at(out.central, s) for s in steps]
            lines.append(
                f"| centralised, {args.central_epochs} epoch{'s' if args.central_epochs > 1 else ''} ({steps[-1]} steps; WORKLOAD.md's convention) | – | "
                f"{accs[-1]:.4f} | {max(accs):.4f} | {signed_points(accs[-1] - c)} | – |"
            )
        lines += ["", "Test accuracy per round:", ""]
        runs = [(s, r) for s, r in out.final[alpha] if r]
        lines.append(
            "| round | centralised | " + " | ".join(f"{s.label()} η={s.lr:g}" for s, _ in runs) + " |"
        )
        lines.append("|---|---|" + "---|" * len(runs))
        lines.append(
            f"| 0 | {init['accuracy']:.4f} | " + " | ".join(f"{init['accuracy']:.4f}" for _ in runs) + " |"
        )
        for t in range(rounds):
            lines.append(
                f"| {t + 1} | {c_curve[t]:.4f} | "
                + " | ".join(f"{r['accuracy'][t]:.4f}" for _, r in runs)
                + " |"
            )
        lines.append("")
    lines += ["## Which settings close the gap most", "", verdict(out, study), ""]
    if args.central_epochs:
        steps = [e * wl.steps_per_epoch for e in range(1, args.central_epochs + 1)]
        lines += [
            f"Centralised after epochs 1–{args.central_epochs} ({wl.steps_per_epoch} steps each, WORKLOAD.md): "
            + ", ".join(f"{central_at(out.central, s):.4f}" for s in steps)
            + ".",
            "",
        ]
    for extra in (tau_note(out, study), cross_check(out, study)):
        if extra:
            lines += [extra, ""]
    if out.sweeps:
        lines += [
            f"## Server learning-rate sweep (α = {args.alphas[0]:g})",
            "",
            "| method | server lr | accuracy after the sweep | chosen |",
            "|---|---|---|---|",
        ]
        for method, swept in out.sweeps.items():
            n = min(args.sweep_rounds, rounds_of(args, 0))
            for s, r in swept:
                acc = final_accuracy(r, n)
                lines.append(
                    f"| {s.label()} | {s.lr:g} | {acc:.4f} (round {n}) | {'yes' if s.lr == out.chosen[method] else ''} |"
                )
        lines.append("")
    records = {r["key"]: r for group in (*out.final.values(), *out.sweeps.values()) for _, r in group if r}
    total = sum(sum(r["seconds"]) for r in records.values())
    lines += [
        "## What was cut to fit the budget",
        "",
        *cuts(out, study),
        "",
        "## Machine and command",
        "",
        f"- {machine()}; torch threads {torch.get_num_threads()}; one process (the clients train one after the "
        "other), so round times are not comparable with the Flower harness's 8 client processes.",
        f"- `{command}`",
        f"- Settings: {settings_line(args)}.",
        f"- Federated training stored for this report: {total / 60:.0f} min (sum of round times); this "
        f"invocation: {minutes:.1f} min.",
        "",
        "![accuracy per round](optimizers.png)",
        "",
    ]
    return "\n".join(lines)


def settings_line(args: argparse.Namespace) -> str:
    lrs = {**server_lrs(DEFAULT_LRS), **args.server_lrs}
    rates = ",".join(
        f"{m}={v if isinstance(v, str) else ':'.join(f'{x:g}' for x in v)}" for m, v in lrs.items()
    )
    return (
        f"--alphas {','.join(f'{a:g}' for a in args.alphas)} --rounds {','.join(map(str, args.rounds))} "
        f"--methods {','.join(args.methods)} --server-lrs {rates} --sweep-rounds {args.sweep_rounds} "
        f"--later-methods {','.join(args.later_methods)} --prox-mu {args.prox_mu:g} --momentum {args.momentum:g} "
        f"--beta1 {args.beta1:g} --beta2 {args.beta2:g} --tau {args.tau:g} --central-epochs {args.central_epochs}"
    )


def plot(out: Outcome, study: Study, path: Path) -> bool:
    """Accuracy per round, one panel per α; False (and a note) when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False

    args, wl = study.args, study.wl
    assert out.central is not None
    init = study.results["initial"][study.fp]["accuracy"]
    from matplotlib.ticker import MaxNLocator

    colour = {m: f"C{i}" for i, m in enumerate(METHODS)}
    fig, axes = plt.subplots(1, len(args.alphas), figsize=(5.5 * len(args.alphas), 4), squeeze=False)
    for i, (ax, alpha) in enumerate(zip(axes[0], args.alphas, strict=True)):
        rounds = rounds_of(args, i)
        xs = list(range(rounds + 1))
        ax.plot(xs, [init, *central_curve(out.central, wl, rounds)], "k--", label="centralised (same steps)")
        for spec, rec in out.final[alpha]:
            if rec:
                ax.plot(
                    xs,
                    [init, *rec["accuracy"][:rounds]],
                    marker="o",
                    ms=3,
                    color=colour[spec.method],
                    label=f"{spec.label()} η={spec.lr:g}",
                )
        ax.axhline(args.target, color="grey", lw=0.8, alpha=0.6)
        ax.set_title(f"α = {alpha:g}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"round (centralised: every {wl.steps_per_round} steps)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{wl.clients} clients: server optimizers and FedProx vs centralised ({wl.name})")
    save_figure(fig, path)
    return True
