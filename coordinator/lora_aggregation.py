"""Exact aggregation of a LoRA federation's adapters (docs/methods.md section 9): per adapted matrix, the
sample-weighted mean of the members' products B_k·A_k, re-factorised to the federation's rank by SVD
(strata.lowrank), in the canonical form a lower-rank member truncates. Averaging A and B separately (plain
FedAvg over the factors) is not the mean of the products, and cannot combine different ranks.

The members' factors are read back from the round's spool when the round closes (a member's update holds
its factor deltas; its factors are the base version's plus those, truncated to the rank it trained, which
its update header states). Every other tensor (a classifier's head) takes the streaming mean as usual.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from coordinator import spool
from coordinator.aggregators import Aggregator
from coordinator.ingest import RoundSums, blocks_of
from coordinator.updates import Spooled
from strata.adapters import pairs
from strata.lowrank import factorise


@dataclass(frozen=True, slots=True)
class Member:
    path: Path
    weight: float


class ProductAggregator(Aggregator):
    """The weighted mean of B_k·A_k per adapted matrix, re-factorised to `rank` (see the module docstring).
    `base`: the federation's tensors at the round's base version (read, never written, before `result`)."""

    def __init__(self, sums: RoundSums, base: Mapping[str, torch.Tensor], rank: int, seed: int = 0) -> None:
        super().__init__(sums)
        self.base = base
        self.rank = rank
        self.seed = seed
        self.modules = pairs(sorted(sums.expected))  # adapted module -> (its lora_A, its lora_B)
        self.factor_of = {t: m for m, ab in self.modules.items() for t in ab}
        self.members: dict[str, Member] = {}
        self.lock = threading.Lock()
        self.steps: dict[str, torch.Tensor] = {}
        #: per adapted module's lora_A tensor: the share of ‖mean B·A‖² beyond the rank (after `result`)
        self.discarded: dict[str, float] = {}

    def accept(self, u: Spooled) -> None:
        super().accept(u)
        with self.lock:
            self.members[u.key] = Member(u.path, float(u.num_samples))

    def retract(self, u: Spooled) -> None:
        super().retract(u)
        with self.lock:
            self.members.pop(u.key, None)

    def result(self) -> Iterator[tuple[str, torch.Tensor]]:
        factors = [self._factors(m) for m in self.members.values()]
        for name, mean in self.sums.means():
            module = self.factor_of.get(name)
            if module is None:
                yield name, mean
                continue
            if name not in self.steps:
                self._combine(module, factors)
            yield name, self.steps.pop(name)

    def _factors(self, m: Member) -> tuple[float, int, dict[str, torch.Tensor]]:
        """(weight, rank trained, {factor tensor: its delta}) of one member's spooled update."""
        header = next(spool.read(m.path)).header
        flat: dict[str, torch.Tensor] = {}
        for name, start, values in blocks_of(m.path, self.sums.expected):
            if name in self.factor_of:
                buf = flat.get(name)
                if buf is None:
                    buf = flat[name] = torch.zeros(math.prod(self.sums.shapes[name]), dtype=torch.float32)
                buf[start : start + values.numel()] = values.view(-1)
        deltas = {n: t.view(self.sums.shapes[n]) for n, t in flat.items()}
        return m.weight, header.lora_rank or self.rank, deltas

    def _combine(self, module: str, factors: list[tuple[float, int, dict[str, torch.Tensor]]]) -> None:
        a_name, b_name = self.modules[module]
        a0 = self.base[a_name].detach().to("cpu", torch.float32).clone()
        b0 = self.base[b_name].detach().to("cpu", torch.float32).clone()
        bs, as_, weights = [], [], []
        for weight, rank, deltas in factors:
            if a_name in deltas and b_name in deltas:
                bs.append((b0 + deltas[b_name])[:, :rank])
                as_.append((a0 + deltas[a_name])[:rank])
                weights.append(weight)
        if not weights:  # no member carried this matrix: it stays as it is
            self.steps[a_name], self.steps[b_name] = torch.zeros_like(a0), torch.zeros_like(b0)
            return
        f = factorise(bs, as_, weights, self.rank, seed=self.seed)
        self.steps[a_name], self.steps[b_name] = f.A - a0, f.B - b0
        self.discarded[a_name] = f.discarded
