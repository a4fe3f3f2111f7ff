"""Layer-wise divergence (docs/methods.md section 1), as pure functions of per-tensor sums.

For a tensor (or a block: sums over its tensors) and updates Δ_k with FedAvg weights p_k:

- update energy     E = Σ_k p_k ‖Δ_k‖²
- spread            V = Σ_k p_k ‖Δ_k − Δ̄‖² = E − ‖Δ̄‖²
- divergence        D = V / (‖Δ̄‖² + ε·E): 0 when every worker moves the same way, large when moves cancel
                    (ε relative to E, so D depends only on the directions, not on the updates' scale:
                    a tensor that barely moved is judged like one that moved a lot)
- cancelled share   ρ = V / E ∈ [0, 1], beside its noise floor 1 − Σ p_k² (K independent random directions)
- per worker        ‖Δ_k‖ and cos(Δ_k, Δ̄)

E and ‖Δ̄‖² come from the streaming pass; the per-worker dot products ⟨Δ_k, Δ̄⟩ from a second pass over the
spooled updates. With fewer than two workers V, D, ρ and the noise floor are undefined: None, not 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

EPS = 1e-12


@dataclass(frozen=True, slots=True)
class Divergence:
    energy: float  # E
    mean_sq: float  # ‖Δ̄‖²
    spread: float | None  # V
    divergence: float | None  # D
    cancelled: float | None  # ρ
    noise_floor: float | None  # 1 − Σ p_k²


def noise_floor(weights: Sequence[float]) -> float | None:
    """ρ for K independent random directions with weights p_k: 1 − Σ p_k² (None below two workers)."""
    if len(weights) < 2:
        return None
    total = sum(weights)
    return 1.0 - sum((w / total) ** 2 for w in weights)


def divergence(energy: float, mean_sq: float, weights: Sequence[float], eps: float = EPS) -> Divergence:
    """E, ‖Δ̄‖² and the FedAvg weights of the updates -> the divergence measures (D and ρ are None when
    nothing moved: E = 0)."""
    if len(weights) < 2:
        return Divergence(energy, mean_sq, None, None, None, None)
    spread = max(energy - mean_sq, 0.0)  # Jensen: E >= ‖Δ̄‖²; rounding may cross it by a hair
    return Divergence(
        energy=energy,
        mean_sq=mean_sq,
        spread=spread,
        divergence=spread / (mean_sq + eps * energy) if energy > 0 else None,
        cancelled=min(spread / energy, 1.0) if energy > 0 else None,
        noise_floor=noise_floor(weights),
    )


def by_block(
    energy: Mapping[str, float],
    mean_sq: Mapping[str, float],
    block_of: Mapping[str, str],
    weights: Sequence[float],
) -> dict[str, Divergence]:
    """Per-block measures from per-tensor E and ‖Δ̄‖² (a block's sums are the sums over its tensors)."""
    e: dict[str, float] = {}
    m: dict[str, float] = {}
    for name, value in energy.items():
        b = block_of[name]
        e[b] = e.get(b, 0.0) + value
        m[b] = m.get(b, 0.0) + mean_sq.get(name, 0.0)
    return {b: divergence(e[b], m[b], weights) for b in e}


def cosine(dot: float, sq_a: float, sq_b: float) -> float | None:
    """⟨a, b⟩ / (‖a‖ ‖b‖) from the dot product and squared norms; None when either vector is zero."""
    if sq_a <= 0 or sq_b <= 0:
        return None
    return max(-1.0, min(1.0, dot / math.sqrt(sq_a * sq_b)))


def sum_by_block(values: Mapping[str, float], block_of: Mapping[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, v in values.items():
        b = block_of[name]
        out[b] = out.get(b, 0.0) + v
    return out


def worker_alignment(
    dots: Mapping[str, float],
    sq: Mapping[str, float],
    mean_sq: Mapping[str, float],
    names: Iterable[str] | None = None,
) -> dict[str, tuple[float, float | None]]:
    """(‖Δ_k‖, cos(Δ_k, Δ̄)) per key (tensor or block) from ⟨Δ_k, Δ̄⟩, ‖Δ_k‖² and ‖Δ̄‖²."""
    keys = list(names) if names is not None else list(sq)
    return {
        k: (math.sqrt(sq.get(k, 0.0)), cosine(dots.get(k, 0.0), sq.get(k, 0.0), mean_sq.get(k, 0.0)))
        for k in keys
    }
