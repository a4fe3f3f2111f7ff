"""The worker's settings (flags, STRATA_WORKER_* variables, or [worker] in a TOML file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from strata.settings import StrataSettings


class WorkerSettings(StrataSettings):
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
    eval_batch_size: int = Field(64, ge=1, description="Batch size for evaluation")
