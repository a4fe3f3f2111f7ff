"""Request and response models of the dashboard API, apart from the table models (routes never return rows)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field

T = TypeVar("T")
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"


def as_utc(value: dt.datetime) -> dt.datetime:
    """A timezone-aware UTC datetime; naive values (as SQLite returns them) are taken to be UTC."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


UtcDateTime = Annotated[dt.datetime, AfterValidator(as_utc)]
"""A datetime that is always serialized timezone-aware, in UTC."""


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Health(_Out):
    status: str = Field(description='"ok" when the API and its database answer.')


class ErrorOut(_Out):
    detail: str = Field(description="What went wrong, e.g. which federation or round was not found.")


class FederationSummary(_Out):
    name: str = Field(description="Unique name of the federation.")
    state: str = Field(description="Federation state: created, running, completed, failed or stopped.")
    task_kind: str = Field(description="Training task, e.g. sequence-classification.")
    model_name: str = Field(description="Base model being fine-tuned (hub id or path).")
    current_round: int = Field(description="Number of the current (or last) round; 0 before the first.")
    total_rounds: int = Field(description="Number of rounds the federation is configured to run.")
    model_version: int = Field(description="Version of the current global model (increments per round).")
    created_at: UtcDateTime = Field(description="When the federation was created (UTC).")
    updated_at: UtcDateTime = Field(description="When the federation row last changed (UTC).")


class TreeOut(_Out):
    parent: str | None = Field(
        description="host:port of the parent federation this one is a member of; null for a top federation."
    )
    parent_dashboard_url: str | None = Field(
        None,
        description="A sub-federation: the parent's dashboard page, as the parent gave it when this federation "
        "joined (the parent's dashboard_url setting); null for a top federation or when the parent gave none.",
    )
    inner_rounds: int = Field(description="With a parent: rounds of this federation per round of the parent.")
    local_blocks: str = Field(
        description='Key blocks its member federations keep partly local, as configured: "top:N" or block '
        'names, comma-separated ("" none; the resolved names are the key-weights matrix\'s rows).'
    )
    residual_keep: float = Field(
        description="β: the share of its own deviation in the key blocks a member federation keeps after "
        "each synchronisation."
    )
    key_aggregation: str = Field(
        description="How the members' key-block updates are combined: attention (α ∝ n·exp(τ·cos)) or mean."
    )
    attention_temperature: float = Field(description="τ of the attentive aggregation of key blocks.")


class PrivacyOut(_Out):
    enabled: bool = Field(description="Whether the federation releases its models with user-level DP.")
    target_epsilon: float | None = Field(description="The budget: the federation stops before exceeding it.")
    delta: float | None = Field(description="δ of the (ε, δ) guarantee.")
    epsilon: float | None = Field(
        description="ε spent so far (after the newest private round); null before any or without DP."
    )
    noise_multiplier: float | None = Field(description="z: noise standard deviation over the clip norm.")
    sampling_rate: float | None = Field(description="q: each member's probability of taking part in a round.")
    adaptive_clip: bool = Field(description="Whether the clip norm follows a quantile of the update norms.")


class FederationStatus(FederationSummary):
    model_hash: str = Field(description="SHA-256 of the current global model's trained tensors.")
    num_parameters: int = Field(description="Number of trainable parameters exchanged per round.")
    num_labels: int = Field(description="Number of classification labels.")
    workers_online: int = Field(description="Workers seen within the online window (see `online_seconds`).")
    workers_total: int = Field(description="Workers that ever joined the federation.")
    last_test_accuracy: float | None = Field(
        description="Test accuracy of the newest completed round that has one; null if none."
    )
    last_test_loss: float | None = Field(
        description="Test loss of that same round (the newest completed round with a test accuracy)."
    )
    config: dict[str, Any] = Field(description="Federation configuration as stored by the coordinator.")
    error: str | None = Field(description="Why the federation failed or paused itself, if it did.")
    reason: str | None = Field(
        description="Why the federation ended before its planned rounds, if it did (e.g. its privacy budget)."
    )
    privacy: PrivacyOut = Field(description="Differential privacy of the released models (docs/privacy.md).")
    tree: TreeOut = Field(
        description="Federations of federations: its parent, if any, and how it combines member federations "
        "(from the config; the defaults for federations that predate them)."
    )


