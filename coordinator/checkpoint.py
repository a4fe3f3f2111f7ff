"""Global model versions on disk as safetensors, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def path_of(directory: Path, version: int) -> Path:
    return directory / f"v{version:06d}.safetensors"


def save(directory: Path, version: int, tensors: dict[str, torch.Tensor], model_hash: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = path_of(directory, version)
    tmp = target.with_suffix(".tmp")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"version": str(version), "hash": model_hash},
    )
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load(directory: Path, version: int) -> dict[str, torch.Tensor]:
    return load_file(str(path_of(directory, version)))


def exists(directory: Path, version: int) -> bool:
    return path_of(directory, version).is_file()
