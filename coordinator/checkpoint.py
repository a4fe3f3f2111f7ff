"""Global model versions on disk as safetensors (atomic writes), and the server's error-feedback residual."""

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


def prune_residuals(directory: Path, keep: int) -> None:
    """Remove the server residuals of every version but `keep`."""
    for p in directory.glob("server-residual-v*.safetensors"):
        if int(p.stem.rsplit("-v", 1)[1]) != keep:
            p.unlink(missing_ok=True)


def discard_after(directory: Path, version: int) -> int:
    """Delete checkpoints and server residuals of versions newer than `version`, and temp files: what an
    aggregation cut off by a crash wrote before the database recorded its version."""
    gone = 0
    for p in directory.glob("*"):
        digits = p.stem.rsplit("v", 1)[-1]
        newer = p.suffix == ".safetensors" and digits.isdigit() and int(digits) > version
        if newer or p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
            gone += 1
    return gone
