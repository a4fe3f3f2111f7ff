"""Global model versions on disk as safetensors (atomic writes), with the server's error-feedback residual
and the server optimizer's state of each version."""

from __future__ import annotations

from pathlib import Path

import torch

from strata import tensorfile


def path_of(directory: Path, version: int) -> Path:
    return directory / f"v{version:06d}.safetensors"


def save(directory: Path, version: int, tensors: dict[str, torch.Tensor], model_hash: str) -> Path:
    return tensorfile.save(
        path_of(directory, version),
        tensors,
        {"version": str(version), "hash": model_hash},
        failpoint="coordinator.checkpoint",
    )


def load(directory: Path, version: int) -> dict[str, torch.Tensor]:
    return tensorfile.load(path_of(directory, version))


def exists(directory: Path, version: int) -> bool:
    return path_of(directory, version).is_file()


def residual_path(directory: Path, version: int) -> Path:
    return directory / f"server-residual-v{version:06d}.safetensors"


def optimizer_path(directory: Path, version: int) -> Path:
    """The server optimizer's state (m, v per tensor) that produced `version`."""
    return directory / f"optimizer-v{version:06d}.safetensors"


def prune_state(directory: Path, keep: int) -> None:
    """Remove the server residuals and optimizer states of every version but `keep` (after its commit)."""
    for pattern in ("server-residual-v*.safetensors", "optimizer-v*.safetensors"):
        for p in directory.glob(pattern):
            if int(p.stem.rsplit("-v", 1)[1]) != keep:
                p.unlink(missing_ok=True)


def discard_after(directory: Path, version: int) -> int:
    """Delete checkpoints and server residuals of versions newer than `version`, and temp files: what an
    aggregation cut off by a crash wrote before the database recorded its version."""
    gone = 0
    for p in directory.glob("*"):
        digits = p.stem.rsplit("v", 1)[-1]
        newer = p.suffix == ".safetensors" and digits.isdigit() and int(digits) > version
        if newer or p.name.endswith((".tmp", ".partial")):
            p.unlink(missing_ok=True)
            gone += 1
    return gone