class RoundOut(_Out):
    number: int = Field(description="Round number, starting at 1.")
    state: str = Field(description="Round state: open, aggregating, completed or failed.")
    base_version: int = Field(description="Global model version the round trains from.")
    result_version: int | None = Field(description="Global model version the round produced, once closed.")
    result_hash: str | None = Field(description="SHA-256 of the produced model's trained tensors.")
    participants: list[str] = Field(description="Names of the workers that joined the round.")
    min_updates: int = Field(description="Accepted updates needed before the round can aggregate.")
    num_updates: int = Field(description="Accepted updates aggregated into the result.")
    num_samples: int = Field(description="Training samples behind the aggregated updates.")
    bytes_up: int = Field(description="Compressed bytes uploaded by workers in this round.")
    bytes_down: int = Field(description="Bytes of model sent down to workers in this round.")
    raw_bytes_up: int = Field(description="Uncompressed (fp32) size of the uploaded updates, in bytes.")
    raw_bytes_down: int = Field(description="Uncompressed (fp32) size of what was sent down, in bytes.")
    train_loss: float | None = Field(description="Sample-weighted mean training loss of the updates.")
    train_accuracy: float | None = Field(description="Sample-weighted mean training accuracy of the updates.")
    test_loss: float | None = Field(description="Test loss of the round's resulting model.")
    test_accuracy: float | None = Field(description="Test accuracy of the round's resulting model.")
    update_norm: float | None = Field(description="L2 norm of the aggregated update.")
    started_at: UtcDateTime = Field(description="When the round opened (UTC).")
    deadline_at: UtcDateTime = Field(description="When the round stops accepting updates (UTC).")
    closed_at: UtcDateTime | None = Field(description="When the round closed (UTC); null while open.")
    aggregate_seconds: float | None = Field(description="Seconds spent aggregating updates.")
    eval_seconds: float | None = Field(description="Seconds spent evaluating the resulting model.")
    duration_seconds: float | None = Field(description="Seconds from opening to closing the round.")
    error: str | None = Field(description="Why the round failed, if it did.")
    blocks: list[str] | None = Field(
        description="Blocks the round trained (targeted layer updates); null when every block trained "
        "(policy full)."
    )
    probe: bool = Field(description="A probe round: every block trained to refresh every block's score.")
    noise_floor: float | None = Field(
        description="1 − Σ p_k²: the cancelled share ρ that independent random updates would show (null below "
        "two updates)."
    )
    private: bool = Field(
        description="Released with differential privacy: clipped updates, equal weights, Gaussian noise; no "
        "per-member loss, norm or sample count is recorded."
    )
    dp_epsilon: float | None = Field(
        description="A private round: ε spent after it (for the federation's δ)."
    )
    dp_clip: float | None = Field(description="A private round: the clip norm S its updates were clipped to.")
    dp_noise_multiplier: float | None = Field(description="A private round: z, the noise over S.")
    dp_expected: float | None = Field(
        description="A private round: m, the expected participants it divided by."
    )
    dp_unclipped: float | None = Field(
        description="Adaptive clipping: the noised count of updates that fitted under the clip."
    )

    @computed_field(description="exp(test_loss): the test perplexity of a language-model federation.")  # type: ignore[prop-decorator]
    @property
    def test_perplexity(self) -> float | None:
        if self.test_loss is None:
            return None
        return math.exp(self.test_loss) if self.test_loss < 700 else math.inf

    @computed_field(description="Upstream saving: fp32 size over bytes sent (null when nothing was sent).")  # type: ignore[prop-decorator]
    @property
    def up_ratio(self) -> float | None:
        return self.raw_bytes_up / self.bytes_up if self.bytes_up else None

    @computed_field(description="Downstream saving: fp32 size over bytes sent (null when nothing was sent).")  # type: ignore[prop-decorator]
    @property
    def down_ratio(self) -> float | None:
        return self.raw_bytes_down / self.bytes_down if self.bytes_down else None


