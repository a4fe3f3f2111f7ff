"""Global model versions on disk as safetensors (atomic writes), and the server's error-feedback residual."""

from __future__ import annotations

from pathlib import Path

import torch

from strata import tensorfile


def path_of(directory: Path, version: int) -> Path:
    return directory / f"v{version:06d}.safetensors"


def save(directory: Path, version: int, tensors: dict[str, torch.Tensor], model_hash: str) -> Path:
    return tensorfile.save(
        path_of(directory, version), tensors, {"version": str(version), "hash": model_hash}
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
