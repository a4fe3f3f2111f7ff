"""The plan of bench.optimizers: which runs one invocation does (the first α's methods, their server
learning-rate sweeps and the rate each sweep picks, the later α's methods, the centralised run), walked
either to train them or only to cost them from what is stored (`--plan-only`), and its `Outcome`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from bench.optimizers_runs import DEFAULT_LRS, Spec, Study, plural, server_lrs


@dataclass
class Outcome:
    """What the plan produced: final runs per α, the sweeps, the rates chosen, the centralised run."""

    final: dict[float, list[tuple[Spec, dict[str, Any] | None]]] = field(default_factory=dict)
    sweeps: dict[str, list[tuple[Spec, dict[str, Any] | None]]] = field(default_factory=dict)
    chosen: dict[str, float] = field(default_factory=dict)
    best: str | None = None
    central: dict[str, Any] | None = None
    rounds: int = 0  # rounds still to train
    runs: int = 0  # federated runs in the plan
    central_steps: int = 0
    central_evals: int = 0
    lines: list[str] = field(default_factory=list)  # the plan, one line per run


def rounds_of(args: argparse.Namespace, i: int) -> int:
    return args.rounds[min(i, len(args.rounds) - 1)]


def walk(study: Study, execute: bool) -> Outcome:
    """The plan, followed (execute) or only costed from what is stored (the estimate)."""
    args = study.args
    out = Outcome()
    lrs = {**server_lrs(DEFAULT_LRS), **args.server_lrs}

    unknown: dict[str, str] = {}  # method -> how its rate will be chosen, while the plan cannot know it yet

    def need(spec: Spec, rounds: int, ahead: int = 0, what: str = "") -> dict[str, Any] | None:
        out.runs += 1
        cost = study.cost(spec, rounds, ahead)
        out.rounds += cost
        lr = unknown.get(spec.method, f"η = {spec.lr:g}") if not what else f"η = {spec.lr:g}"
        out.lines.append(
            f"α = {spec.alpha:g}: {spec.label()}, {lr}, {plural(rounds, 'round')}{what} ({cost} to train)"
        )
        return study.federate(spec, rounds) if execute else study.stored(spec)

    def mu_of(method: str) -> float:
        return args.prox_mu if method == "fedprox" else 0.0

    def rates(method: str) -> list[float]:
        value = lrs.get(method, [1.0])
        if isinstance(value, str):  # borrow another method's choice, or its sweep when that one is not run
            if value in out.chosen:
                if value in unknown:
                    unknown[method] = f"{value}'s η"
                return [out.chosen[value]]
            return rates(value)
        return value

    a0, r0 = args.alphas[0], rounds_of(args, 0)
    out.final[a0] = []
    for method in args.methods:
        candidates = rates(method)
        ahead = 0
        if len(candidates) > 1:  # a sweep as long as the run runs every rate to the end
            ahead = min(args.sweep_rounds, r0)
            sweep = [Spec(a0, method, lr, mu_of(method)) for lr in candidates]
            out.sweeps[method] = [(s, need(s, ahead, what=" (sweep)")) for s in sweep]
            chosen = pick(out.sweeps[method], ahead)
            if any(final_accuracy(r, ahead) < 0 for _, r in out.sweeps[method]):
                unknown[method] = "the η its sweep picks"
            if execute:
                for s, _ in out.sweeps[method]:
                    if s.lr != chosen:
                        study.drop_checkpoint(s)
        else:
            chosen = candidates[0]
        out.chosen[method] = chosen
        spec = Spec(a0, method, chosen, mu_of(method))
        out.runs -= 1 if ahead else 0  # the chosen rate's sweep run goes on: one run, not two
        out.final[a0].append((spec, need(spec, r0, ahead)))
        if execute:
            study.drop_checkpoint(spec)
    optimizers = [(s, r) for s, r in out.final[a0] if s.method not in ("fedavg", "fedprox")]
    if optimizers:
        out.best = max(optimizers, key=lambda sr: final_accuracy(sr[1], r0))[0].method
        if any(final_accuracy(r, r0) < 0 for _, r in optimizers) and "best" in args.later_methods:
            unknown[out.best] = f"η chosen at α = {a0:g} (stands for the best optimizer there)"
    for i, alpha in enumerate(args.alphas[1:], start=1):
        out.final[alpha] = []
        for method in later_methods(args, out.best):
            spec = Spec(alpha, method, out.chosen.get(method) or rates(method)[0], mu_of(method))
            out.final[alpha].append((spec, need(spec, rounds_of(args, i))))
            if execute:
                study.drop_checkpoint(spec)
    matched = max(rounds_of(args, i) for i in range(len(args.alphas))) * study.wl.steps_per_round
    points = set(range(study.wl.steps_per_round, matched + 1, study.wl.steps_per_round))
    points |= {e * study.wl.steps_per_epoch for e in range(1, args.central_epochs + 1)}
    stored = study.results["central"].get(study.fp)
    if not (stored and points <= set(stored["steps"])):
        out.central_steps, out.central_evals = max(points), len(points)
    out.lines.append(
        f"centralised: {max(points)} steps, {len(points)} evaluations ({out.central_steps} to train)"
    )
    out.central = study.central(matched, args.central_epochs) if execute else stored
    return out


def later_methods(args: argparse.Namespace, best: str | None) -> list[str]:
    """--later-methods with `best` and `all` expanded, each method once, in order."""
    names: list[str] = []
    for m in args.later_methods:
        expanded = list(args.methods) if m == "all" else [best] if m == "best" else [m]
        names += [n for n in expanded if n and n not in names]
    return names


def pick(runs: list[tuple[Spec, dict[str, Any] | None]], rounds: int) -> float:
    """The rate whose run is most accurate after `rounds` rounds; on a tie the lower test loss, then the
    first (the first, too, while the runs are not known)."""

    def score(sr: tuple[Spec, dict[str, Any] | None]) -> tuple[float, float]:
        rec = sr[1]
        if rec is None or len(rec["accuracy"]) < rounds:
            return -1.0, 0.0
        return final_accuracy(rec, rounds), -rec["loss"][rounds - 1]

    return max(runs, key=score)[0].lr


def final_accuracy(rec: dict[str, Any] | None, rounds: int) -> float:
    if not rec or len(rec["accuracy"]) < rounds:
        return -1.0
    return float(rec["accuracy"][rounds - 1])
