"""What bench.privacy's studies share: reading a coordinator's DP records and update norms back from its
database, the mechanism an arm runs, and one private coordinator's settings."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from coordinator.store import Store
from strata import privacy
from strata.storage.models import UpdateStatus


def read_dp(folder: Path, name: str) -> list[dict[str, Any]]:
    """A coordinator's rounds rows as DP sees them: the mechanism, ε after the round, trained blocks."""
    store = Store(f"sqlite:///{folder / 'strata.db'}")
    try:
        fed = store.get_or_create_federation(name)
        return [
            dict(
                number=r.number,
                private=bool(r.private),
                epsilon=r.dp_epsilon,
                clip=r.dp_clip,
                next_clip=r.dp_next_clip,
                unclipped=r.dp_unclipped,
                expected=r.dp_expected,
                z=r.dp_noise_multiplier,
                q=r.dp_sampling_rate,
                blocks=r.blocks,
                probe=bool(r.probe),
            )
            for r in store.rounds(fed.id)
        ]
    finally:
        store.close()


def read_norms(folder: Path, name: str) -> list[list[float]]:
    """Per round, the L2 norms of the accepted updates (recorded without DP only)."""
    store = Store(f"sqlite:///{folder / 'strata.db'}")
    try:
        fed = store.get_or_create_federation(name)
        return [
            [
                float(u.update_norm)
                for u in store.updates(r.id)
                if u.status == UpdateStatus.ACCEPTED.value and u.update_norm is not None
            ]
            for r in store.rounds(fed.id)
        ]
    finally:
        store.close()


def median_norm(norms: list[list[float]], skip_first: bool = False) -> float | None:
    flat = [x for row in norms[1 if skip_first and len(norms) > 1 else 0 :] for x in row]
    return statistics.median(flat) if flat else None


def mechanism(z: float, q: float, members: int, adaptive: bool) -> tuple[float, float]:
    """(m, z_Δ): the expected participants and the update's noise multiplier (adaptive clipping spends
    part of z on the count of unclipped updates, docs/methods.md section 6)."""
    m = privacy.expected_participants(q, members)
    if not adaptive:
        return m, z
    return m, privacy.update_noise_multiplier(z, privacy.default_count_noise(z, m))


def dp_values(eps: float, z: float, clip: float, adaptive: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One private coordinator's settings (min_updates 1: a DP round releases whatever arrived)."""
    return dict(
        dp=True, dp_noise_multiplier=z, dp_clip=clip, dp_delta=args.delta, dp_target_epsilon=eps,
        dp_sampling_rate=args.sampling_rate, dp_adaptive_clip=adaptive, min_updates=1,
    )  # fmt: skip


def failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
