"""Content hashes of model versions: equal hashes mean bit-identical tensors."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (contiguous, on the CPU), without copying when possible."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().reshape(-1).data.cast("B")


def model_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def assets_hash(files: Mapping[str, bytes]) -> str:
    """SHA-256 over the config and tokenizer files that travel with a model (name, size and bytes, in name
    order): a worker that builds the initial version itself checks its files against the coordinator's."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}|{len(files[name])}\n".encode())
        h.update(files[name])
    return h.hexdigest()
