"""Which blocks train in a round: the block scores of methods.md section 2 and the selection rule,
as pure functions (the coordinator's policies call them; S3 wires them into rounds).

Policies: `full` (every block), `random` (k random blocks: FedTLU's baseline), `fedtlu` (the paper's
score), `agreement` (ours: relative update size times cross-worker agreement). Every policy keeps
the task head, and refreshes any block not trained for `refresh_every` rounds, oldest first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import torch

POLICIES = ("full", "random", "fedtlu", "agreement")


def fedtlu_scores(mean: Mapping[str, torch.Tensor], block_of: Mapping[str, str]) -> dict[str, float]:
    """S_i = ‖ΔW_i‖₂ / (√n_i · std(ΔW_i)) per tensor of the aggregated update, summed per block.

    As methods.md notes, with std over the tensor's own entries S_i = sqrt(1 + mean²/var): implemented as
    stated. A tensor with one entry or zero spread scores 0 (the formula is undefined there).
    """
    scores: dict[str, float] = {}
    for name, d in mean.items():
        x = d.detach().double().reshape(-1)
        n = x.numel()
        std = float(x.std(unbiased=False)) if n > 1 else 0.0
        s = float(x.norm()) / (math.sqrt(n) * std) if std > 0 else 0.0
        block = block_of[name]
        scores[block] = scores.get(block, 0.0) + s
    return scores


def agreement_scores(
    mean_sq: Mapping[str, float], energy: Mapping[str, float], weight_sq: Mapping[str, float]
) -> dict[str, float]:
    """I = (‖Δ̄‖ / ‖θ‖) · (‖Δ̄‖² / E) per block, from block sums of ‖Δ̄‖², E = Σ p_k ‖Δ_k‖² and ‖θ‖².

    High when the federation moves the block a lot relative to its size and in the same direction.
    A block with no energy or no weight scores 0.
    """
    out: dict[str, float] = {}
    for block, m2 in mean_sq.items():
        e, w2 = energy.get(block, 0.0), weight_sq.get(block, 0.0)
        out[block] = math.sqrt(m2 / w2) * (m2 / e) if e > 0 and w2 > 0 else 0.0
    return out


def select(
    policy: str,
    blocks: Sequence[str],
    head: Sequence[str],
    scores: Mapping[str, float],
    k: int,
    round_number: int,
    last_trained: Mapping[str, int],
    refresh_every: int,
    sizes: Mapping[str, int] | None = None,
    budget: int = 0,
    rng: random.Random | None = None,
) -> list[str]:
    """The blocks to train this round, in model order.

    `k` counts the non-head blocks chosen (0: all); with `budget` > 0, blocks are added by score
    while their total size (`sizes`, in elements or bytes) stays within it instead. Head blocks always
    train. Blocks whose last training round is `refresh_every` or more rounds ago are always taken, so
    none starves, even beyond k or the budget.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if k < 0 or refresh_every < 1 or budget < 0:
        raise ValueError("k and budget must be >= 0 and refresh_every >= 1")
    body = [b for b in blocks if b not in head]
    if policy == "full" or (k == 0 and budget == 0) or k >= len(body):
        return list(blocks)
    due = sorted(
        (b for b in body if round_number - last_trained.get(b, 0) >= refresh_every),
        key=lambda b: (last_trained.get(b, 0), blocks.index(b)),
    )
    if policy == "random":
        rest = [b for b in body if b not in due]
        (rng or random.Random(round_number)).shuffle(rest)
        ranked = rest
    else:
        ranked = sorted(
            (b for b in body if b not in due), key=lambda b: (-scores.get(b, 0.0), blocks.index(b))
        )
    chosen = list(due)  # the starvation bound outranks k and the budget
    used = sum((sizes or {}).get(b, 0) for b in chosen)
    for b in ranked:
        if budget:
            size = (sizes or {}).get(b, 0)
            if used + size > budget:
                continue
            used += size
        elif len(chosen) >= k:
            break
        chosen.append(b)
    keep = set(chosen) | set(head)
    return [b for b in blocks if b in keep]
