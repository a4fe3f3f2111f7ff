"""The aggregation seam: an Aggregator accepts a round's updates as they stream in, can retract one, and
produces the round's aggregate Δ̄ (in the spirit of NVIDIA FLARE's accept()/aggregate() and Flower's
Strategy). A new aggregation rule is a new class here, not an edit of the round loop.

Every aggregator keeps the streaming sample-weighted sums (RoundSums): they give the plain mean, the
block scores and the divergence whatever the rule. The robust rules (coordinate-wise median, trimmed
mean; docs/methods.md section 8) also read the round's spooled updates in the close pass, window by
window, and reduce each window of K rows to one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from coordinator.ingest import RoundSums, reload
from coordinator.updates import Spooled
from strata import privacy

if TYPE_CHECKING:
    from coordinator.privacy import Mechanism

METHODS = ("mean", "median", "trimmed-mean")


def robust_reduce(stack: torch.Tensor, method: str, trim: float) -> torch.Tensor:
    """Reduce K rows (updates) to one, coordinate by coordinate (pure)."""
    k = stack.shape[0]
    if method == "median":
        if k % 2:
            return stack.median(dim=0).values
        ordered = stack.sort(dim=0).values  # the mean of the two middle values for an even count
        return (ordered[k // 2 - 1] + ordered[k // 2]) / 2
    if method == "trimmed-mean":
        cut = math.floor(trim * k)
        if k - 2 * cut < 1:
            cut = (k - 1) // 2
        ordered = stack.sort(dim=0).values
        return ordered[cut : k - cut].mean(dim=0)
    raise ValueError(f"unknown robust method {method!r}; choose one of {', '.join(METHODS[1:])}")


class Aggregator:
    """The sample-weighted streaming mean (FedAvg): Δ̄ = Σ n_k Δ_k / Σ n_k per tensor, over the updates
    that carried the tensor. Blocks enter `sums` as they stream (coordinator.ingest); `accept` counts a
    complete update, `retract` takes a counted one out again (its blocks must be subtracted too)."""

    method = "mean"
    reads_spool = False  # whether the close pass must hand it every window (`reduce`)
    streams = True  # an update's blocks enter the sums as they arrive (else when it is complete)
    private = False  # differentially private: nothing per member may be published

    def __init__(self, sums: RoundSums) -> None:
        self.sums = sums

    def weight(self, u: Spooled) -> float:
        """The factor of update u's blocks in the sums."""
        return float(u.num_samples)

    def stream_weight(self, num_samples: int) -> float:
        """The factor of an update's blocks while it streams in (0: they wait until it is complete)."""
        return float(num_samples)

    def accept(self, u: Spooled) -> None:
        self.sums.commit(u.tensors, u.num_samples, u.sq)

    def retract(self, u: Spooled) -> None:
        self.sums.retract(u.tensors, u.num_samples, u.sq)

    def reduce(self, name: str, start: int, rows: torch.Tensor) -> None:
        """One window of the accepted updates (K rows), in the close pass; the mean needs none."""

    def finalize(self) -> None:
        """Once the round's updates are final (after the close pass), before the sums are read."""

    def result(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(tensor, Δ̄) for every tensor still in the sums, in name order, in its shape; consumes the sums."""
        return self.sums.means()


class RobustAggregator(Aggregator):
    """Coordinate-wise median or trimmed mean (unweighted), from the close pass's windows."""

    reads_spool = True

    def __init__(self, sums: RoundSums, method: str, trim: float = 0.1) -> None:
        super().__init__(sums)
        robust_reduce(torch.zeros(1, 1), method, trim)  # refuses an unknown method now
        self.method, self.trim = method, trim
        self.values: dict[str, torch.Tensor] = {}

    def reduce(self, name: str, start: int, rows: torch.Tensor) -> None:
        buf = self.values.get(name)
        if buf is None:
            buf = self.values[name] = torch.zeros(math.prod(self.sums.shapes[name]), dtype=torch.float32)
        buf[start : start + rows.shape[1]] = robust_reduce(rows, self.method, self.trim)

    def result(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in sorted(self.sums.counts):
            self.sums.sums.pop(name, None)
            yield name, self.values.pop(name).reshape(self.sums.shapes[name])


class PrivateAggregator(Aggregator):
    """DP-FedAvg (docs/methods.md section 6): each complete update enters the sums once, scaled by
    min(1, S/‖Δ_k‖) (its norm is known only at its end, so its blocks do not stream: they are replayed from
    the spool), with weight 1 whatever its samples; `finalize` adds N(0, (z_Δ·S)²) to every coordinate of
    every tensor the round trains, carried or not, and sets each divisor to the expected participants m.
    With adaptive clipping it also draws the noised count of unclipped updates."""

    streams = False
    private = True

    def __init__(self, sums: RoundSums, mech: Mechanism) -> None:
        super().__init__(sums)
        self.mech = mech
        self.lock = threading.Lock()  # complete updates are added from worker threads, one at a time
        self.unclipped = 0
        self.noised_unclipped: float | None = None  # adaptive clipping: Σ b_k + N(0, σ_b²), after finalize

    def weight(self, u: Spooled) -> float:
        return privacy.clip_factor(u.norm, self.mech.clip)

    def stream_weight(self, num_samples: int) -> float:
        return 0.0

    def accept(self, u: Spooled) -> None:
        with self.lock:
            reload(u.path, self.sums, self.weight(u))
            self.sums.commit(u.tensors, 1)
            self.unclipped += u.norm <= self.mech.clip

    def retract(self, u: Spooled) -> None:
        with self.lock:
            self.sums.retract(u.tensors, 1)
            self.unclipped -= u.norm <= self.mech.clip

    def finalize(self) -> None:
        gen = privacy.noise_generator()
        sums, std = self.sums, self.mech.update_noise * self.mech.clip
        for name in sorted(sums.expected):
            numel = math.prod(sums.shapes[name]) if sums.shapes[name] else 1
            buf = sums.sums.get(name)
            if buf is None:
                buf = sums.sums[name] = torch.zeros(numel, dtype=sums.dtype)
            for start in range(0, numel, 1 << 20):  # float64 noise, a chunk at a time
                part = buf[start : start + (1 << 20)]
                part.copy_((part.to(torch.float64) + privacy.gaussian(part.numel(), std, gen)).to(buf.dtype))
            sums.counts[name] = self.mech.expected  # the fixed denominator m
        if self.mech.count_noise is not None:
            noise = float(privacy.gaussian(1, self.mech.count_noise, gen)[0])
            self.noised_unclipped = self.unclipped + noise


def make_aggregator(
    method: str, sums: RoundSums, trim: float = 0.1, mech: Mechanism | None = None
) -> Aggregator:
    if mech is not None:
        return PrivateAggregator(sums, mech)
    if method == "mean":
        return Aggregator(sums)
    return RobustAggregator(sums, method, trim)
