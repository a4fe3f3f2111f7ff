"""Atomic writes: two writers of one file at once (simulated workers' host processes sharing a cache) each
rename a whole file into place, the last one wins, and no temp file is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata import atomic


def test_two_writers_of_one_file_at_once_each_replace_it_whole(tmp_path: Path) -> None:
    target = tmp_path / "tokenizer.json"
    with atomic.atomic_file(target) as first:
        first.write(b"first")
        with atomic.atomic_file(target) as second:  # opened while the first is still being written
            second.write(b"second")
        assert target.read_bytes() == b"second"
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_a_failed_write_leaves_the_file_as_it_was_and_no_temp_file(tmp_path: Path) -> None:
    target = atomic.write_bytes(tmp_path / "f.bin", b"old")
    with pytest.raises(RuntimeError), atomic.atomic_file(target) as fh:
        fh.write(b"half")
        raise RuntimeError("killed midway")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
