"""The privacy accountant of DP rounds (docs/methods.md section 6): dp-accounting's RDP accountant composes
the Poisson-subsampled Gaussian mechanism of every round (sampling rate q, noise multiplier z) and gives
ε for the federation's δ. No privacy bound is computed here by hand."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # dp-accounting (and scipy under it) loads when ε is first computed, not with the module
    import dp_accounting

#: (q, z) of one DP round
Event = tuple[float, float]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """dp-accounting warns (through absl) about RDP orders it skips for a small q; the skipped orders only
    make ε larger, never wrong, so the warnings are noise to an operator."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _event(q: float, z: float) -> dp_accounting.DpEvent:
    import dp_accounting

    if not 0 < q <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], not {q}")
    if z <= 0:
        raise ValueError(f"the noise multiplier must be positive, not {z}")
    gaussian = dp_accounting.GaussianDpEvent(z)
    return gaussian if q == 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


def epsilon(events: Sequence[Event], delta: float) -> float:
    """ε after the rounds `events` (each (q, z)), for δ; 0 for no rounds."""
    if not 0 < delta < 1:
        raise ValueError(f"δ must be in (0, 1), not {delta}")
    if not events:
        return 0.0
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    runs: list[tuple[Event, int]] = []
    for e in events:  # consecutive equal rounds compose as one self-composed event
        if runs and runs[-1][0] == e:
            runs[-1] = (e, runs[-1][1] + 1)
        else:
            runs.append((e, 1))
    with _quiet():
        for (q, z), count in runs:
            acc.compose(_event(q, z), count)
        return float(acc.get_epsilon(delta))


def rounds_within(
    budget: float, q: float, z: float, delta: float, limit: int, spent: Sequence[Event] = ()
) -> int:
    """The most rounds of (q, z), after the rounds already `spent`, whose ε stays within `budget`; at most
    `limit` (a binary search: ε grows with the rounds)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if epsilon([*spent, *[(q, z)] * mid], delta) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_line(rounds: int, q: float, z: float, delta: float, budget: float) -> str:
    """What a planned run of `rounds` DP rounds will spend, in one line for the operator."""
    total = epsilon([(q, z)] * rounds, delta)
    first = epsilon([(q, z)], delta)
    line = (
        f"differential privacy: z = {z:g}, q = {q:g}, δ = {delta:g}: ε = {first:.3g} after round 1, "
        f"{total:.3g} after {rounds} round(s); budget ε = {budget:g}"
    )
    if total <= budget:
        return line + ": every planned round fits"
    fit = rounds_within(budget, q, z, delta, rounds)
    return line + f": the budget allows {fit} of the {rounds} rounds, then the federation stops"
