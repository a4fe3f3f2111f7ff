"""Model versions on disk, in wire form: each version's snapshot and the global update that made it.

A `.frames` file is a run of length-prefixed TensorHeader messages, each followed by its payload, so
the coordinator serves downloads straight from disk in ≤1 MiB pieces: its memory does not depend on
the model's size, the number of versions kept, or the number of workers pulling.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from strata.frames import CHUNK_BYTES
from strata.proto.v1 import tensor_pb2

_LEN = struct.Struct("<I")


def write_frames(path: Path, frames: Iterable[tuple[tensor_pb2.TensorHeader, Iterable[bytes]]]) -> int:
    """Write frames atomically (temp file, fsync, rename); returns the payload bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    total = 0
    with open(tmp, "wb") as fh:
        for header, blocks in frames:
            data = header.SerializeToString()
            fh.write(_LEN.pack(len(data)))
            fh.write(data)
            for block in blocks:
                fh.write(block)
                total += len(block)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return total


def read_frames(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, object]]:
    """("tensor", header) then ("data", piece) for each frame of the file, piece by piece."""
    with open(path, "rb") as fh:
        while head := fh.read(_LEN.size):
            (n,) = _LEN.unpack(head)
            header = tensor_pb2.TensorHeader()
            header.ParseFromString(fh.read(n))
            yield "tensor", header
            left = header.payload_bytes
            while left:
                piece = fh.read(min(chunk_bytes, left))
                if not piece:
                    raise OSError(f"{path} is truncated inside {header.name}")
                left -= len(piece)
                yield "data", piece


def count_frames(path: Path) -> int:
    with open(path, "rb") as fh:
        count = 0
        while head := fh.read(_LEN.size):
            (n,) = _LEN.unpack(head)
            header = tensor_pb2.TensorHeader()
            header.ParseFromString(fh.read(n))
            fh.seek(header.payload_bytes, os.SEEK_CUR)
            count += 1
        return count


class VersionFiles:
    """Where a federation's versions live: `snapshot-vN.frames` and `update-vN.frames` (v(N-1) → vN)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._counts: dict[tuple[Path, int], int] = {}

    def count(self, path: Path) -> int:
        """Frames in a file, read once per version of the file (every pull needs it for its header)."""
        key = (path, path.stat().st_mtime_ns)
        if key not in self._counts:
            self._counts[key] = count_frames(path)
        return self._counts[key]

    def snapshot(self, version: int) -> Path:
        return self.dir / f"snapshot-v{version:06d}.frames"

    def update(self, version: int) -> Path:
        return self.dir / f"update-v{version:06d}.frames"

    def prune(self, current: int, history: int) -> None:
        """Keep the snapshot of the current version only, and the updates that made the last `history` versions."""
        for p in self.dir.glob("*.frames"):
            kind, _, v = p.stem.partition("-v")
            if not v.isdigit():
                continue
            if (kind == "snapshot" and int(v) < current) or (
                kind == "update" and int(v) <= current - history
            ):
                p.unlink(missing_ok=True)

    def discard_after(self, version: int) -> int:
        """Delete the files of versions newer than `version` (written by an aggregation that a crash cut
        off before the database recorded it) and any partial file; returns how many went."""
        gone = 0
        for p in self.dir.iterdir():
            kind, _, v = p.stem.partition("-v")
            if p.name.endswith(".partial") or (
                kind in ("snapshot", "update") and v.isdigit() and int(v) > version
            ):
                p.unlink(missing_ok=True)
                gone += 1
        self._counts.clear()
        return gone
