"""User-level differential privacy of the released models (docs/methods.md section 6), as pure functions.

DP-FedAvg (McMahan et al., 2018): every update is clipped to L2 norm S, the clipped updates are summed
with equal weights, Gaussian noise N(0, (z·S)²) is added to the sum, and the sum is divided by the
expected number of participants m (fixed, not the realised count). Adaptive clipping (Andrew et al.,
2021) moves S towards the γ-quantile of the update norms from a noised count of the updates that were
*not* clipped, and splits the noise budget between the count and the update so that the pair costs
what z alone would. The privacy accounting itself is in strata.accountant (a maintained library).
"""

from __future__ import annotations

import math
import secrets

import torch

#: the share of the noise budget's precision (z^-2) the adaptive clip's count takes by default
COUNT_SHARE = 0.1


def clip_factor(norm: float, clip: float) -> float:
    """min(1, S / ‖Δ‖): the factor that brings an update of L2 norm `norm` within `clip` (pure)."""
    if clip <= 0:
        raise ValueError(f"the clip norm must be positive, not {clip}")
    if not math.isfinite(norm) or norm < 0:
        raise ValueError(f"an update norm must be finite and non-negative, not {norm}")
    return 1.0 if norm <= clip else clip / norm


def expected_participants(sampling_rate: float, members: int) -> float:
    """m = q · N, the fixed denominator of a DP round over N members sampled with rate q (at least 1)."""
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], not {sampling_rate}")
    return max(sampling_rate * members, 1.0)


def default_count_noise(noise_multiplier: float, expected: float) -> float:
    """σ_b when the operator sets none: Andrew et al.'s m/20, but at least the σ_b that takes COUNT_SHARE
    of the budget's precision, z / (2·√COUNT_SHARE), so a small federation keeps a valid update noise."""
    return max(expected / 20.0, noise_multiplier / (2.0 * math.sqrt(COUNT_SHARE)))


def update_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update's noise multiplier when the unclipped count is released
    with noise σ_b, so that the pair costs what z alone would (Andrew et al., 2021, Theorem 1)."""
    if noise_multiplier <= 0:
        raise ValueError(f"the noise multiplier must be positive, not {noise_multiplier}")
    if count_noise <= noise_multiplier / 2:
        raise ValueError(
            f"the count's noise σ_b = {count_noise:g} must exceed z/2 = {noise_multiplier / 2:g}, or the update "
            "would need infinite noise; raise dp_count_noise"
        )
    return (noise_multiplier**-2 - (2.0 * count_noise) ** -2) ** -0.5


def next_clip(clip: float, unclipped: float, expected: float, quantile: float, lr: float) -> float:
    """C ← C · exp(−η · (b̄ − γ)), b̄ = unclipped / m, `unclipped` being Σ_k b_k + N(0, σ_b²) (already
    noised): b_k = 1 when update k was *not* clipped. When more than γ of the updates fit under C, b̄ > γ
    and C shrinks; when fewer do, it grows (geometric update, Andrew et al. 2021, Algorithm 1)."""
    b = unclipped / expected
    return clip * math.exp(-lr * (b - quantile))


def noise_generator() -> torch.Generator:
    """A torch generator seeded from the operating system's cryptographic source, never stored: the noise
    of a round cannot be recomputed from anything the coordinator keeps."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def gaussian(numel: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """numel draws of N(0, std²), float64 (the sums are float32; the noise is added before rounding)."""
    return torch.normal(0.0, std, size=(numel,), generator=generator, dtype=torch.float64)
