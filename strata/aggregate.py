"""Aggregation math: sample-weighted FedAvg of deltas, as pure functions and a streaming accumulator."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

from strata.selection import Moments


def fedavg_weights(num_samples: Sequence[int]) -> list[float]:
    """p_k = n_k / sum_j n_j. Raises ValueError on an empty list, a negative count or a zero total."""
    if not num_samples:
        raise ValueError("no updates to weight")
    if any(n < 0 for n in num_samples):
        raise ValueError("sample counts must be non-negative")
    total = sum(num_samples)
    if total <= 0:
        raise ValueError("the updates carry no samples")
    return [n / total for n in num_samples]


def weighted_mean(
    deltas: Sequence[Mapping[str, torch.Tensor]], num_samples: Sequence[int]
) -> dict[str, torch.Tensor]:
    """The sample-weighted mean delta, tensor by tensor (every delta must carry the same names)."""
    if len(deltas) != len(num_samples):
        raise ValueError("one sample count per delta")
    fedavg_weights(num_samples)  # validates the counts
    names = set(deltas[0])
    for d in deltas[1:]:
        if set(d) != names:
            raise ValueError("deltas carry different tensors")
    acc = FedAvgAccumulator()
    for d, n in zip(deltas, num_samples, strict=True):
        acc.accept(d, n)
    return acc.mean()


_CHUNK = 1 << 20


class FedAvgAccumulator:
    """Σ_k n_k Δ_k and Σ_k n_k per tensor, added whole (`accept`) or block by block (`add`, then `commit`),
    so memory is one flat buffer per tensor however many updates arrive.

    The reference use keeps float64 sums; the coordinator streams into float32 ones (model-sized memory).
    """

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]] | None = None, dtype: torch.dtype = torch.float64
    ) -> None:
        self.shapes: dict[str, tuple[int, ...]] = dict(shapes or {})
        self.dtype = dtype
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {}  # Σ n_k of the updates that carried it (a private round: m)
        self.energy: dict[str, float] = {}  # Σ_k n_k ‖Δ_k‖² per tensor, for updates that reported it
        self.total_samples = 0
        self.num_updates = 0

    def add(self, name: str, start: int, values: torch.Tensor, weight: float) -> None:
        """sums[name][start : start + len(values)] += weight · values (values flat)."""
        buf = self.sums.get(name)
        if buf is None:
            shape = self.shapes[name]
            buf = self.sums[name] = torch.zeros(math.prod(shape) if shape else 1, dtype=self.dtype)
        buf[start : start + values.numel()].add_(values.to(self.dtype), alpha=weight)

    def commit(self, names: Iterable[str], num_samples: int, sq: Mapping[str, float] | None = None) -> None:
        """Count one complete update that carried `names`, with its squared norm per tensor if known."""
        for name in names:
            self.counts[name] = self.counts.get(name, 0) + num_samples
            if sq is not None:
                self.energy[name] = self.energy.get(name, 0.0) + num_samples * sq.get(name, 0.0)
        self.total_samples += num_samples
        self.num_updates += 1

    def retract(self, names: Iterable[str], num_samples: int, sq: Mapping[str, float] | None = None) -> None:
        """Undo `commit` of an update whose blocks were already subtracted from the sums again."""
        for name in names:
            left = self.counts.get(name, 0) - num_samples
            if left <= 0:
                self.counts.pop(name, None)
                self.sums.pop(name, None)
                self.energy.pop(name, None)
            else:
                self.counts[name] = left
                if sq is not None and name in self.energy:
                    self.energy[name] -= num_samples * sq.get(name, 0.0)
        self.total_samples -= num_samples
        self.num_updates -= 1

    def accept(self, delta: Mapping[str, torch.Tensor], num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError("an update must carry at least one sample")
        for name, t in delta.items():
            known = self.shapes.setdefault(name, tuple(t.shape))
            if known != tuple(t.shape):
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not match {known}")
        sq: dict[str, float] = {}
        for name, t in delta.items():
            flat = t.reshape(-1)
            self.add(name, 0, flat, float(num_samples))
            sq[name] = float(flat.double().pow(2).sum())
        self.commit(delta, num_samples, sq)

    def moments(self) -> dict[str, Moments]:
        """Per tensor: the moments of the mean Δ̄ and the weighted energy E = Σ p_k ‖Δ_k‖², without
        consuming the sums (the block scores are computed before the mean is applied)."""
        out: dict[str, Moments] = {}
        for name, c in self.counts.items():
            buf = self.sums[name]
            s1 = s2 = 0.0
            for start in range(0, buf.numel(), _CHUNK):  # float64 scalars, a chunk at a time
                part = buf[start : start + _CHUNK].to(torch.float64)
                s1 += float(part.sum())
                s2 += float(torch.dot(part, part))
            out[name] = Moments(buf.numel(), s1 / c, s2 / (c * c), self.energy.get(name, 0.0) / c)
        return out

    def drop(self, names: Iterable[str]) -> None:
        """Forget the sums of `names` (tensors that will not be applied), so `means()` skips them."""
        for name in names:
            self.sums.pop(name, None)
            self.counts.pop(name, None)

    def means(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, Δ̄) per tensor any update carried, in its shape and the sums' dtype; frees each sum."""
        for name in sorted(self.counts):
            buf = self.sums.pop(name)
            buf.div_(self.counts[name])
            yield name, buf.reshape(self.shapes[name])

    def mean(self) -> dict[str, torch.Tensor]:
        """Δ̄ = Σ n_k Δ_k / Σ n_k over the updates that carried each tensor, as float32."""
        if self.num_updates == 0:
            raise ValueError("no updates were accepted")
        return {name: m.to(torch.float32) for name, m in self.means()}


def apply_delta(
    params: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], lr: float = 1.0
) -> dict[str, torch.Tensor]:
    """θ' = θ + lr · Δ for the tensors in delta; the others are returned unchanged."""
    out = dict(params)
    for name, d in delta.items():
        if name not in params:
            raise KeyError(f"delta names unknown tensor {name}")
        base = params[name]
        out[name] = (base.to(torch.float32) + lr * d.to(torch.float32)).to(base.dtype)
    return out


def l2_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    return float(sum(float(t.to(torch.float64).pow(2).sum()) for t in tensors.values()) ** 0.5)
