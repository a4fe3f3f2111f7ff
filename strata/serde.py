"""Symmetric conversions between domain types and wire messages (x_to_proto / x_from_proto)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from strata.lora_spec import LoraSpec
from strata.names import DEFAULT_LOWRANK_RANK, MAX_LOWRANK_RANK
from strata.names import LORA_AGGREGATIONS as AGGREGATIONS
from strata.proto.v1 import coordinator_pb2 as pb


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """What a worker does with its local data in one round."""

    local_epochs: int = 1
    max_steps: int = 0
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    max_seq_len: int = 64
    seed: int = 0
    prox_mu: float = 0.0  # FedProx: μ of the proximal term μ/2·‖θ − θ_t‖² (0: none)


@dataclass(frozen=True, slots=True)
class RoundTask:
    round: int
    model_version: int
    model_hash: str
    deadline_unix: float
    config: TrainingConfig
    encoding: str
    total_rounds: int
    topk_fraction: float = 0.1
    blocks: tuple[str, ...] = ()  # the blocks to train; empty: every block
    local_blocks: tuple[str, ...] = ()  # key blocks a member federation keeps partly local
    residual_keep: float = 0.0  # β: the share of its own deviation a member federation keeps in them
    lowrank_rank: int = DEFAULT_LOWRANK_RANK  # the rank of the `lowrank` encoding's factors


def training_config_to_proto(c: TrainingConfig) -> pb.TrainingConfig:
    return pb.TrainingConfig(
        local_epochs=c.local_epochs,
        max_steps=c.max_steps,
        batch_size=c.batch_size,
        learning_rate=c.learning_rate,
        weight_decay=c.weight_decay,
        max_seq_len=c.max_seq_len,
        seed=c.seed,
        prox_mu=c.prox_mu,
    )


def training_config_from_proto(m: pb.TrainingConfig) -> TrainingConfig:
    """The config a task carries; ValueError for a prox_mu that is negative or not finite."""
    if not (math.isfinite(m.prox_mu) and m.prox_mu >= 0):
        raise ValueError(f"prox_mu must be finite and >= 0, not {m.prox_mu}")
    return TrainingConfig(
        local_epochs=m.local_epochs,
        max_steps=m.max_steps,
        batch_size=m.batch_size,
        learning_rate=m.learning_rate,
        weight_decay=m.weight_decay,
        max_seq_len=m.max_seq_len,
        seed=m.seed,
        prox_mu=m.prox_mu,
    )


def task_to_proto(t: RoundTask) -> pb.Task:
    return pb.Task(
        kind=pb.Task.TRAIN,
        round=t.round,
        model_version=t.model_version,
        model_hash=t.model_hash,
        deadline_unix=t.deadline_unix,
        config=training_config_to_proto(t.config),
        encoding=t.encoding,
        total_rounds=t.total_rounds,
        topk_fraction=t.topk_fraction,
        blocks=list(t.blocks),
        local_blocks=list(t.local_blocks),
        residual_keep=t.residual_keep,
        lowrank_rank=t.lowrank_rank,
    )


def task_from_proto(m: pb.Task) -> RoundTask:
    if m.kind != pb.Task.TRAIN:
        raise ValueError("only TRAIN tasks carry a round task")
    if not (0.0 <= m.residual_keep <= 1.0):
        raise ValueError(f"residual_keep must be in [0, 1], not {m.residual_keep}")
    if m.lowrank_rank > MAX_LOWRANK_RANK:
        raise ValueError(f"lowrank_rank must be at most {MAX_LOWRANK_RANK}, not {m.lowrank_rank}")
    return RoundTask(
        round=m.round,
        model_version=m.model_version,
        model_hash=m.model_hash,
        deadline_unix=m.deadline_unix,
        config=training_config_from_proto(m.config),
        encoding=m.encoding,
        total_rounds=m.total_rounds,
        topk_fraction=m.topk_fraction,
        blocks=tuple(m.blocks),
        local_blocks=tuple(m.local_blocks),
        residual_keep=m.residual_keep,
        lowrank_rank=m.lowrank_rank or DEFAULT_LOWRANK_RANK,
    )


def lora_to_proto(spec: LoraSpec) -> pb.LoraAdapter:
    return pb.LoraAdapter(
        rank=spec.rank,
        alpha=spec.alpha,
        dropout=spec.dropout,
        targets=list(spec.targets),
        modules_to_save=list(spec.modules_to_save),
        base_hash=spec.base_hash,
        aggregation=spec.aggregation,
    )


def lora_from_proto(m: pb.LoraAdapter) -> LoraSpec | None:
    """The adapter a join reply announces; None for a federation that trains the whole model. ValueError
    for values no adapter can have."""
    if not m.rank:
        return None
    if not (m.alpha > 0 and math.isfinite(m.alpha)) or not (0 <= m.dropout < 1) or not m.targets:
        raise ValueError(
            f"invalid LoRA adapter: alpha {m.alpha}, dropout {m.dropout}, targets {list(m.targets)}"
        )
    if m.aggregation not in AGGREGATIONS or not m.base_hash:
        raise ValueError(f"invalid LoRA adapter: aggregation {m.aggregation!r}, base hash {m.base_hash!r}")
    return LoraSpec(
        m.rank, m.alpha, m.dropout, tuple(m.targets), tuple(m.modules_to_save), m.base_hash, m.aggregation
    )
