"""Model versions on disk, in wire form: each version's snapshot and the global update that made it.

Version files use the frame-file format of the spool (coordinator/framefile.py): TENSOR records, each
followed by DATA records of ≤ 1 MiB, so the coordinator serves downloads straight from disk piece by
piece: its memory does not depend on the model's size, the number of versions kept, or the number of
workers pulling.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from coordinator import framefile
from strata import atomic
from strata.frames import pieces
from strata.proto.v1 import tensor_pb2


def write_frames(path: Path, frames: Iterable[tuple[tensor_pb2.TensorHeader, Iterable[bytes]]]) -> int:
    """Write frames atomically (temp file, fsync, rename); returns the payload bytes written."""
    total = 0
    with atomic.atomic_file(path) as fh:
        framefile.start(fh)
        for header, blocks in frames:
            framefile.write(fh, framefile.TENSOR, header.SerializeToString())
            for block in blocks:
                for piece in pieces(block):
                    framefile.write(fh, framefile.DATA, piece)
                total += len(block)
    return total


def read_frames(path: Path) -> Iterator[tuple[str, object]]:
    """("tensor", header) then ("data", piece) for each frame of the file, piece by piece."""
    for kind, body in framefile.records(path):
        if kind == framefile.TENSOR:
            yield "tensor", tensor_pb2.TensorHeader.FromString(body)
        elif kind == framefile.DATA:
            yield "data", body


def count_frames(path: Path) -> int:
    return sum(1 for kind, _ in framefile.records(path, skip_data=True) if kind == framefile.TENSOR)


class VersionFiles:
    """Where a federation's versions live: `snapshot-vN.frames` and `update-vN.frames` (v(N-1) → vN)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._counts: dict[tuple[Path, int], int] = {}
        self._pins: Counter[Path] = Counter()  # files a download is streaming: prune leaves them
        self._pin_lock = threading.Lock()

    @contextmanager
    def pinned(self, paths: list[Path]) -> Iterator[None]:
        """Keep these files from `prune` while a download streams them (a new version may be published
        meanwhile, and the stream must still read the version it announced)."""
        with self._pin_lock:
            self._pins.update(paths)
        try:
            yield
        finally:
            with self._pin_lock:
                self._pins.subtract(paths)
                self._pins = +self._pins

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
        with self._pin_lock:
            pinned = set(self._pins)
        for p in self.dir.glob("*.frames"):
            kind, _, v = p.stem.partition("-v")
            if not v.isdigit() or p in pinned:
                continue
            if (kind == "snapshot" and int(v) < current) or (
                kind == "update" and int(v) <= current - history
            ):
                p.unlink(missing_ok=True)

    def discard_after(self, version: int) -> int:
        """Delete the files of versions newer than `version` (written by an aggregation that a crash cut
        off before the database recorded it), any partial file, and files an older Strata wrote in another
        format (they are caches: snapshots are written again, workers behind get one); returns how many went."""
        gone = 0
        for p in self.dir.iterdir():
            kind, _, v = p.stem.partition("-v")
            newer = kind in ("snapshot", "update") and v.isdigit() and int(v) > version
            if (
                atomic.is_partial(p) or newer or not framefile.is_frame_file(p)
            ):  # or written by an older Strata
                p.unlink(missing_ok=True)
                gone += 1
        self._counts.clear()
        return gone
