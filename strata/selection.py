"""Which blocks train in a round: the block scores of docs/methods.md section 2 and the selection rule,
as pure functions (the coordinator's policies call them; S3 wires them into rounds).

Policies: `full` (every block), `random` (k random blocks: FedTLU's baseline), `fedtlu` (the paper's
score), `agreement` (ours: relative update size times cross-worker agreement). Every policy keeps
the task head, and refreshes any block not trained for `refresh_every` rounds, oldest first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for hints: the settings import this module, and the CLI starts fast
    import torch


POLICIES = ("full", "random", "fedtlu", "agreement")


@dataclass(frozen=True, slots=True)
class Moments:
    """A tensor's mean update Δ̄ in summary: entries, Σ entries, ‖Δ̄‖², and E = Σ_k p_k ‖Δ_k‖²."""

    n: int
    s1: float
    s2: float
    energy: float = 0.0


def fedtlu_tensor(m: Moments) -> float:
    """S_i = ‖ΔW_i‖₂ / (√n_i · std(ΔW_i)) of one tensor, from its moments (std over its own entries).

    As docs/methods.md notes, this is sqrt(1 + mean²/var). A tensor with one entry or zero spread scores 0
    (the formula is undefined there).
    """
    if m.n < 2:
        return 0.0
    mu = m.s1 / m.n
    var = max(m.s2 / m.n - mu * mu, 0.0)
    if var <= 0.0:
        return 0.0
    return math.sqrt(m.s2) / (math.sqrt(m.n) * math.sqrt(var))


def moments_of(t: torch.Tensor) -> Moments:
    x = t.detach().double().reshape(-1)
    return Moments(x.numel(), float(x.sum()), float(x.dot(x)))


def fedtlu_scores(mean: Mapping[str, torch.Tensor], block_of: Mapping[str, str]) -> dict[str, float]:
    """FedTLU's score of every block: the sum of `fedtlu_tensor` over the block's tensors."""
    scores: dict[str, float] = {}
    for name, d in mean.items():
        block = block_of[name]
        scores[block] = scores.get(block, 0.0) + fedtlu_tensor(moments_of(d))
    return scores


@dataclass(frozen=True, slots=True)
class BlockScore:
    """What one round's aggregate says of a block."""

    fedtlu: float  # FedTLU's score (summed over the block's tensors)
    agreement: float  # ours: relative · consensus
    update_norm: float  # ‖Δ̄‖
    relative: float  # ‖Δ̄‖ / ‖θ‖
    consensus: float  # ‖Δ̄‖² / E = 1 − ρ, in [0, 1]: 1 when every worker moved the block alike

    def of(self, policy: str) -> float:
        """The score a policy ranks by (full and random rank by none: they get the agreement score,
        which the dashboard shows for reference)."""
        return self.fedtlu if policy == "fedtlu" else self.agreement


def block_scores(
    moments: Mapping[str, Moments], weight_sq: Mapping[str, float], block_of: Mapping[str, str]
) -> dict[str, BlockScore]:
    """Both scores of every block the aggregate touched, from per-tensor moments (Δ̄'s sums and E) and
    the squared norms of the weights the update applies to."""
    fed: dict[str, float] = {}
    m2: dict[str, float] = {}
    energy: dict[str, float] = {}
    w2: dict[str, float] = {}
    for name, m in moments.items():
        b = block_of[name]
        fed[b] = fed.get(b, 0.0) + fedtlu_tensor(m)
        m2[b] = m2.get(b, 0.0) + m.s2
        energy[b] = energy.get(b, 0.0) + m.energy
        w2[b] = w2.get(b, 0.0) + weight_sq.get(name, 0.0)
    agree = agreement_scores(m2, energy, w2)
    return {
        b: BlockScore(
            fedtlu=fed[b],
            agreement=agree[b],
            update_norm=math.sqrt(m2[b]),
            relative=math.sqrt(m2[b] / w2[b]) if w2[b] > 0 else 0.0,
            consensus=min(m2[b] / energy[b], 1.0) if energy[b] > 0 else 0.0,
        )
        for b in fed
    }


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
