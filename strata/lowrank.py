"""Exact aggregation of LoRA adapters of possibly different ranks (FlexLoRA, Bai et al. 2024), pure math.

Client k holds ΔW_k = B_k A_k (B_k: d_out × r_k, A_k: r_k × d_in, r_k ≤ r). Averaging the B's and the
A's separately is not the mean of the products (mean(B) mean(A) ≠ mean(B A)), and factors of different ranks
cannot be averaged at all. Here the weighted mean M = Σ w_k B_k A_k / Σ w_k is factorised by its SVD and
truncated to rank r, the best rank-r approximation of M (Eckart–Young), in the canonical form
B = U_r diag(σ), A = V_rᵀ:
a client of rank r_k starts from the first r_k columns of B and rows of A, the best rank-r_k approximation.
All arithmetic is float64 on the CPU; results are float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Method = Literal["auto", "stacked", "dense", "randomised"]

RTOL = 1e-10  # σ_i ≤ RTOL·‖B_s‖_F‖A_s‖_F counts as zero: B column zeroed, A row replaced
OVERSAMPLE = 10  # extra columns of the randomised range finder
POWER_ITERS = 4  # subspace iterations of the randomised range finder
_ROW_CHUNK = 1024  # rows of M formed at a time for its exact Frobenius norm in the randomised method


@dataclass(frozen=True, slots=True)
class Factors:
    """A rank-`rank` factorisation B @ A of M in canonical form (float32, CPU).

    B: d_out × rank, equal to U_r diag(σ); A: rank × d_in with orthonormal rows (V_rᵀ); singular: σ (rank,),
    descending, zero where M has no more rank; discarded: share of ‖M‖_F² beyond the kept rank
    (0.0 when M = 0); method: "stacked", "dense" or "randomised".
    """

    B: torch.Tensor
    A: torch.Tensor
    singular: torch.Tensor
    discarded: float
    method: str


def _check(
    Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], weights: Sequence[float]
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """Validate client factors and weights; return float64 CPU copies and normalised weights."""
    if not Bs:
        raise ValueError("no clients: Bs is empty")
    if not (len(Bs) == len(As) == len(weights)):
        raise ValueError(f"length mismatch: {len(Bs)} B's, {len(As)} A's, {len(weights)} weights")
    d_out, d_in = Bs[0].shape[0], As[0].shape[-1]
    bs, as_ = [], []
    for k, (b, a, w) in enumerate(zip(Bs, As, weights, strict=True)):
        if b.ndim != 2 or a.ndim != 2:
            raise ValueError(
                f"client {k}: B and A must be 2-D, got shapes {tuple(b.shape)}, {tuple(a.shape)}"
            )
        if not (b.is_floating_point() and a.is_floating_point()):
            raise ValueError(f"client {k}: B and A must be floating-point tensors")
        if b.shape[1] != a.shape[0] or b.shape[1] < 1:
            raise ValueError(
                f"client {k}: inner dimensions of B {tuple(b.shape)} and A {tuple(a.shape)} differ"
            )
        if b.shape[0] != d_out or a.shape[1] != d_in:
            raise ValueError(
                f"client {k}: B A is {b.shape[0]} × {a.shape[1]}, client 0's is {d_out} × {d_in}"
            )
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"client {k}: weight must be finite and positive, got {w}")
        b64, a64 = b.detach().to("cpu", torch.float64), a.detach().to("cpu", torch.float64)
        if not (torch.isfinite(b64).all() and torch.isfinite(a64).all()):
            raise ValueError(f"client {k}: B or A has non-finite entries")
        bs.append(b64)
        as_.append(a64)
    total = math.fsum(weights)
    return bs, as_, [w / total for w in weights]


def _stack(
    Bs: list[torch.Tensor], As: list[torch.Tensor], wn: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """M = B_s A_s with B_s = [w̃_1 B_1, …, w̃_K B_K] and A_s = [A_1; …; A_K]."""
    return torch.cat([w * b for w, b in zip(wn, Bs, strict=True)], dim=1), torch.cat(As, dim=0)


def weighted_product(
    Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """Dense M = Σ_k w_k B_k A_k / Σ_k w_k (d_out × d_in, float32); for tests and small matrices."""
    b_s, a_s = _stack(*_check(Bs, As, weights))
    return (b_s @ a_s).to(torch.float32)


def _svd_stacked(b_s: torch.Tensor, a_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD of B_s A_s without forming it: QR of B_s and A_sᵀ, SVD of the small R_B R_Aᵀ."""
    q_b, r_b = torch.linalg.qr(b_s)
    q_a, r_a = torch.linalg.qr(a_s.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    return q_b @ u, s, vh @ q_a.T


def _svd_randomised(
    b_s: torch.Tensor, a_s: torch.Tensor, rank: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomised SVD (Halko et al. 2011) of B_s A_s, applied as the product of its factors.

    torch.svd_lowrank draws from the global generator; this one is seeded by `gen`, so results reproduce.
    """
    width = min(rank + OVERSAMPLE, b_s.shape[0], a_s.shape[1])
    omega = torch.randn(a_s.shape[1], width, generator=gen, dtype=torch.float64)
    q = torch.linalg.qr(b_s @ (a_s @ omega)).Q
    for _ in range(POWER_ITERS):
        z = torch.linalg.qr(a_s.T @ (b_s.T @ q)).Q
        q = torch.linalg.qr(b_s @ (a_s @ z)).Q
    u, s, vh = torch.linalg.svd((q.T @ b_s) @ a_s, full_matrices=False)
    return q @ u, s, vh


def _frobenius_sq(b_s: torch.Tensor, a_s: torch.Tensor) -> float:
    """Exact ‖B_s A_s‖_F², forming M a block of rows at a time (cheaper than the Gram trace when Σr_k > d)."""
    return math.fsum(
        float((b_s[i : i + _ROW_CHUNK] @ a_s).square().sum()) for i in range(0, b_s.shape[0], _ROW_CHUNK)
    )


def _complete(rows: torch.Tensor, missing: int, gen: torch.Generator) -> torch.Tensor:
    """`missing` orthonormal rows orthogonal to the orthonormal `rows`, from Gaussian draws of `gen`.

    LoRA with a zero A row and a zero B column gets zero gradient on both: directions M lacks must stay live.
    """
    g = torch.randn(missing, rows.shape[1], generator=gen, dtype=torch.float64)
    for _ in range(2):  # project twice: one Gram–Schmidt pass loses orthogonality in floating point
        g = g - (g @ rows.T) @ rows
    return torch.linalg.qr(g.T).Q.T


def factorise(
    Bs: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    weights: Sequence[float],
    rank: int,
    *,
    dense_limit: int = 4096,
    seed: int = 0,
    method: Method = "auto",
) -> Factors:
    """Best rank-`rank` factorisation of M = Σ w_k B_k A_k / Σ w_k, in canonical form.

    Method ("auto" picks): "stacked" (exact, never forms M) when Σ r_k ≤ min(d_out, d_in), the usual case:
    then its QRs cost no more than the factors' size; else "dense" (form M, full SVD) when
    min(d_out, d_in) ≤ dense_limit; else "randomised" (oversampled range finder with power iterations,
    seeded by `seed`; exact when M's rank is at most rank + OVERSAMPLE). Any method may be forced.
    ‖M‖_F² is exact in every method, so `discarded` is exact for "stacked" and "dense" and, for
    "randomised" (whose σ_i never exceed the true ones), an upper bound. Where M has rank below `rank`,
    the missing rows of A are orthonormal directions orthogonal to the others (drawn with `seed`) and the
    matching B columns zero, so B @ A is still M's truncation. Each row of A has its largest-magnitude
    entry positive.
    Raises ValueError on empty or mismatched inputs, non-positive weights, rank < 1,
    rank > min(d_out, d_in) (A's rows could not be orthonormal) or a client rank r_k > rank.
    """
    bs, as_, wn = _check(Bs, As, weights)
    d_out, d_in = bs[0].shape[0], as_[0].shape[1]
    if rank < 1 or rank > min(d_out, d_in):
        raise ValueError(f"rank must be in [1, min(d_out, d_in) = {min(d_out, d_in)}], got {rank}")
    for k, b in enumerate(bs):
        if b.shape[1] > rank:
            raise ValueError(f"client {k}: its rank {b.shape[1]} exceeds the federation rank {rank}")
    if method not in ("auto", "stacked", "dense", "randomised"):
        raise ValueError(f"unknown method {method!r}")
    b_s, a_s = _stack(bs, as_, wn)
    if method == "auto":
        if b_s.shape[1] <= min(d_out, d_in):
            method = "stacked"
        else:
            method = "dense" if min(d_out, d_in) <= dense_limit else "randomised"
    gen = torch.Generator().manual_seed(seed)
    if method == "randomised":
        u, s, vh = _svd_randomised(b_s, a_s, rank, gen)
        total = _frobenius_sq(b_s, a_s)
    else:
        u, s, vh = (
            _svd_stacked(b_s, a_s)
            if method == "stacked"
            else torch.linalg.svd(b_s @ a_s, full_matrices=False)
        )
        total = math.fsum(float(x) ** 2 for x in s)  # every σ of M is known: exact ‖M‖_F²
    # round-off in σ scales with ‖B_s‖_F ‖A_s‖_F ≥ σ_1 (clients that cancel leave σ_1 at round-off level)
    tol = RTOL * float(b_s.norm()) * float(a_s.norm())
    keep = min(rank, int((s > tol).sum()))
    kept_sq = math.fsum(float(x) ** 2 for x in s[:keep])
    if keep == 0 or total <= 0:  # M is zero, to round-off
        discarded = 0.0
    elif method == "randomised":
        discarded = min(1.0, max(0.0, 1.0 - kept_sq / total))
    else:  # the tail sum avoids the cancellation in 1 − kept/total
        discarded = min(1.0, math.fsum(float(x) ** 2 for x in s[keep:]) / total)
    sigma = torch.zeros(rank, dtype=torch.float64)
    sigma[:keep] = s[:keep]
    a = torch.cat([vh[:keep], _complete(vh[:keep], rank - keep, gen)]) if keep < rank else vh[:keep]
    b = torch.zeros(d_out, rank, dtype=torch.float64)
    b[:, :keep] = u[:, :keep] * s[:keep]
    sign = torch.sign(a.gather(1, a.abs().argmax(dim=1, keepdim=True)).squeeze(1))
    a, b = a * sign[:, None], b * sign
    f32 = torch.float32
    return Factors(b.to(f32).contiguous(), a.to(f32).contiguous(), sigma.to(f32), discarded, method)


def truncate(B: torch.Tensor, A: torch.Tensor, rank_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's start factors (B[:, :rank_k], A[:rank_k]), as contiguous copies.

    For factors in canonical form (factorise, canonicalise) this is the best rank-rank_k approximation of
    B @ A; for arbitrary factors it is merely a slice.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"B {tuple(B.shape)} and A {tuple(A.shape)} are not a factor pair")
    if not 1 <= rank_k <= B.shape[1]:
        raise ValueError(f"rank_k must be in [1, {B.shape[1]}], got {rank_k}")
    fmt = torch.contiguous_format
    return B[:, :rank_k].clone(memory_format=fmt), A[:rank_k].clone(memory_format=fmt)


def canonicalise(B: torch.Tensor, A: torch.Tensor, seed: int = 0) -> Factors:
    """Canonical form of one factor pair: factorise([B], [A], [1.0], rank=B.shape[1], seed=seed)."""
    if B.ndim != 2:
        raise ValueError(f"B must be 2-D, got shape {tuple(B.shape)}")
    return factorise([B], [A], [1.0], B.shape[1], seed=seed)