class UpdateOut(_Out):
    worker: str = Field(description="Name of the worker that sent the update.")
    status: str = Field(description="accepted, rejected or late.")
    reject_reason: str | None = Field(description="Why the update was rejected, if it was.")
    base_version: int = Field(description="Model version the worker trained from.")
    num_samples: int = Field(description="Training samples the worker used.")
    num_tensors: int = Field(description="Number of tensors in the update.")
    bytes: int = Field(description="Compressed size of the update as uploaded, in bytes.")
    raw_bytes: int = Field(description="Uncompressed size of the update, in bytes.")
    num_steps: int = Field(description="Optimizer steps the worker ran.")
    train_loss: float | None = Field(description="Worker's mean training loss.")
    train_accuracy: float | None = Field(description="Worker's training accuracy.")
    update_norm: float | None = Field(description="L2 norm of the worker's update.")
    train_seconds: float | None = Field(description="Seconds the worker spent training.")
    upload_seconds: float | None = Field(description="Seconds the upload took.")
    received_at: UtcDateTime = Field(description="When the coordinator received the update (UTC).")


class EvaluationOut(_Out):
    worker: str = Field(description="Name of the worker that ran the evaluation.")
    model_version: int = Field(description="Global model version evaluated.")
    split: str = Field(description="Data split evaluated on, e.g. validation or test.")
    num_samples: int = Field(description="Samples evaluated.")
    loss: float = Field(description="Mean loss on the split.")
    accuracy: float = Field(description="Accuracy on the split.")
    created_at: UtcDateTime = Field(description="When the evaluation was recorded (UTC).")


class BlockOutcomeOut(_Out):
    block: str = Field(description='Block name: "embeddings", "layer.<i>", "pooler" or "head".')
    position: int = Field(description="Position of the block in model order.")
    trained: bool = Field(description="Workers trained and sent the block this round.")
    applied: bool = Field(description="The block's mean update entered the global model this round.")
    score: float | None = Field(
        description="The policy's score (fedtlu or agreement; agreement for full and random), from this "
        "round's updates when fresh, otherwise carried from the block's last trained round."
    )
    fresh: bool = Field(description="The score and measurements come from this round's updates.")
    fedtlu: float | None = Field(
        description="FedTLU's score ‖ΔW‖/(√n·std ΔW), summed over the block's tensors."
    )
    agreement: float | None = Field(description="Strata's score: relative · consensus.")
    update_norm: float | None = Field(description="‖Δ̄‖ of the block's aggregated update.")
    relative: float | None = Field(
        description="‖Δ̄‖ / ‖θ‖: the update's size relative to the block's weights."
    )
    consensus: float | None = Field(
        description="‖Δ̄‖² / Σ p_k‖Δ_k‖² in [0, 1]: 1 when every worker moved the block the same way."
    )
    num_elements: int = Field(description="Parameters in the block.")
    energy: float | None = Field(description="E = Σ p_k ‖Δ_k‖² of the block's updates.")
    spread: float | None = Field(description="V = Σ p_k ‖Δ_k − Δ̄‖² = E − ‖Δ̄‖² (null below two updates).")
    divergence: float | None = Field(
        description="D = V / (‖Δ̄‖² + ε·E): 0 when every worker moved the block alike (null below two updates)."
    )
    cancelled: float | None = Field(
        description="ρ = V / E in [0, 1]: the share of the update energy that cancelled."
    )
    lora_discarded: float | None = Field(
        None,
        description="A LoRA federation aggregating products: the share of the block's mean adapter product B·A "
        "that re-factorising to the federation's rank dropped (mean over its adapted matrices).",
    )


class RoundDetail(RoundOut):
    block_outcomes: list[BlockOutcomeOut] = Field(
        description="Every block's outcome and scores in this round (completed rounds)."
    )
    updates: list[UpdateOut] = Field(description="Every update received in the round, in arrival order.")
    evaluations: list[EvaluationOut] = Field(description="Worker evaluations recorded for the round.")


class RejectionOut(_Out):
    round: int = Field(description="Round the update was for.")
    status: str = Field(description="rejected or late.")
    reject_reason: str | None = Field(description="Why the coordinator refused it.")
    received_at: UtcDateTime = Field(description="When it was refused (UTC).")


