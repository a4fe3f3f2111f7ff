"""The worker's settings (flags, STRATA_WORKER_* variables, or [worker] in a TOML file)."""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from strata.tracking import TrackingSettings


class WorkerSettings(TrackingSettings):
    model_config = SettingsConfigDict(env_prefix="STRATA_WORKER_", extra="forbid", validate_default=True)
    toml_table = "worker"

    coordinator: str = Field("127.0.0.1:50051", description="Coordinator gRPC address host:port")
    token: SecretStr = Field(
        SecretStr(""), description="This organisation's worker token (sent as a Bearer token)"
    )
    name: str = Field(
        "worker", pattern=r"^[A-Za-z0-9_.\-]{1,128}$", description="Worker name, unique in the federation"
    )
    data: Path | None = Field(
        None,
        description="Training data: a file (.jsonl, .jsonl.zst, .csv) or a folder with train/test splits",
    )
    eval_data: Path | None = Field(
        None,
        description="Held-out split to evaluate the global model on (default: the folder's test split, or a hold-out)",
    )
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the training data held out when there is no eval split"
    )
    cache_dir: Path = Field(
        Path("strata-worker"), description="Folder for the model assets received from the coordinator"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (bf16 autocast on CUDA)")
    connect_timeout: float = Field(
        120.0, gt=0, description="Keep retrying an unreachable coordinator this many seconds"
    )
    max_backoff: float = Field(10.0, gt=0, description="Longest wait between reconnection attempts, seconds")
    poll_seconds: int = Field(10, ge=1, le=300, description="Long-poll duration when asking for a task")
    progress: bool = Field(True, description="Show a progress bar while training")
    tls: bool = Field(
        False, description="Connect with TLS, checking the coordinator against the system's CAs"
    )
    tls_ca: Path | None = Field(
        None, description="CA certificate (PEM) to check the coordinator's certificate with (implies TLS)"
    )
    tls_cert: Path | None = Field(None, description="This worker's client certificate (PEM), for mutual TLS")
    tls_key: Path | None = Field(
        None, description="The client certificate's private key (PEM), for mutual TLS"
    )
    tls_server_name: str | None = Field(
        None, description="Name to check the coordinator's certificate against (default: the address's host)"
    )

    local_dp: bool = Field(
        False,
        description="Local DP-SGD on this worker's own records (Opacus): Poisson-sampled batches, per-example "
        "clipping and noise; the worker reports its records' ε (docs/privacy.md)",
    )
    local_dp_noise_multiplier: float = Field(
        1.0, gt=0, description="Local DP-SGD: σ, the noise over the per-example clip norm"
    )
    local_dp_max_grad_norm: float = Field(1.0, gt=0, description="Local DP-SGD: the per-example clip norm C")
    local_dp_delta: float = Field(1e-5, gt=0, lt=1, description="Local DP-SGD: δ of the records' guarantee")
    local_dp_target_epsilon: float = Field(
        0.0,
        ge=0,
        description="Local DP-SGD: stop training before the records' ε would pass this (0: no budget)",
    )

    base_model: str | None = Field(
        None,
        description="This organisation's copy of the pretrained model (a folder, or hf:ORG/NAME in the Hugging Face "
        "cache). LoRA federations: the base, checked against the federation's hash (unset: use the cache, else "
        "download it once). Full fine-tuning: version 0 is built from it, so round 1 downloads nothing, when it "
        "hashes to the federation's (else version 0 is downloaded)",
    )
    lora_rank: int = Field(
        0,
        ge=0,
        le=4096,
        description="LoRA federations: train a lower rank than the federation's (at most its rank; 0: the same)",
    )
    quantize_base: str = Field(
        "",
        pattern=r"^(|4bit|8bit)$",
        description="LoRA federations on a CUDA GPU: load the frozen base in 4bit (QLoRA, NF4) or 8bit through "
        "bitsandbytes (empty: bf16 on a GPU, float32 on a CPU)",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less memory, about a third more compute",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> WorkerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: give both (mutual TLS) or neither")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        return self

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for the coordinator channel, or None for plaintext."""
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )

    eval_batch_size: int = Field(64, ge=1, description="Batch size for evaluation")
