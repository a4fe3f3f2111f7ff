"""bench/bytes.py and bench/flower.py end to end on a tiny model (the real runs read ../shared and take
half an hour each): every setting federates, bytes are counted per worker, the reports are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bytes as bytes_bench
from bench import flower


def test_settings_parse_and_refuse_what_they_cannot_be() -> None:
    label, up, down = bytes_bench.parse_setting("lowrank:4/topk:0.05")
    assert (up.encoding, up.rank, down.encoding, down.topk_fraction) == ("lowrank", 4, "topk", 0.05)
    for bad in ("lowrank:4", "int8:3/int8", "int4/int8"):
        with pytest.raises(ValueError):
            bytes_bench.parse_setting(bad)


def test_the_bytes_bench_counts_each_setting_per_worker(tmp_path: Path) -> None:
    assert (
        bytes_bench.main(["--smoke", "--out", str(tmp_path), "--settings", "fp32/fp32,lowrank:2/lowrank:2"])
        == 0
    )
    res = json.loads((tmp_path / "bytes-smoke.json").read_text())
    fp32, low = res["runs"]["fp32/fp32"], res["runs"]["lowrank:2/lowrank:2"]
    assert len(fp32["accuracy"]) == len(low["accuracy"]) == 2
    assert all(u > 4 * v for u, v in zip(fp32["up"], low["up"], strict=True))  # factors, not values
    assert all(u > 4 * v for u, v in zip(fp32["down"], low["down"], strict=True))
    assert res["round1"]["snapshot"] > fp32["up"][0]  # a fp32 snapshot outweighs a compressed delta
    text = (tmp_path / "bytes-smoke.md").read_text()
    assert "| lowrank:2/lowrank:2 |" in text and "goal 3.6 MB" in text


def test_the_flower_bench_runs_strata_over_grpc(tmp_path: Path) -> None:
    assert flower.main(["--smoke", "--skip-flower", "--out", str(tmp_path), "--best", "lowrank:2"]) == 0
    res = json.loads((tmp_path / "flower-smoke.json").read_text())
    fp32, best = res["runs"]["Strata fp32"], res["runs"]["Strata lowrank:2 + base held"]
    assert [r["round"] for r in fp32["rounds"]] == [1, 2] == [r["round"] for r in best["rounds"]]
    assert best["rounds"][0]["down"] == 0  # the workers built version 0 from their own checkpoint
    assert sum(r["up"] for r in best["rounds"]) < sum(r["up"] for r in fp32["rounds"]) / 4
    assert fp32["memory"]["peak_mib"]["coordinator"] > 0 and fp32["memory"]["peak_total_mib"] > 0
    assert "| Strata fp32 |" in (tmp_path / "flower-smoke.md").read_text()
