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
from collections.abc import Iterator

import torch

from coordinator.ingest import RoundSums
from coordinator.updates import Spooled

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

    def __init__(self, sums: RoundSums) -> None:
        self.sums = sums

    def accept(self, u: Spooled) -> None:
        self.sums.commit(u.tensors, u.num_samples, u.sq)

    def retract(self, u: Spooled) -> None:
        self.sums.retract(u.tensors, u.num_samples, u.sq)

    def reduce(self, name: str, start: int, rows: torch.Tensor) -> None:
        """One window of the accepted updates (K rows), in the close pass; the mean needs none."""

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


def make_aggregator(method: str, sums: RoundSums, trim: float = 0.1) -> Aggregator:
    if method == "mean":
        return Aggregator(sums)
    return RobustAggregator(sums, method, trim)
