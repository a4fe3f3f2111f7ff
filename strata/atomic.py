"""Atomic file writes: a temp file beside the target, fsync, rename over it, fsync the folder.

Every file that matters (checkpoints, version frames, spool files, residuals, optimizer state, worker
assets and data) is written through `atomic_file`, so a kill at any instant leaves the old file or
the new one, never half of one. Temp files start with a dot and end in `.partial`, so the recovery
code that deletes what a crash left behind finds them with `is_partial`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from strata import failpoints

SUFFIX = ".partial"


def temp_path(path: Path) -> Path:
    """Where the new content of `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}{SUFFIX}")


def is_partial(path: Path) -> bool:
    """A temp file an interrupted atomic write left behind."""
    return path.name.startswith(".") and path.name.endswith(SUFFIX)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, failpoint: str | None = None) -> Iterator[IO[bytes]]:
    """Yield a binary file whose content replaces `path` atomically when the block ends without error.

    On an error the temp file is deleted and `path` is left as it was. `failpoint` names the write for
    the kill tests: `<failpoint>.written` fires after the fsync, before the rename (strata.failpoints).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own per write: two processes writing the same file (simulated workers' hosts sharing
    # a cache) each rename a whole file into place, and the last one wins
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if failpoint:
            failpoints.hit(f"{failpoint}.written")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> Path:
    """Replace `path` by `data` atomically."""
    with atomic_file(path) as fh:
        fh.write(data)
    return path


def write_text(path: Path, text: str) -> Path:
    """Replace `path` by `text` (UTF-8) atomically."""
    return write_bytes(path, text.encode())