class ReportedOut(_Out):
    round: int = Field(description="Round of this federation the metric was reported after.")
    model_version: int = Field(description="This federation's version the member's round trained from.")
    num_samples: int = Field(description="Held-out samples the member federation evaluated on.")
    loss: float = Field(description="Test loss of the member federation's own model.")
    accuracy: float = Field(description="Test accuracy of the member federation's own model.")
    created_at: UtcDateTime = Field(description="When it was reported (UTC).")


class WorkerOut(_Out):
    name: str = Field(description="Worker name, unique within the federation.")
    kind: Literal["worker", "federation"] = Field(
        description="federation: the member is a sub-federation's coordinator; worker: a plain worker."
    )
    members: int | None = Field(description="A member federation's worker count; null for a plain worker.")
    inner_rounds: int | None = Field(
        description="A member federation's rounds per round of this one; null for a plain worker."
    )
    dashboard_url: str | None = Field(
        None,
        description="A member federation's own dashboard page, as it gave it when it joined (its "
        "dashboard_url setting); null for a plain worker or when it gave none.",
    )
    reported: ReportedOut | None = Field(
        description='A member federation\'s latest "federation-test" metric (its own held-out test loss and '
        "accuracy, reported upward after each round); null for plain workers and before any report."
    )
    device: str = Field(description='Device the worker trains on, e.g. cpu or cuda:0 ("federation" for one).')
    online: bool = Field(description="Whether the worker was seen within the online window.")
    num_samples: int = Field(description="Training samples the worker holds (0 in a private federation).")
    local_epsilon: float | None = Field(
        description="Local DP-SGD: the ε of the worker's own records it reported last (its δ: local_delta)."
    )
    local_delta: float | None = Field(description="Local DP-SGD: δ of local_epsilon.")
    lora_rank: int | None = Field(
        None, description="A LoRA federation: the lower rank this worker trains (null: the federation's)."
    )
    num_eval_samples: int = Field(description="Held-out evaluation samples the worker holds.")
    joined_at: UtcDateTime = Field(description="When the worker joined (UTC).")
    last_seen: UtcDateTime = Field(description="When the worker last contacted the coordinator (UTC).")
    rounds_joined: int = Field(description="Rounds of this federation that list the worker as a participant.")
    updates_accepted: int = Field(description="Updates of the worker that were accepted.")
    updates_rejected: int = Field(description="Updates of the worker that were rejected.")
    bytes_up: int = Field(description="Compressed bytes the worker uploaded, over all its updates.")
    rejections: list[RejectionOut] = Field(
        description="Its latest refused updates (at most 20, newest first), with the reasons."
    )


class Page(_Out, Generic[T]):
    items: list[T] = Field(description="The items of this page.")
    total: int = Field(description="Number of items matching the query, over all pages.")
    offset: int = Field(description="Index of the first item of this page.")
    limit: int = Field(description="Largest number of items a page holds.")


class FederationCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="Unique federation name.")
    total_rounds: int = Field(5, ge=1, le=1_000_000, description="Rounds to run.")
    task_kind: Literal["sequence-classification", "causal-lm", "instruction"] = Field(
        "sequence-classification", description="What the federation trains."
    )
    model_name: str = Field("", max_length=512, description="The base model (a path or a name), for display.")


class TokenCreate(BaseModel):
    label: str = Field(
        min_length=1, max_length=128, description="Whose token this is, e.g. the organisation."
    )


class TokenOut(_Out):
    id: int = Field(description="Token id (to revoke it).")
    label: str = Field(description="Whose token this is.")
    prefix: str = Field(description="The token's first characters, to recognise it.")
    created_at: UtcDateTime = Field(description="When it was issued (UTC).")
    revoked_at: UtcDateTime | None = Field(description="When it was revoked (UTC); null while valid.")


class IssuedToken(TokenOut):
    token: str = Field(description="The token itself: shown once, never stored (only its SHA-256 is).")


class ControlOut(_Out):
    name: str = Field(description="Federation name.")
    state: str = Field(description="The federation's state as the coordinator last wrote it.")
    desired_state: str = Field(description="What was asked: running, paused or stopped.")
