"""The coordinator's settings (flags, STRATA_COORDINATOR_* variables, or [coordinator] in a TOML file)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import ByteSize, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from coordinator.design_settings import DesignSettings
from strata.names import ENCODINGS, OPTIMIZERS, TASKS
from strata.selection import POLICIES
from strata.serde import TrainingConfig
from strata.targeting import SCHEDULES, TargetingConfig

if TYPE_CHECKING:
    from strata.optimizers import ServerOptimizer

#: settings whose value must be one of a few names (the error lists them)
CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS,
    "encoding": ENCODINGS,
    "down_encoding": ENCODINGS,
    "policy": POLICIES,
    "schedule": SCHEDULES,
    "server_optimizer": OPTIMIZERS,
}

#: the settings that define a federation's behaviour, recorded with it (and shown by the dashboard)
RECORDED = (
    "task",
    "rounds",
    "min_workers",
    "workers_per_round",
    "min_updates",
    "over_selection",
    "round_timeout",
    "local_epochs",
    "max_steps",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "max_seq_len",
    "prox_mu",
    "encoding",
    "topk_fraction",
    "lowrank_rank",
    "downstream",
    "down_encoding",
    "history",
    "divergence",
    "aggregation",
    "trim_fraction",
    "server_optimizer",
    "server_lr",
    "server_momentum",
    "server_beta1",
    "server_beta2",
    "server_tau",
    "max_update_norm",
    "max_norm_ratio",
    "policy",
    "blocks",
    "block_budget",
    "refresh_every",
    "schedule",
    "probe_every",
    "seed",
    "parent",
    "inner_rounds",
    "local_blocks",
    "residual_keep",
    "key_aggregation",
    "attention_temperature",
    "dp",
    "dp_noise_multiplier",
    "dp_clip",
    "dp_delta",
    "dp_target_epsilon",
    "dp_sampling_rate",
    "dp_adaptive_clip",
    "dp_target_quantile",
    "dp_clip_lr",
    "dp_count_noise",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "lora_aggregation",
    "ffn_width",
    "local_attention_layers",
    "local_attention_window",
)


class CoordinatorSettings(DesignSettings):
    model_config = SettingsConfigDict(env_prefix="STRATA_COORDINATOR_", extra="forbid", validate_default=True)
    toml_table = "coordinator"

    federation: str = Field(
        "default",
        description="Name of the federation this coordinator runs",
        pattern=r"^[A-Za-z0-9_.\-]{1,128}$",
    )
    listen: str = Field(
        "127.0.0.1:50051", description="gRPC listen address host:port (port 0 picks a free port)"
    )
    tls_cert: Path | None = Field(None, description="Server certificate (PEM): serve gRPC over TLS")
    tls_key: Path | None = Field(None, description="The server certificate's private key (PEM)")
    tls_client_ca: Path | None = Field(
        None,
        description="CA (PEM) that worker client certificates must chain to: mutual TLS, required of every worker",
    )
    aggregation: str = Field(
        "mean",
        pattern="^(mean|median|trimmed-mean)$",
        description="mean (sample-weighted FedAvg), median or trimmed-mean (coordinate-wise, unweighted, computed "
        "window by window from the spooled updates: robust to a minority of poisoned updates)",
    )
    server_optimizer: str = Field(
        "fedavg",
        description="Server optimizer applied to each round's aggregate as a pseudo-gradient (docs/methods.md "
        "section 7): fedavg, fedavgm (server momentum), fedadagrad, fedyogi or fedadam",
    )
    server_lr: float = Field(
        1.0,
        gt=0,
        description="Server learning rate η (fedavg with 1.0 is plain FedAvg; adaptive ones want 1e-2..1e-1)",
    )
    server_momentum: float = Field(0.9, ge=0, lt=1, description="fedavgm: server momentum β")
    server_beta1: float = Field(
        0.9, ge=0, lt=1, description="fedadagrad, fedyogi, fedadam: first-moment decay β1"
    )
    server_beta2: float = Field(0.99, ge=0, lt=1, description="fedyogi, fedadam: second-moment decay β2")
    server_tau: float = Field(
        1e-3, gt=0, description="fedadagrad, fedyogi, fedadam: adaptivity τ (added to √v)"
    )
    prox_mu: float = Field(
        0.0, ge=0, description="FedProx: workers add μ/2·‖θ − θ_t‖² over the tensors they train (0: off)"
    )
    trim_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="trimmed-mean: share of updates dropped at each end, per coordinate"
    )
    max_update_norm: float = Field(
        0.0, ge=0, description="Refuse an update whose L2 norm exceeds this (0: no absolute bound)"
    )
    max_norm_ratio: float = Field(
        0.0,
        ge=0,
        description="Refuse updates whose norm exceeds this multiple of the round's median update norm, with 3 or "
        "more updates (0: off; e.g. 3)",
    )
    metrics_listen: str = Field(
        "", description="host:port to serve Prometheus metrics on at /metrics (empty: off; port 0 picks one)"
    )
    health_listen: str = Field(
        "",
        description="host:port of a plaintext gRPC server with only grpc.health.v1, for container health "
        "checks (`strata probe grpc`) when the main port needs TLS (empty: off)",
    )
    port_file: Path | None = Field(None, description="Write the bound port to this file once listening")
    database_url: str = Field(
        "sqlite:///strata-data/strata.db",
        description="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db",
    )
    data_dir: Path = Field(
        Path("strata-data"), description="Folder for checkpoints, the update spool and model assets"
    )
    model: Path | None = Field(
        None, description="Transformers model directory to fine-tune (config.json, weights, tokenizer)"
    )
    task: str = Field(
        "sequence-classification",
        description="What the federation trains: sequence-classification (accuracy), causal-lm (perplexity) or "
        "instruction (prompt/response pairs or chats, loss on the responses; perplexity)",
    )
    labels: str | None = Field(
        None,
        description="Class names: a labels.json file or a comma-separated list (default: the model config's id2label)",
    )
    eval_data: Path | None = Field(
        None,
        description="Held-out split (JSON Lines, .jsonl.zst or CSV) the coordinator evaluates each new version on",
    )
    eval_max_examples: int = Field(2000, ge=1, description="Evaluate on at most this many held-out examples")
    rounds: int = Field(
        5, ge=1, description="Number of rounds to complete (a sub-federation: until its parent is done)"
    )
    min_workers: int = Field(2, ge=1, description="Workers that must be online before a round starts")
    workers_per_round: int = Field(
        0, ge=0, description="Participants chosen per round among online workers (0: all)"
    )
    min_updates: int = Field(
        1, ge=1, description="Quorum: accepted updates needed to aggregate at the deadline"
    )
    round_timeout: float = Field(300.0, gt=0, description="Seconds from a round's start to its deadline")
    start_timeout: float = Field(
        0.0,
        ge=0,
        description="Give up if min_workers have not joined after this many seconds (0: wait forever)",
    )
    over_selection: float = Field(
        0.0,
        ge=0,
        le=2,
        description="Invite this fraction more workers than workers_per_round and close the round as soon "
        "as workers_per_round updates are in, so stragglers do not hold it (e.g. 0.3: 13 invited for 10)",
    )
    max_failed_rounds: int = Field(
        3, ge=1, description="Consecutive rounds that miss their quorum before on_failed_rounds acts"
    )
    on_failed_rounds: str = Field(
        "pause",
        pattern="^(pause|fail)$",
        description="After max_failed_rounds: pause (the federation waits, state paused with the reason, "
        "until `strata admin resume`) or fail (the coordinator exits with an error)",
    )
    worker_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tokens workers may join with (comma-separated), one per organisation; tokens issued "
        "through the dashboard API (strata admin) work too",
    )
    local_epochs: int = Field(1, ge=1, description="Local epochs per round")
    max_steps: int = Field(0, ge=0, description="Cap on local optimiser steps per round (0: no cap)")
    batch_size: int = Field(16, ge=1, description="Local training batch size")
    learning_rate: float = Field(5e-4, gt=0, description="Local AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Local AdamW weight decay")
    max_seq_len: int = Field(64, ge=8, le=8192, description="Tokens per example (truncation length)")
    policy: str = Field(
        "full",
        description=f"Layer selection policy: {', '.join(POLICIES)} (full: every block every round, plain FedAvg)",
    )
    blocks: int = Field(
        0,
        ge=0,
        description="Blocks (besides the task head) trained per round by random, fedtlu and agreement",
    )
    block_budget: ByteSize = Field(
        ByteSize(0),
        description="Instead of --blocks: the fp32 size of the blocks trained per round, e.g. 40MB (0: unused)",
    )
    refresh_every: int = Field(
        5, ge=1, description="Every block is applied at least once every this many rounds, so none starves"
    )
    schedule: str = Field(
        "pre-selected",
        description="pre-selected: workers train and send only the chosen blocks (saves compute and bandwidth); "
        "server-masked: workers send every block, the coordinator applies the chosen ones (FedTLU as published)",
    )
    probe_every: int = Field(
        10,
        ge=0,
        description="pre-selected: every this many rounds all blocks train, refreshing every score (0: round 1 only)",
    )
    divergence: bool = Field(
        True,
        description="Measure layer-wise divergence each round: per block, per tensor and per worker (a second "
        "pass over the spooled updates, about one decode of each; always off with dp: it reads each member's update)",
    )
    torch_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="CPU threads for torch on the coordinator (0: torch's default). Ingest is memory-bound, and idle "
        "OpenMP threads spin: 1 spends the least CPU per byte; raise it when the coordinator evaluates a large model",
    )
    zstd_level: int = Field(1, ge=1, le=19, description="zstd level for everything the coordinator encodes")
    seed: int = Field(0, ge=0, description="Seed for the initial head, participant choice and local shuffles")
    worker_timeout: float = Field(
        60.0, gt=0, description="A worker not heard from for this many seconds is offline"
    )
    task_poll_seconds: float = Field(10.0, gt=0, le=300, description="Longest a GetTask long poll is held")
    control_poll_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="How often the coordinator reads what an administrator asked for (pause, resume, stop, tokens)",
    )
    exit_when_done: bool = Field(True, description="Exit once every round is done and workers were told")
    linger_seconds: float = Field(
        5.0, ge=0, description="After the last round, keep serving this long so workers hear DONE"
    )
    grace_seconds: float = Field(
        5.0, ge=0, description="Grace period for in-flight calls on shutdown (SIGTERM)"
    )

    @field_validator("worker_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, v: object) -> object:
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator(*CHOICES)
    @classmethod
    def _check_choice(cls, v: str, info: ValidationInfo) -> str:
        valid = CHOICES[str(info.field_name)]
        if v not in valid:
            raise ValueError(
                f"unknown {str(info.field_name).replace('_', ' ')} {v!r}; valid: {', '.join(valid)}"
            )
        return v

    def targeting(self) -> TargetingConfig:
        return TargetingConfig(
            policy=self.policy,
            blocks=self.blocks,
            budget=int(self.block_budget),
            refresh_every=self.refresh_every,
            schedule=self.schedule,
            probe_every=self.probe_every,
            seed=self.seed,
        )

    def server_optimizer_config(self) -> ServerOptimizer:
        from strata.optimizers import ServerOptimizer

        return ServerOptimizer(
            self.server_optimizer,
            lr=self.server_lr,
            momentum=self.server_momentum,
            beta1=self.server_beta1,
            beta2=self.server_beta2,
            tau=self.server_tau,
        )

    def training(self) -> TrainingConfig:
        """What workers do with their data each round, as tasks carry it."""
        return TrainingConfig(
            local_epochs=self.local_epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            max_seq_len=self.max_seq_len,
            seed=self.seed,
            prox_mu=self.prox_mu,
        )

    def record(self) -> dict[str, object]:
        """The settings recorded with the federation."""
        return {k: getattr(self, k) for k in RECORDED}

    @field_validator("worker_tokens")
    @classmethod
    def _check_tokens(cls, v: list[str]) -> list[str]:
        if any(len(t) < 8 for t in v):
            raise ValueError("worker tokens must be at least 8 characters")
        return v

    @model_validator(mode="after")
    def _check(self) -> CoordinatorSettings:
        if self.workers_per_round and self.min_updates > self.workers_per_round:
            raise ValueError(
                f"min_updates ({self.min_updates}) cannot exceed workers_per_round ({self.workers_per_round}); "
                "see --min-updates / STRATA_COORDINATOR_MIN_UPDATES"
            )
        if self.over_selection and not self.workers_per_round:
            raise ValueError(
                "over_selection invites more than workers_per_round workers: set --workers-per-round too "
                "(with 0, every online worker takes part and there is no one more to invite)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert and tls_key: give both to serve TLS, or neither (see --tls-cert, --tls-key)"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs the server's own --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        try:
            self.server_optimizer_config()
        except ValueError as exc:
            raise ValueError(f"{exc} (see --server-optimizer, --server-lr)") from None
        try:
            self.targeting().check()
        except ValueError as exc:
            raise ValueError(f"{exc} (see --policy, --blocks, --block-budget)") from None
        return self
