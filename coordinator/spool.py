"""The spool: each accepted update's compressed frames on disk, written atomically, readable again.

A spool file is a run of records: a kind byte and a length, then either a serialised UpdateChunk
(header, tensor header, end) or the raw bytes of a data chunk, written as received.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

from strata.proto.v1 import coordinator_pb2 as pb

_REC = struct.Struct("<BI")  # record: kind, length; then the bytes
_MESSAGE, _DATA = 1, 2


class SpoolWriter:
    """Appends UpdateChunk messages to a temp file; `commit()` renames it into place, `abort()` deletes it."""

    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.tmp = target.with_name(f".{target.name}.partial")
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/abort

    def write(self, chunk: pb.UpdateChunk) -> None:
        if chunk.WhichOneof("part") == "data":  # the bulk: written as it came, not re-serialised
            self._fh.write(_REC.pack(_DATA, len(chunk.data)))
            self._fh.write(chunk.data)
            return
        data = chunk.SerializeToString()
        self._fh.write(_REC.pack(_MESSAGE, len(data)))
        self._fh.write(data)

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def commit(self) -> Path:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


def read(path: Path) -> Iterator[pb.UpdateChunk]:
    """The chunks of a spooled update, in the order they arrived."""
    with open(path, "rb") as fh:
        while head := fh.read(_REC.size):
            kind, n = _REC.unpack(head)
            body = fh.read(n)
            if kind == _DATA:
                yield pb.UpdateChunk(data=body)
                continue
            chunk = pb.UpdateChunk()
            chunk.ParseFromString(body)
            yield chunk


def round_dir(spool_dir: Path, round_number: int) -> Path:
    return spool_dir / f"round-{round_number:06d}"


def prune(spool_dir: Path, keep_from: int) -> None:
    """Delete the spool of rounds numbered below keep_from."""
    if not spool_dir.is_dir():
        return
    for d in spool_dir.iterdir():
        if d.name.startswith("round-") and int(d.name[6:]) < keep_from:
            shutil.rmtree(d, ignore_errors=True)
