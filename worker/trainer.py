"""Local fine-tuning: one round's task on this rank (AdamW, optionally FedProx) and the delta it produced."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from strata.adapters import RankMask
from strata.data import Example
from strata.layers import set_trainable
from strata.member.replica import Replica, TrainResult
from strata.modeling import (
    autocast,
    batches,
    count_correct,
    global_tensors,
    load_tensors,
    model_inputs,
    task_of,
)
from strata.serde import RoundTask, TrainingConfig
from worker import ranks
from worker.errors import WorkerError
from worker.local_dp import LocalDPConfig, PrivateSteps, poisson_batches

log = logging.getLogger("strata.worker")

P = ParamSpec("P")
R = TypeVar("R")

# Dropout draws from torch's process-wide generator, which `train` seeds per (seed, round, worker).
# Workers that run as threads of one process (in-process tests, benchmarks, applications embedding a
# worker) would otherwise interleave their draws and train differently from run to run. A worker
# process trains one round at a time anyway, so it never waits on this.
_SEEDED_TRAINING = threading.Lock()


def _taking_turns(fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn` holding the process's seeded-training lock."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with _SEEDED_TRAINING:
            return fn(*args, **kwargs)

    return wrapped


def train_round(
    replica: Replica,
    examples: Sequence[Example],
    task: RoundTask,
    rank: ranks.Rank | None,
    assets: Path,
    worker: str,
    progress: bool = False,
    local_dp: LocalDPConfig | None = None,
    lora_rank: int = 0,
) -> TrainResult:
    """Train one round's task: the entry point of a worker and of every rank of a torchrun worker.

    `lora_rank` (a LoRA federation's worker that trains a lower rank than the federation's): the adapters
    train as rank-`lora_rank` truncations (strata.adapters.RankMask), and the update says so.

    Only the task's blocks train (the rest get no gradients and no optimizer state). Under torchrun,
    rank 0 announces the round to the other ranks and every rank takes rank 0's weights, after the
    blocks were checked, so a task this model cannot train stops rank 0 before it announces anything.
    """
    try:
        trainable = set_trainable(replica.model, replica.bmap, task.blocks)
    except ValueError as exc:
        raise WorkerError(f"round {task.round}: {exc}") from None
    if rank is not None:
        ranks.start_round(rank, replica.model, assets, task)
    leader = rank is None or rank.leader
    if task.blocks and leader:
        log.info(
            "round %d trains %s (%.1fM of %.1fM parameters)",
            task.round,
            ", ".join(task.blocks),
            trainable / 1e6,
            sum(replica.bmap.sizes.values()) / 1e6,
        )
    with RankMask(replica.model, lora_rank) if lora_rank else contextlib.nullcontext():
        result = train(
            replica.model,
            replica.tokenizer,
            examples,
            task.config,
            task.round,
            device=replica.device,
            progress=progress and leader,
            label=f"{worker} round {task.round}",
            worker=worker,
            local_dp=local_dp,
        )
    return dataclasses.replace(result, lora_rank=lora_rank) if lora_rank else result


class Proximal:
    """FedProx's proximal term μ/2·‖θ − θ_t‖² (Li et al. 2020) over the trained tensors `params`, θ_t their
    values now; one copy of them is kept, on their device and in their dtype."""

    def __init__(self, params: Sequence[torch.nn.Parameter], mu: float) -> None:
        self.params = list(params)
        self.anchor = [p.detach().clone() for p in self.params]
        self.mu = mu

    @torch.no_grad()
    def add_gradient(self) -> None:
        """Add the term's gradient μ(θ − θ_t) to every trained tensor's gradient (after backward, so
        under DDP after the all-reduce: every rank adds the same, and the replicas stay identical)."""
        params: list[torch.Tensor] = []
        anchor: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for p, a in zip(self.params, self.anchor, strict=True):
            if p.grad is not None:  # a tensor the loss did not reach does not step either
                params.append(p.detach())
                anchor.append(a)
                grads.append(p.grad)
        if grads:
            torch._foreach_add_(grads, torch._foreach_sub(params, anchor), alpha=self.mu)


@_taking_turns
def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    config: TrainingConfig,
    round_number: int,
    device: str = "cpu",
    progress: bool = True,
    label: str = "train",
    worker: str = "",
    local_dp: LocalDPConfig | None = None,
) -> TrainResult:
    """Fine-tune in place from the current weights; return Δ = θ_local − θ_start for every parameter.

    A classifier learns the examples' labels; a causal LM (``task_of``) learns to predict each next
    token of the texts, padding excluded. Shuffling and dropout are seeded from (seed, round, worker),
    so a round can be reproduced, also when workers train in threads of one process (they take turns).
    With ``config.prox_mu`` > 0 each step also pulls the trained tensors
    toward θ_start (FedProx); with 0 nothing of it is computed. With `local_dp`, DP-SGD (worker/local_dp.py):
    Poisson-sampled batches, per-example clipping and noise, and the records' ε in the result.
    """
    if not examples:
        raise ValueError("no training examples")
    started = time.monotonic()
    task = task_of(model)
    base = {name: t.detach().to("cpu", torch.float32, copy=True) for name, t in global_tensors(model).items()}
    model.to(torch.device(device))  # type: ignore[arg-type]
    model.train()
    # under torchrun every rank trains its shard of the examples, the same number of steps, and DDP
    # averages the gradients, so the replicas stay identical and rank 0's Δ stands for all of them
    world = ranks.active()
    mine = ranks.shard(list(examples))
    net: torch.nn.Module = DistributedDataParallel(model) if world else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    prox = Proximal(trainable, config.prox_mu) if config.prox_mu else None
    seed = local_seed(config.seed, round_number, worker) + (dist.get_rank() if world else 0)
    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed)  # the order of examples
    world_size = dist.get_world_size() if world else 1
    steps_per_epoch = math.ceil(len(examples) / (config.batch_size * world_size))
    total = steps_per_epoch * config.local_epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    private = PrivateSteps(local_dp, len(mine), config, total, world, round_number) if local_dp else None
    if private is not None:
        net, opt = private.wrap(model, opt)
        stream = poisson_batches(mine, private.rate, total, gen)
    else:
        stream = shuffled_batches(mine, config.batch_size, total, gen)
    loss_sum, correct, seen, step = 0.0, 0, 0, 0
    bar = tqdm(total=total, desc=label, unit="step", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for batch in stream:
            step += 1
            bar.update(1)
            if not batch:  # an empty Poisson batch (local DP-SGD) releases a noise-only step
                assert private is not None
                private.noise_only(trainable)
                continue
            enc, labels = model_inputs(task, tokenizer, batch, config.max_seq_len, device)
            if private is not None:
                enc = private.inputs(enc)
            with autocast(device):
                out = net(**enc, labels=labels)
            hits, count = count_correct(task, out.logits.detach(), labels)
            if count or world:  # a causal LM batch of one-token texts predicts nothing: no loss to step on
                opt.zero_grad(set_to_none=True)  # (under DDP every rank steps together: a zero loss then)
                (out.loss if count else out.logits.sum() * 0.0).backward()
                if prox is not None:
                    prox.add_gradient()
                opt.step()
            if count:
                loss_sum += float(out.loss.detach()) * count
                correct += hits
                seen += count
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}")
    finally:
        bar.close()
        if private is not None:
            private.unwrap()
    model.eval()
    ranks.check_in_sync(model, device)
    loss_sum, correct_f, seen_f = ranks.all_sum([loss_sum, float(correct), float(seen)], device)
    correct, seen = int(correct_f), int(seen_f)
    # only what was trained travels: frozen tensors (requires_grad False) did not move
    delta = {
        name: p.detach().to("cpu", torch.float32) - base[name]
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    load_tensors(
        model, base
    )  # back to exactly the version we were given: the model always holds a global version
    return TrainResult(
        delta,
        len(examples),
        step,
        loss_sum / max(seen, 1),
        correct / max(seen, 1),
        time.monotonic() - started,
        *(private.spend() if private is not None else (0.0, 0.0)),
    )


def shuffled_batches(
    items: Sequence[Example], size: int, steps: int, gen: torch.Generator
) -> Iterator[list[Example]]:
    """`steps` batches of `size`, a fresh seeded shuffle each epoch."""
    step = 0
    while step < steps:
        order = torch.randperm(len(items), generator=gen).tolist()
        for batch in batches(items, size, order):
            if step >= steps:
                return
            yield list(batch)
            step += 1


def local_seed(seed: int, round_number: int, worker: str) -> int:
    """A distinct, reproducible seed for one worker's training in one round."""
    return (seed * 1_000_003 + round_number * 7_919 + zlib.crc32(worker.encode())) % (2**63)
