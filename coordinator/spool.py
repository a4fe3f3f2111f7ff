"""The spool: each accepted update's chunks on disk, exactly as they arrived, in the frame-file format
(coordinator/framefile.py), written atomically and readable again."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from coordinator import framefile
from strata import atomic
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import tensor_pb2

_KIND = {"header": framefile.HEADER, "tensor": framefile.TENSOR, "data": framefile.DATA, "end": framefile.END}


class SpoolWriter:
    """Appends UpdateChunk messages to a temp file; `commit()` renames it into place, `abort()` deletes it."""

    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.tmp = atomic.temp_path(target)
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        framefile.start(self._fh)

    def write(self, chunk: pb.UpdateChunk) -> None:
        part = chunk.WhichOneof("part")
        if part == "data":  # the bulk: written as it came, not re-serialised
            framefile.write(self._fh, framefile.DATA, chunk.data)
        elif part is not None:
            framefile.write(self._fh, _KIND[part], getattr(chunk, part).SerializeToString())

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def commit(self) -> Path:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.target)
        atomic.fsync_dir(self.target.parent)
        return self.target

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


def read(path: Path) -> Iterator[pb.UpdateChunk]:
    """The chunks of a spooled update, in the order they arrived."""
    for kind, body in framefile.records(path):
        if kind == framefile.DATA:
            yield pb.UpdateChunk(data=body)
        elif kind == framefile.TENSOR:
            yield pb.UpdateChunk(tensor=tensor_pb2.TensorHeader.FromString(body))
        elif kind == framefile.HEADER:
            yield pb.UpdateChunk(header=pb.UpdateHeader.FromString(body))
        elif kind == framefile.END:
            yield pb.UpdateChunk(end=pb.UpdateEnd.FromString(body))


def round_dir(spool_dir: Path, round_number: int) -> Path:
    return spool_dir / f"round-{round_number:06d}"


def prune(spool_dir: Path, keep_from: int) -> None:
    """Delete the spool of rounds numbered below keep_from."""
    if not spool_dir.is_dir():
        return
    for d in spool_dir.iterdir():
        if d.name.startswith("round-") and int(d.name[6:]) < keep_from:
            shutil.rmtree(d, ignore_errors=True)
