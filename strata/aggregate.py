"""Aggregation math: sample-weighted FedAvg of deltas, as pure functions and a streaming accumulator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


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


class FedAvgAccumulator:
    """Accumulates n_k * delta_k one update at a time (float64 sums), so memory is one buffer per tensor."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.total_samples = 0
        self.num_updates = 0

    def accept(self, delta: Mapping[str, torch.Tensor], num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError("an update must carry at least one sample")
        for name, t in delta.items():
            buf = self._sums.get(name)
            if buf is None:
                buf = self._sums[name] = torch.zeros(t.shape, dtype=torch.float64)
                self._counts[name] = 0
            elif buf.shape != t.shape:
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not match {tuple(buf.shape)}")
            buf.add_(t.to(torch.float64), alpha=float(num_samples))
            self._counts[name] += num_samples
        self.total_samples += num_samples
        self.num_updates += 1

    def mean(self) -> dict[str, torch.Tensor]:
        """Δ̄ = Σ n_k Δ_k / Σ n_k over the updates that carried each tensor, as float32."""
        if self.num_updates == 0:
            raise ValueError("no updates were accepted")
        return {name: (buf / self._counts[name]).to(torch.float32) for name, buf in self._sums.items()}


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
