"""A round's layer-wise divergence (methods.md section 1), measured by the coordinator before it applies the
mean: E and ‖Δ̄‖² per tensor come from the streaming pass (the round's sums); each worker's ⟨Δ_k, Δ̄⟩
needs Δ̄ first, so it comes from a second pass over the spooled updates, decoded block by block again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator.ingest import RoundSums, replay
from strata.aggregate import Moments
from strata.divergence import Divergence, by_block, divergence, noise_floor, sum_by_block, worker_alignment
from strata.frames import FrameAssembler


@dataclass(slots=True)
class Spooled:
    """One accepted update of the round: who sent it, where its frames are, its database row."""

    key: str  # the worker's uid
    path: Path
    num_samples: int
    update_id: int = 0
    name: str = ""  # the worker's name
    norm: float = 0.0  # ‖Δ_k‖ over the whole update
    tensors: frozenset[str] = frozenset()
    sq: dict[str, float] = field(default_factory=dict)  # ‖Δ_k‖² per tensor
    train_loss: float = 0.0
    train_accuracy: float = 0.0


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


def second_pass(path: Path, sums: RoundSums) -> tuple[dict[str, float], dict[str, float]]:
    """⟨Δ_k, Δ̄⟩ and ‖Δ_k‖² per tensor of one spooled update, Δ̄ read from the sums (float64 dots)."""
    dots: dict[str, float] = {}

    def on_block(name: str, start: int, values: torch.Tensor) -> None:
        mean = sums.sums[name][start : start + values.numel()].to(torch.float64)
        dot = float(torch.dot(values.to(torch.float64), mean)) / sums.counts[name]
        dots[name] = dots.get(name, 0.0) + dot

    asm = FrameAssembler(sums.expected, on_block=on_block)
    replay(path, asm)
    return dots, dict(asm.tensor_sq)


def measure(
    sums: RoundSums, moments: Mapping[str, Moments], updates: Sequence[Spooled], block_of: Mapping[str, str]
) -> RoundDivergence:
    """Every measure of the round: per tensor and per block, and per worker (second pass)."""
    weights = [float(u.num_samples) for u in updates]
    energy = {n: m.energy for n, m in moments.items()}
    mean_sq = {n: m.s2 for n, m in moments.items()}
    tensors = {n: divergence(energy[n], mean_sq[n], weights) for n in moments}
    blocks = by_block(energy, mean_sq, block_of, weights)
    block_mean_sq = sum_by_block(mean_sq, block_of)
    workers: dict[str, WorkerAlignment] = {}
    for u in updates:
        dots, sq = second_pass(u.path, sums)
        workers[u.key] = WorkerAlignment(
            blocks=worker_alignment(sum_by_block(dots, block_of), sum_by_block(sq, block_of), block_mean_sq),
            tensors=worker_alignment(dots, sq, mean_sq),
        )
    return RoundDivergence(noise_floor(weights), tensors, blocks, workers)
