"""The `lowrank` delta encoding (PowerSGD-style, Vogels et al. 2019), pure functions of tensors and bytes.

A fine-tuning delta of a weight matrix is close to low rank, so a matrix X (m × n, every dimension but the
last folded into the rows) travels as two thin factors P (m × r) and Q (n × r) with X ≈ P Qᵀ: r(m + n)
values instead of mn. The factors are X's best rank-r approximation, found by a randomised SVD seeded
here (so an encoding repeats), and split evenly, P = U√Σ and Q = V√Σ, so both have the same scale in
bfloat16. Error feedback (strata.feedback) carries what a round leaves out into the next rounds.

On the wire a tensor is a run of blocks of whole rows; each block is independently decodable:

    uint32 r | Q as r·n shuffled bfloat16 values | the block's rows of P as r·rows shuffled bfloat16 values

so Q is repeated in every block (blocks are as large as the frame format allows: a 30522 × 384 embedding
takes three). strata.codec does the bytes; tensors for which the factors would not be smaller than int8
values (vectors, small or nearly square matrices at a high rank) it encodes as int8 instead.
"""

from __future__ import annotations

import math

import torch

from strata.names import MAX_LOWRANK_RANK as MAX_RANK  # a sanity ceiling on the rank a block may claim

MAX_BLOCK = 1 << 22  # elements per block (frames.MAX_BLOCK_ELEMENTS)
POWER_ITERS = 2  # subspace iterations of the randomised range finder
OVERSAMPLE = 8


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(rows, columns) of a tensor seen as a matrix: every dimension but the last folded into the rows;
    None for a scalar or a vector."""
    if len(shape) < 2:
        return None
    cols = shape[-1]
    return math.prod(shape) // cols if cols else 0, cols


def worth_it(shape: tuple[int, ...], rank: int) -> bool:
    """Whether rank-`rank` bfloat16 factors are smaller than the tensor's int8 values."""
    mn = matrix_shape(shape)
    if mn is None or 0 in mn or mn[1] > MAX_BLOCK:
        return False
    m, n = mn
    return 2 * rank * (m + n) < m * n


def block_rows(cols: int, rows: int) -> int:
    """Rows per block: as many as fit in one block of the frame format."""
    return max(1, min(rows, MAX_BLOCK // cols))


def factors(x: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """P (m × r) and Q (n × r) with P Qᵀ the best rank-r approximation of the matrix x (randomised SVD,
    Halko et al. 2011, with a generator of its own: torch's global one is left alone)."""
    m, n = x.shape
    r = min(rank, m, n)
    gen = torch.Generator().manual_seed(seed)
    width = min(r + OVERSAMPLE, m, n)
    omega = torch.randn(n, width, generator=gen, dtype=x.dtype)
    q = torch.linalg.qr(x @ omega).Q
    for _ in range(POWER_ITERS):
        z = torch.linalg.qr(x.T @ q).Q
        q = torch.linalg.qr(x @ z).Q
    u, s, vh = torch.linalg.svd(q.T @ x, full_matrices=False)
    root = s[:r].sqrt()
    return (q @ u[:, :r]) * root, vh[:r].T * root


def row_bands(rows: int, cols: int) -> list[tuple[int, int]]:
    """The (first, end) rows of each block of a matrix."""
    step = block_rows(cols, rows)
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def decoded_bound(n: int, cols: int) -> int:
    """The largest decompressed size of a block of n elements in rows of `cols`."""
    rows = n // max(cols, 1)
    return 4 + 2 * min(cols, MAX_RANK) * (cols + rows)


def block_size(rank: int, rows: int, cols: int) -> int:
    """The decompressed size of a block of `rows` rows at rank `rank`."""
    return 4 + 2 * rank * (cols + rows)
