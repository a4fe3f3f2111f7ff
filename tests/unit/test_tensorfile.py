"""Streaming, atomic safetensors writes: readable by safetensors, and never half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from strata import tensorfile


def test_round_trip_through_safetensors(tmp_path: Path) -> None:
    d = {
        "b": torch.randn(3, 4),
        "a": torch.randn(5).to(torch.bfloat16),
        "h": torch.randn(2, 2).half(),
        "c": torch.zeros(0, 3),
        "s": torch.tensor(2.0),
        "i": torch.arange(4),
        "t": torch.randn(4, 6).t(),  # not contiguous
    }
    path = tensorfile.save(tmp_path / "x.safetensors", d, {"version": "3", "hash": "abc"})
    back = tensorfile.load(path)
    assert set(back) == set(d)
    for k in d:
        assert back[k].dtype == d[k].dtype and torch.equal(back[k], d[k].contiguous())
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"version": "3", "hash": "abc"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left behind


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tensorfile.save(tmp_path / "x.safetensors", {"w": torch.ones(3)})
    with pytest.raises(TypeError):
        tensorfile.save(path, {"w": torch.zeros(3), "z": torch.zeros(2, dtype=torch.complex64)})
    assert torch.equal(tensorfile.load(path)["w"], torch.ones(3))
