"""`python -m bench.worldlm --quick`: every arm of the three experiments (flat, trees with and without key
blocks, sub-federations alone; 1, 2 and 3 levels) end to end on tiny models, then the report again from
its JSON alone. Reads the data sets in ../shared/data."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from bench.common import SHARED_DATA
from bench.worldlm import main

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "sst2_pt").is_dir(), reason="needs the shared data sets (../shared/data)"
)

A_ARMS = {
    "flat",
    "tree",
    "tree top:1 mean",
    "tree top:1 attention",
    "tree top:2 mean",
    "tree top:2 attention",
    "local only",
}
B_ARMS = {"flat", "tree", "tree top:1 attention", "local only"}


def finite(xs: list[float | None]) -> bool:
    return bool(xs) and all(x is not None and math.isfinite(x) for x in xs)


def test_quick_runs_every_arm_and_renders_from_json(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "worldlm.json").read_text())
    assert set(res["A"]["arms"]) == A_ARMS and set(res["B"]["arms"]) == B_ARMS
    for exp, groups in (("A", {"en", "pt"}), ("B", {"news", "forum", "pt"})):
        for name, arm in res[exp]["arms"].items():
            assert set(arm["per_round"]) == groups, name
            rounds = res["args"]["rounds_a" if exp == "A" else "rounds_b"]
            for g, m in arm["per_round"].items():
                assert len(m["loss"]) == rounds and finite(m["loss"]) and finite(m["accuracy"]), (
                    exp,
                    name,
                    g,
                )
            assert min(arm["tiers"]["0"]["up"]) > 0 and min(arm["tiers"]["0"]["down"]) > 0
            if arm["kind"] == "tree":  # the parent and its sub-federations both moved bytes
                assert arm["tiers"]["1"]["coordinators"] == len(groups) and min(arm["tiers"]["1"]["up"]) > 0
                assert finite([w["accuracy"] for w in arm["world"].values()])
    # the attentive parents recorded a weight per member and key block
    assert {r["member"] for r in res["B"]["arms"]["tree top:1 attention"]["key_weights"]} == {
        "news",
        "forum",
        "pt",
    }
    levels = res["C"]["levels"]
    assert [levels[k]["coordinators"] for k in ("1", "2", "3")] == [1, 3, 7]
    assert sorted(levels["3"]["tiers"]) == ["0", "1", "2"]
    report = (tmp_path / "worldlm.md").read_text()
    for heading in ("## A.", "## B.", "## C.", "## What was cut"):
        assert heading in report
    assert "flat / tree top:1 attention" in report and ("goal is met" in report or "not met" in report)
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "worldlm.png").stat().st_size > 1000

    again = tmp_path / "again"  # the report again from the JSON alone, nothing trained
    assert main(["--from-json", str(tmp_path / "worldlm.json"), "--out", str(again)]) == 0
    assert (again / "worldlm.md").read_text() == report
