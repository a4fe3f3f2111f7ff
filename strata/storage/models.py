"""SQLAlchemy 2.0 table models for federations, workers, rounds, updates and evaluations."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class FederationState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


class RoundState(enum.StrEnum):
    OPEN = "open"
    AGGREGATING = "aggregating"
    COMPLETED = "completed"
    FAILED = "failed"


class UpdateStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    LATE = "late"


class Federation(Base):
    __tablename__ = "federations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=FederationState.CREATED.value)
    task_kind: Mapped[str] = mapped_column(String(64), default="sequence-classification")
    model_name: Mapped[str] = mapped_column(String(512), default="")
    num_labels: Mapped[int] = mapped_column(Integer, default=2)
    total_rounds: Mapped[int] = mapped_column(Integer, default=1)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    model_version: Mapped[int] = mapped_column(Integer, default=0)
    model_hash: Mapped[str] = mapped_column(String(64), default="")
    num_parameters: Mapped[int] = mapped_column(BigInteger, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # what an administrator asked for (running, paused, stopped); the coordinator follows it between rounds
    desired_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it ended (e.g. its privacy budget)
    # a sub-federation: the parent's dashboard page, as the parent's last JoinReply gave it (null: none)
    parent_dashboard_url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    workers: Mapped[list[Worker]] = relationship(back_populates="federation", order_by="Worker.id")
    rounds: Mapped[list[Round]] = relationship(back_populates="federation", order_by="Round.number")


class WorkerToken(Base):
    """A worker token issued by an administrator (only its SHA-256 is kept); revoked tokens stop working."""

    __tablename__ = "worker_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    federation_id: Mapped[int] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # the token's first characters, to recognise it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Worker(Base):
    __tablename__ = "workers"
    __table_args__ = (UniqueConstraint("federation_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    federation_id: Mapped[int] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"), index=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64), default="")
    software_version: Mapped[str] = mapped_column(String(32), default="")
    num_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    num_eval_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    joined_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # a member that is itself a federation (docs/methods.md section 5): its workers and inner rounds
    members: Mapped[int | None] = mapped_column(Integer, nullable=True)
    inner_rounds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # local DP-SGD on the worker's own records (docs/privacy.md): the (ε, δ) it reported last
    local_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    local_delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    # a LoRA federation: the rank this worker trains (null: the federation's)
    lora_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # a member federation: the address of its own dashboard page it joined with (null: none given)
    dashboard_url: Mapped[str | None] = mapped_column(String(512), nullable=True)

    federation: Mapped[Federation] = relationship(back_populates="workers")


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("federation_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    federation_id: Mapped[int] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=RoundState.OPEN.value)
    base_version: Mapped[int] = mapped_column(Integer)
    base_hash: Mapped[str] = mapped_column(String(64))
    result_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    participants: Mapped[list[Any]] = mapped_column(JSON, default=list)
    min_updates: Mapped[int] = mapped_column(Integer, default=1)
    num_updates: Mapped[int] = mapped_column(Integer, default=0)
    num_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    raw_bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    raw_bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    update_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deadline_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    aggregate_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    blocks: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # trained blocks; None: every block
    probe: Mapped[bool] = mapped_column(Boolean, default=False)
    noise_floor: Mapped[float | None] = mapped_column(Float, nullable=True)  # 1 − Σ p_k²: ρ of random moves
    # user-level differential privacy (docs/methods.md section 6): the round's mechanism and ε after it
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    dp_noise_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)  # z (the accountant's)
    dp_sampling_rate: Mapped[float | None] = mapped_column(Float, nullable=True)  # q
    dp_expected: Mapped[float | None] = mapped_column(Float, nullable=True)  # m = q · members online
    dp_clip: Mapped[float | None] = mapped_column(Float, nullable=True)  # S used in this round
    dp_next_clip: Mapped[float | None] = mapped_column(Float, nullable=True)  # adaptive: S of the next round
    dp_unclipped: Mapped[float | None] = mapped_column(Float, nullable=True)  # adaptive: noised count b
    dp_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)  # ε spent after this round

    federation: Mapped[Federation] = relationship(back_populates="rounds")
    block_outcomes: Mapped[list[RoundBlock]] = relationship(
        back_populates="round", order_by="RoundBlock.position", cascade="all, delete-orphan"
    )
    updates: Mapped[list[Update]] = relationship(back_populates="round", order_by="Update.id")
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="round", order_by="Evaluation.id")


class RoundBlock(Base):
    """One block of the model in one completed round: trained, applied, and what its update scored."""

    __tablename__ = "round_blocks"
    __table_args__ = (UniqueConstraint("round_id", "block"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    block: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)
    trained: Mapped[bool] = mapped_column(Boolean)
    applied: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # the policy's score (carried if stale)
    fresh: Mapped[bool] = mapped_column(Boolean)  # the score comes from this round's updates
    fedtlu: Mapped[float | None] = mapped_column(Float, nullable=True)
    agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    update_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    relative: Mapped[float | None] = mapped_column(Float, nullable=True)
    consensus: Mapped[float | None] = mapped_column(Float, nullable=True)
    num_elements: Mapped[int] = mapped_column(BigInteger, default=0)
    # layer-wise divergence of the block's updates (docs/methods.md section 1); null below two updates
    energy: Mapped[float | None] = mapped_column(Float, nullable=True)
    spread: Mapped[float | None] = mapped_column(Float, nullable=True)
    divergence: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancelled: Mapped[float | None] = mapped_column(Float, nullable=True)
    # a LoRA federation aggregating products: the share of the block's mean B·A beyond rank r
    lora_discarded: Mapped[float | None] = mapped_column(Float, nullable=True)

    round: Mapped[Round] = relationship(back_populates="block_outcomes")


class RoundTensor(Base):
    """One tensor's layer-wise divergence in one completed round."""

    __tablename__ = "round_tensors"
    __table_args__ = (UniqueConstraint("round_id", "tensor"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    tensor: Mapped[str] = mapped_column(String(512))
    block: Mapped[str] = mapped_column(String(64))
    num_elements: Mapped[int] = mapped_column(BigInteger, default=0)
    update_norm: Mapped[float] = mapped_column(Float)  # ‖Δ̄‖
    energy: Mapped[float] = mapped_column(Float)
    spread: Mapped[float | None] = mapped_column(Float, nullable=True)
    divergence: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancelled: Mapped[float | None] = mapped_column(Float, nullable=True)


class UpdateAlignment(Base):
    """One accepted update against the round's mean, per block or per tensor: ‖Δ_k‖ and cos(Δ_k, Δ̄)."""

    __tablename__ = "update_alignments"
    __table_args__ = (UniqueConstraint("update_id", "scope", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    update_id: Mapped[int] = mapped_column(ForeignKey("updates.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(8))  # "block" or "tensor"
    name: Mapped[str] = mapped_column(String(512))
    norm: Mapped[float] = mapped_column(Float)
    cosine: Mapped[float | None] = mapped_column(Float, nullable=True)


class ParentRound(Base):
    """A round of the parent federation that this sub-federation served (docs/methods.md section 5):
    the parent's version it started from, its own version made from it, and whether its update went up."""

    __tablename__ = "parent_rounds"
    __table_args__ = (UniqueConstraint("federation_id", "parent_round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    federation_id: Mapped[int] = mapped_column(ForeignKey("federations.id", ondelete="CASCADE"), index=True)
    parent_round: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int] = mapped_column(Integer)
    parent_hash: Mapped[str] = mapped_column(String(64))
    start_version: Mapped[int] = mapped_column(Integer)  # this federation's version synchronised to it
    rounds_before: Mapped[int] = mapped_column(Integer)  # this federation's last round number before it
    state: Mapped[str] = mapped_column(String(16), default="training")  # training, delivered, missed, ended
    num_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    task: Mapped[str] = mapped_column(Text, default="")  # the parent's Task message (protobuf, hex)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class KeyWeight(Base):
    """One member's weight α in the attentive aggregation of one key block in one round."""

    __tablename__ = "key_weights"
    __table_args__ = (UniqueConstraint("update_id", "block"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    update_id: Mapped[int] = mapped_column(ForeignKey("updates.id", ondelete="CASCADE"), index=True)
    block: Mapped[str] = mapped_column(String(64))
    weight: Mapped[float] = mapped_column(Float)
    cosine: Mapped[float | None] = mapped_column(Float, nullable=True)


class Update(Base):
    __tablename__ = "updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[int] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    reject_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    base_version: Mapped[int] = mapped_column(Integer)
    num_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    num_tensors: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    raw_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    num_steps: Mapped[int] = mapped_column(Integer, default=0)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    update_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    upload_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    round: Mapped[Round] = relationship(back_populates="updates")
    worker: Mapped[Worker] = relationship()


class Evaluation(Base):
    """A worker's evaluation of a global model version on its own held-out split."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[int] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(32))
    num_samples: Mapped[int] = mapped_column(BigInteger)
    loss: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    round: Mapped[Round] = relationship(back_populates="evaluations")
    worker: Mapped[Worker] = relationship()
