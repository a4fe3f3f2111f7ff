"""`python -m bench.privacy --quick`: every arm of the three studies (accuracy against ε with fixed and
adaptive clipping, whole model and head + pooler; flat and trees with DP over workers or at the parent; the
accountants) end to end on tiny models, then the report again from its JSON alone. Reads the data sets in
../shared/data."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from bench.common import SHARED_DATA
from bench.privacy import main

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "sst2_pt").is_dir(), reason="needs the shared data sets (../shared/data)"
)

LM_ARMS = {
    "flat",
    "tree",
    "tree top:1 attention",
    "flat + DP(workers)",
    "tree + DP(workers)",
    "tree top:1 attention + DP(workers)",
    "tree + DP(parent)",
}


def finite(xs: list[float | None]) -> bool:
    return bool(xs) and all(x is not None and math.isfinite(x) for x in xs)


def test_quick_runs_every_arm_and_renders_from_json(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "privacy.json").read_text())
    a = res["args"]

    acc = res["accuracy"]
    budgets = [float(e) for e in acc["z"]]
    assert sorted(budgets) == a["epsilons"]
    arms = acc["arms"]
    assert len(arms) == 1 + 2 * len(budgets) + 3 and all("error" not in r for r in arms.values()), arms
    for name, r in arms.items():
        assert len(r["per_round"]["accuracy"]) == a["rounds_a"] and finite(r["per_round"]["accuracy"]), name
        assert finite(r["per_round"]["loss"]), name
        rows = r["rounds"]
        if r["epsilon"] is None:  # no DP: norms recorded, nothing private
            assert not any(x["private"] for x in rows) and all(r["norms"]), name
            continue
        # DP: every round private, its z, the clip the arm was given, ε within the budget and near it at the end
        assert all(x["private"] and x["z"] == pytest.approx(r["dp"]["z"]) for x in rows), name
        assert rows[0]["clip"] == pytest.approx(r["dp"]["clip"]), name
        eps = [x["epsilon"] for x in rows]
        assert eps == sorted(eps) and r["epsilon"] * 0.98 <= eps[-1] <= r["epsilon"], name
        assert r["norms"] == [[]] * a["rounds_a"], name  # nothing per member recorded under DP
        if r["adaptive"]:
            assert all(x["next_clip"] is not None and x["unclipped"] is not None for x in rows), name
            assert rows[1]["clip"] == pytest.approx(rows[0]["next_clip"]), name
            assert r["dp"]["z_update"] > r["dp"]["z"]
        else:
            assert {x["clip"] for x in rows} == {r["dp"]["clip"]} and rows[0]["next_clip"] is None, name
        if r["scope"] == "full":
            assert r["dp"]["clip"] == pytest.approx(acc["clip"]["full"]), name
    # the targeted arms train every block in round 1 (the probe), then the head and the smallest block only
    targeted = [r for r in arms.values() if r["scope"] == "targeted"]
    assert len(targeted) == 3
    every = set(acc["blocks"]["sizes"])
    for r in targeted:
        assert set(r["rounds"][0]["blocks"] or every) == every
        assert set(r["rounds"][1]["blocks"]) == {acc["blocks"]["smallest"], *acc["blocks"]["head"]}

    lm = res["worldlm"]
    assert set(lm["arms"]) == LM_ARMS and all("error" not in r for r in lm["arms"].values()), lm["arms"]
    for name, r in lm["arms"].items():
        assert set(r["per_round"]) == {"news", "forum", "pt"}, name
        for g, m in r["per_round"].items():
            assert len(m["loss"]) == a["rounds_b"] and all(x is not None for x in m["loss"]), (name, g)
        tiers = {"workers": {"flat": {"0"}, "tree": {"1"}}, "parent": {"tree": {"0"}}}
        want = tiers[r["dp_at"]][r["kind"]] if r["dp_at"] else set()
        assert set(r["epsilon"]) == want, name  # ε recorded exactly at the private tier
        for per in r["epsilon"].values():
            for curve in per.values():
                assert len(curve) == a["rounds_b"] and curve[-1] <= lm["epsilon"], name
        if r["dp_at"] == "workers" and r["kind"] == "tree":
            assert set(r["epsilon"]["1"]) == {"news", "forum", "pt"}, name

    rows = res["accountant"]["rows"]
    assert len(rows) == len(budgets) + 3
    for row in rows:
        assert all(row[k] is not None for k in ("strata", "opacus_rdp", "opacus_prv", "pld")), row
        assert row["strata"] == pytest.approx(row["opacus_rdp"], rel=0.01)
        assert row["pld"] <= row["strata"] * 1.001 and row["opacus_prv"] <= row["strata"] * 1.001

    report = (tmp_path / "privacy.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## What was cut"):
        assert heading in report
    assert "WorldLM's claim" in report and "E‖noise‖ / S" in report
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "privacy.png").stat().st_size > 1000

    again = tmp_path / "again"  # the report again from the JSON alone, nothing trained
    assert main(["--from-json", str(tmp_path / "privacy.json"), "--out", str(again)]) == 0
    assert (again / "privacy.md").read_text() == report
