"""The one on-disk format for frames, shared by the update spool and the version files.

A frame file starts with MAGIC, then holds records: a kind byte, a 4-byte little-endian length and
that many bytes. HEADER carries an UpdateHeader (spool files), TENSOR a TensorHeader, DATA a piece of
its payload (≤ 1 MiB, as it travels), END an UpdateEnd. A spool file is an update's chunks exactly as
they arrived; a version file is TENSOR and DATA records, served to workers as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO

MAGIC = b"STRFRM1\n"
HEADER, TENSOR, DATA, END = 1, 2, 3, 4
_REC = struct.Struct("<BI")


class FormatError(OSError):
    """A file that is not a frame file of this format, or is cut off inside a record."""


def start(fh: IO[bytes]) -> None:
    fh.write(MAGIC)


def write(fh: IO[bytes], kind: int, body: bytes | memoryview) -> None:
    fh.write(_REC.pack(kind, len(body)))
    fh.write(body)


def is_frame_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def records(path: Path, skip_data: bool = False) -> Iterator[tuple[int, bytes]]:
    """(kind, body) of each record in order; with `skip_data`, DATA records are skipped unread (b"").
    A record cut off at the end (a file still being written) ends the iteration quietly."""
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise FormatError(f"{path.name} is not a frame file of this version of Strata")
        while len(head := fh.read(_REC.size)) == _REC.size:
            kind, n = _REC.unpack(head)
            if skip_data and kind == DATA:
                fh.seek(n, 1)
                yield kind, b""
                continue
            body = fh.read(n)
            if len(body) < n:
                return
            yield kind, body
