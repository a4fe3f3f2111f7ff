"""A round's layer-wise divergence (docs/methods.md section 1), measured before the aggregate is applied:
E and ‖Δ̄‖² per tensor come from the streaming sums; each worker's ⟨Δ_k, Δ̄⟩ needs Δ̄ first, so it comes
from the close pass over the spooled updates (coordinator/close_pass.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.updates import Spooled
from strata.aggregate import Moments
from strata.divergence import Divergence, by_block, divergence, noise_floor, sum_by_block, worker_alignment


@dataclass
class WorkerAlignment:
    """One worker: (‖Δ_k‖, cos(Δ_k, Δ̄)) per block and per tensor."""

    blocks: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    tensors: dict[str, tuple[float, float | None]] = field(default_factory=dict)


@dataclass
class RoundDivergence:
    noise_floor: float | None
    tensors: dict[str, Divergence]
    blocks: dict[str, Divergence]
    workers: dict[str, WorkerAlignment]


def measure(
    moments: Mapping[str, Moments],
    updates: Sequence[Spooled],
    dots: Mapping[str, Mapping[str, float]],
    block_of: Mapping[str, str],
) -> RoundDivergence:
    """Every measure of the round: per tensor and per block, and per worker from its dot products."""
    weights = [float(u.num_samples) for u in updates]
    energy = {n: m.energy for n, m in moments.items()}
    mean_sq = {n: m.s2 for n, m in moments.items()}
    tensors = {n: divergence(energy[n], mean_sq[n], weights) for n in moments}
    blocks = by_block(energy, mean_sq, block_of, weights)
    block_mean_sq = sum_by_block(mean_sq, block_of)
    workers: dict[str, WorkerAlignment] = {}
    for u in updates:
        d = {n: v for n, v in dots.get(u.key, {}).items() if n in moments}
        sq = {n: v for n, v in u.sq.items() if n in moments}
        workers[u.key] = WorkerAlignment(
            blocks=worker_alignment(sum_by_block(d, block_of), sum_by_block(sq, block_of), block_mean_sq),
            tensors=worker_alignment(d, sq, mean_sq),
        )
    return RoundDivergence(noise_floor(weights), tensors, blocks, workers)
