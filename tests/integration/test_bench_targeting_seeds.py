"""bench.targeting_seeds end to end on a tiny model: every arm runs, the report and figure are written,
and a second invocation finds every arm stored and trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import targeting_seeds


def test_attacks_replace_only_the_attackers_update() -> None:
    delta = {"w": torch.ones(3)}
    flip = targeting_seeds.attack_fn("sign-flip", 10.0, attacker=0)
    assert torch.equal(flip(0, delta)["w"], torch.full((3,), -10.0))
    assert flip(1, delta) is delta
    assert torch.equal(targeting_seeds.attack_fn("scale", 4.0)(0, delta)["w"], torch.full((3,), 4.0))
    with pytest.raises(ValueError, match="unknown attack"):
        targeting_seeds.attack_fn("noise", 1.0)


def test_smoke_runs_every_arm_then_resumes_with_nothing_to_do(tmp_path: Path) -> None:
    argv = ["--smoke", "--out", str(tmp_path), "--seeds", "0,1", "--policies", "full,random,fedtlu",
            "--attacks", "sign-flip", "--attack-policies", "full,fedtlu"]  # fmt: skip
    assert targeting_seeds.main(argv) == 0
    stored = json.loads((tmp_path / "targeting-seeds-smoke.json").read_text())["runs"]
    assert len(stored) == 2 * 3 + 2 * 2
    assert {r["attack"] for r in stored.values()} == {"none", "sign-flip"}
    assert all(len(r["accuracy"]) == 3 for r in stored.values())
    report = (tmp_path / "targeting-seeds-smoke.md").read_text()
    assert "fedtlu − random" in report and "## Verdicts" in report and "sign-flip" in report
    assert (tmp_path / "targeting-seeds-smoke.png").stat().st_size > 0
    before = (tmp_path / "targeting-seeds-smoke.json").stat().st_mtime_ns
    assert targeting_seeds.main(argv) == 0  # everything stored: nothing trained, the file untouched
    assert (tmp_path / "targeting-seeds-smoke.json").stat().st_mtime_ns == before
