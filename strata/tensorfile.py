"""Tensors on disk as safetensors, written atomically and one tensor at a time.

The writer streams each tensor's bytes straight into the file (safetensors' own `save_file` first
copies every tensor into Python bytes, which would double the memory of a model-sized save), then
writes atomically (strata/atomic.py), so a kill at any instant leaves either the old file or the new one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from strata import atomic, failpoints

_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _raw(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().reshape(-1).data.cast("B")


def save(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    failpoint: str = "tensorfile",
) -> Path:
    """Write tensors as a safetensors file, atomically, holding at most one tensor's copy at a time.

    `failpoint` names this write for the fault tests: `<failpoint>.writing` halfway through the tensors,
    `<failpoint>.written` after the fsync, before the rename (see strata.failpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be stored")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with atomic.atomic_file(path, failpoint=failpoint) as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        for i, name in enumerate(names):
            if i == len(names) // 2:
                fh.flush()
                failpoints.hit(f"{failpoint}.writing")
            fh.write(_raw(tensors[name]))
    return path


def load(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
