"""A LoRA federation's base model, known by content: the hash of its checkpoint's tensors, and the files a
coordinator serves to a worker that holds no copy.

The hash is SHA-256 over every tensor stored in the directory's ``*.safetensors`` files (name, dtype,
shape, bytes; in name order), so the same weights hash the same however they are sharded or wherever
they lie (a folder, a Hugging Face cache), and the hash never depends on how a process loads them
(float32 on a CPU, bf16 or 4-bit on a GPU). Hashing a 7B-parameter model reads 14 GB: the result is
kept beside the files' sizes and modification times in a small JSON file, so an unchanged folder is
hashed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from strata import atomic
from strata.version import tensor_bytes

log = logging.getLogger("strata")

#: the files of a model folder that make up a base model a worker can load
SERVED_SUFFIXES = (".safetensors", ".json", ".txt", ".model")
WEIGHTS = ".safetensors"


def weight_files(model_dir: Path) -> list[Path]:
    """The folder's safetensors files; ValueError (naming what would work) when it has none."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.name.endswith(WEIGHTS))
    if not files:
        others = sorted(p.name for p in Path(model_dir).iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        hint = f" (it holds {', '.join(others)})" if others else ""
        raise ValueError(
            f"{model_dir}: a LoRA federation's base model must be stored as safetensors{hint}; convert it "
            "once with transformers: AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    return files


def checkpoint_hash(model_dir: str | Path, cache: Path | None = None) -> str:
    """The content hash of the tensors in the folder's safetensors files (see the module docstring).

    `cache`: a JSON file that remembers hashes by folder, file sizes and modification times."""
    from safetensors import safe_open

    model_dir = Path(model_dir).resolve()
    files = weight_files(model_dir)
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    known = _read_cache(cache)
    entry = known.get(str(model_dir))
    if entry and entry.get("files") == stamp:
        return str(entry["hash"])
    where: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name in where:
                    raise ValueError(
                        f"{model_dir}: tensor {name} is stored twice ({where[name].name}, {path.name})"
                    )
                where[name] = path
    h = hashlib.sha256()
    for name in sorted(where):  # one tensor in memory at a time
        with safe_open(str(where[name]), framework="pt") as f:
            t = f.get_tensor(name)
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        h.update(tensor_bytes(t))
    digest = h.hexdigest()
    if cache is not None:
        known[str(model_dir)] = {"files": stamp, "hash": digest}
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(cache, json.dumps(known, indent=1).encode())
    return digest


def _read_cache(cache: Path | None) -> dict[str, dict[str, object]]:
    if cache is None or not cache.is_file():
        return {}
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def served_files(model_dir: Path) -> list[Path]:
    """The files a coordinator serves as the base model: weights, config and tokenizer, top level only."""
    weight_files(model_dir)
    return sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.name.endswith(SERVED_SUFFIXES))


def file_sha256(path: Path, piece: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(piece):
            h.update(chunk)
    return h.hexdigest()
