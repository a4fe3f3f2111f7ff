"""`strata privacy`: what a planned private run will spend, before it starts (docs/privacy.md).

For the rounds, the noise multiplier z, the sampling rate q and δ, it prints ε after a few points of the run
for z and for neighbouring values, and, given a budget, the smallest z that fits every planned round and how
many rounds the chosen z allows. The numbers come from the same accountant the coordinator uses.
"""

from __future__ import annotations

import argparse
import sys

from strata import accountant

FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "privacy",
        help="plan a differentially private federation: ε after its rounds for a noise multiplier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, required=True, help="planned rounds")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="z (default 1.0)")
    p.add_argument("--sampling-rate", type=float, default=1.0, help="q (default 1: every member every round)")
    p.add_argument("--delta", type=float, default=1e-5, help="δ (default 1e-5)")
    p.add_argument("--target-epsilon", type=float, default=0.0, help="the budget, to size z against")
    p.set_defaults(func=run)


def smallest_z(budget: float, rounds: int, q: float, delta: float) -> float:
    """The smallest noise multiplier (to 0.1%) whose `rounds` rounds stay within `budget`."""
    lo, hi = 0.05, 1.0
    while accountant.epsilon([(q, hi)] * rounds, delta) > budget:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"no noise multiplier up to 1e4 keeps {rounds} rounds within ε = {budget:g}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if accountant.epsilon([(q, mid)] * rounds, delta) <= budget else (mid, hi)
    return hi


def report(rounds: int, z: float, q: float, delta: float, budget: float) -> list[str]:
    points = sorted({1, max(1, rounds // 4), max(1, rounds // 2), rounds})
    lines = [
        f"ε for δ = {delta:g}, q = {q:g} (RDP accountant, dp-accounting)",
        "",
        "| z | " + " | ".join(f"after {n}" for n in points) + " |",
        "|---|" + "---|" * len(points),
    ]
    for f in FACTORS:
        zf = z * f
        eps = [accountant.epsilon([(q, zf)] * n, delta) for n in points]
        mark = " (chosen)" if f == 1.0 else ""
        lines.append(f"| {zf:g}{mark} | " + " | ".join(f"{e:.3g}" for e in eps) + " |")
    if budget > 0:
        fit = accountant.rounds_within(budget, q, z, delta, rounds)
        lines += [
            "",
            f"budget ε = {budget:g}: z = {z:g} allows {fit} of the {rounds} rounds; the smallest z for all of "
            f"them is {smallest_z(budget, rounds, q, delta):.3g}",
        ]
    return lines


def run(args: argparse.Namespace) -> int:
    if (
        args.rounds < 1
        or args.noise_multiplier <= 0
        or not 0 < args.sampling_rate <= 1
        or not 0 < args.delta < 1
    ):
        print(
            "strata privacy: --rounds ≥ 1, --noise-multiplier > 0, --sampling-rate in (0, 1], --delta in (0, 1)",
            file=sys.stderr,
        )
        return 2
    try:
        print(
            "\n".join(
                report(
                    args.rounds, args.noise_multiplier, args.sampling_rate, args.delta, args.target_epsilon
                )
            )
        )
    except ValueError as exc:
        print(f"strata privacy: {exc}", file=sys.stderr)
        return 2
    return 0
