"""Key blocks at a parent federation: each member's weight α per key block, and the attentive aggregate
κ-step Σ_c α_c Δ_c (docs/methods.md section 5; the math is in strata/hierarchy.py).

The weights need each member's cosine to the round's mean of that block, which the close pass measures
(coordinator/close_pass.py): the mean must be known first, so the weighted combination is one more read
of the spooled updates, of which only the key blocks' tensors are kept (they are a few layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from coordinator.divergence import RoundDivergence
from coordinator.ingest import blocks_of
from coordinator.updates import Spooled
from strata.frames import Expected
from strata.hierarchy import attention_weights
from strata.layers import BlockMap


@dataclass
class KeyAggregate:
    """The round's aggregate of its key-block tensors, and the weights behind it (rows for key_weights)."""

    means: dict[str, torch.Tensor] = field(default_factory=dict)  # flat, per key tensor: Σ α_c Δ_c
    rows: list[dict[str, Any]] = field(default_factory=list)


def weights(
    accepted: Sequence[Spooled],
    div: RoundDivergence | None,
    blocks: Sequence[str],
    bmap: BlockMap,
    temperature: float,
) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Per key block, per member that carried it: (α, cos). τ = 0 (or no cosines) gives n_c / Σ n."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for block in blocks:
        tensors = set(bmap[block].tensors)
        carriers = [u for u in accepted if u.tensors & tensors]
        if not carriers:
            continue
        cos: list[float | None] = []
        for u in carriers:
            w = div.workers.get(u.key) if div is not None else None
            cos.append(w.blocks.get(block, (0.0, None))[1] if w is not None else None)
        alpha = attention_weights([float(u.num_samples) for u in carriers], cos, temperature)
        out[block] = {u.key: (a, c) for u, a, c in zip(carriers, alpha, cos, strict=True)}
    return out


def attend(
    accepted: Sequence[Spooled],
    alpha: dict[str, dict[str, tuple[float, float | None]]],
    bmap: BlockMap,
    expected: dict[str, Expected],
) -> dict[str, torch.Tensor]:
    """Σ_c α_c Δ_c for every tensor of the key blocks, from the spool (float64 sums), renormalised over the
    members that carried each tensor."""
    block_of = {t: b for b in alpha for t in bmap[b].tensors}
    sums: dict[str, torch.Tensor] = {}
    total: dict[str, float] = {}
    for u in accepted:
        carried: set[str] = set()
        for name, start, values in blocks_of(u.path, expected):
            block = block_of.get(name)
            if block is None or u.key not in alpha[block]:
                continue
            a = alpha[block][u.key][0]
            buf = sums.get(name)
            if buf is None:
                buf = sums[name] = torch.zeros(math.prod(expected[name].shape), dtype=torch.float64)
            buf[start : start + values.numel()] += a * values.to(torch.float64)
            if name not in carried:
                carried.add(name)
                total[name] = total.get(name, 0.0) + a
    return {n: (b / total[n]).to(torch.float32) for n, b in sums.items() if total[n] > 0}


def key_aggregate(
    accepted: Sequence[Spooled],
    div: RoundDivergence | None,
    blocks: Sequence[str],
    bmap: BlockMap,
    expected: dict[str, Expected],
    attention: bool,
    temperature: float,
) -> KeyAggregate:
    """The weights recorded for every key block, and (attention with τ > 0 and two or more members) the
    attentive aggregate that replaces the mean of the key blocks' tensors."""
    tau = temperature if attention else 0.0
    alpha = weights(accepted, div, blocks, bmap, tau)
    rows = [
        dict(update_id=u.update_id, block=block, weight=per[u.key][0], cosine=per[u.key][1])
        for block, per in alpha.items()
        for u in accepted
        if u.key in per
    ]
    attentive = attention and tau > 0 and len(accepted) > 1 and alpha
    means = attend(accepted, alpha, bmap, expected) if attentive else {}
    return KeyAggregate(means, rows)
