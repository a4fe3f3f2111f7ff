"""Local DP-SGD (docs/privacy.md): a worker that must protect single records of its own data trains with
per-example clipping and Gaussian noise (Opacus's GradSampleModule and DPOptimizer) on Poisson-sampled
batches, and reports the (ε, δ) of its records over every round it has trained. A different unit of
privacy from the coordinator's user-level DP: one record of one organisation, not one organisation.

The ledger of what the worker has spent (per round: the sampling rate q, the noise multiplier σ and the
steps) lives beside its cache and is written atomically before the update leaves, so a restart never
forgets a round it trained; a round trained twice (a retry) is counted twice. ε comes from the same
accountant as the coordinator's (strata.accountant, dp-accounting's RDP)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from strata import accountant
from strata.atomic import write_text
from strata.serde import TrainingConfig
from worker.errors import WorkerError

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

T = TypeVar("T")


@dataclass(frozen=True)
class LocalDPConfig:
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    target_epsilon: float  # 0: no budget, only a report
    ledger: Path


class Ledger:
    """What this worker's records have spent: one (q, σ, steps) per round trained."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rounds: list[tuple[float, float, int]] = []
        if path.is_file():
            doc = json.loads(path.read_text())
            self.rounds = [(float(q), float(s), int(n)) for q, s, n in doc["rounds"]]

    def events(self, extra: Sequence[tuple[float, float, int]] = ()) -> list[accountant.Event]:
        return [(q, s) for q, s, n in [*self.rounds, *extra] for _ in range(n)]

    def epsilon(self, delta: float, extra: Sequence[tuple[float, float, int]] = ()) -> float:
        return accountant.epsilon(self.events(extra), delta)

    def add(self, q: float, sigma: float, steps: int) -> None:
        self.rounds.append((q, sigma, steps))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"rounds": self.rounds}))


def poisson_batches(items: Sequence[T], rate: float, steps: int, gen: torch.Generator) -> Iterator[list[T]]:
    """`steps` batches, each holding every item independently with probability `rate` (possibly none):
    the sampling the accountant assumes."""
    for _ in range(steps):
        picked = (torch.rand(len(items), generator=gen) < rate).nonzero().view(-1).tolist()
        yield [items[i] for i in picked]


def noise_only_step(
    params: Sequence[torch.nn.Parameter], opt: torch.optim.Optimizer, std: float, expected_batch: float
) -> None:
    """An empty Poisson batch still releases a step: the noise alone, scaled as DPOptimizer scales it."""
    for p in params:
        p.grad = torch.normal(0.0, std, size=p.shape, device=p.device, dtype=p.dtype) / expected_batch
    opt.step()
    opt.zero_grad(set_to_none=True)


class PrivateSteps:
    """One round of DP-SGD: checks the set-up and the budget before training, wraps the model and the
    optimizer, and records the round in the ledger once trained."""

    def __init__(
        self,
        cfg: LocalDPConfig,
        records: int,
        config: TrainingConfig,
        steps: int,
        world: bool,
        round_number: int,
    ) -> None:
        if world:
            raise WorkerError("local DP-SGD trains in one process: run this worker without torchrun")
        if config.prox_mu:
            raise WorkerError(
                f"round {round_number}: the federation asks for FedProx (prox_mu {config.prox_mu:g}), which local "
                "DP-SGD cannot combine with its clipped gradients; run this worker without --local-dp"
            )
        self.cfg, self.steps = cfg, steps
        self.rate = min(1.0, config.batch_size / records)  # q: each record joins a step with this chance
        self.expected = max(1, round(self.rate * records))
        self.ledger = Ledger(cfg.ledger)
        if cfg.target_epsilon:
            after = self.ledger.epsilon(cfg.delta, [(self.rate, cfg.noise_multiplier, steps)])
            if after > cfg.target_epsilon:
                raise WorkerError(
                    f"local DP-SGD budget: round {round_number} would take this worker's ε to {after:.3g}, past "
                    f"its target {cfg.target_epsilon:g} (δ = {cfg.delta:g}); it trains no more"
                )

    def wrap(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[torch.nn.Module, DPOptimizer]:
        from opacus import GradSampleModule  # loaded only by a worker that trains with DP-SGD
        from opacus.optimizers import DPOptimizer

        self.module = GradSampleModule(model)
        self.positions = "position_ids" in inspect.signature(model.forward).parameters
        self.opt = DPOptimizer(
            opt,
            noise_multiplier=self.cfg.noise_multiplier,
            max_grad_norm=self.cfg.max_grad_norm,
            expected_batch_size=self.expected,
        )
        return self.module, self.opt

    def inputs(self, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch's inputs with position ids of the batch's size: the model would broadcast one row of
        them, and the position embeddings' per-example gradients need one row per example."""
        ids = enc.get("input_ids")
        if not self.positions or ids is None or "position_ids" in enc:
            return enc
        b, n = ids.shape
        return enc | {"position_ids": torch.arange(n, device=ids.device).expand(b, n)}

    def noise_only(self, params: Sequence[torch.nn.Parameter]) -> None:
        std = self.cfg.noise_multiplier * self.cfg.max_grad_norm
        noise_only_step(params, self.opt.original_optimizer, std, self.expected)

    def unwrap(self) -> None:
        """The model without Opacus's hooks and per-example gradients again."""
        self.module._close()

    def spend(self) -> tuple[float, float]:
        """Record the round; (ε, δ) of this worker's records after it."""
        self.ledger.add(self.rate, self.cfg.noise_multiplier, self.steps)
        return self.ledger.epsilon(self.cfg.delta), self.cfg.delta
