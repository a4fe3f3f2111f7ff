"""bench.scaling on a tiny model: real coordinators and `strata simulate` runs, the report, and a resume."""

from __future__ import annotations

import json
from pathlib import Path

from bench import scaling


def test_smoke_federates_with_strata_simulate_then_resumes(tmp_path: Path) -> None:
    argv = ["--smoke", "--out", str(tmp_path), "--models", "student", "--clients", "2",
            "--remedies", "fedavgm", "--remedy-clients", "2", "--pool", "64"]  # fmt: skip
    assert scaling.main(argv) == 0
    stored = json.loads((tmp_path / "scaling-smoke.json").read_text())
    assert len(stored["runs"]) == 2
    for rec in stored["runs"].values():
        assert rec["updates"] == [2, 2]  # every virtual worker's update counted in both rounds
        assert len(rec["accuracy"]) == 2 and all(0 <= a <= 1 for a in rec["accuracy"])
    report = (tmp_path / "scaling-smoke.md").read_text()
    assert "| student | 2 | fedavgm |" in report and "## Verdict" in report
    before = (tmp_path / "scaling-smoke.json").read_text()
    assert scaling.main(argv) == 0
    assert (tmp_path / "scaling-smoke.json").read_text() == before


def test_the_verdict_says_when_albert_barely_learns_the_task_at_all() -> None:
    from bench.scaling_report import albert_part

    assert albert_part(None, None, "sst2", 1, 32) == ""
    assert (
        albert_part((0.757, 0.504), 8, "sst2", 1, 32) == ", ALBERT 0.757 → 0.504 (at chance from 8 clients)"
    )
    assert albert_part((0.62, 0.61), None, "sst2", 1, 32) == ", ALBERT 0.620 → 0.610"
    weak = albert_part((0.058, 0.02), 4, "reuters_c50", 1, 32)
    assert weak.startswith(", ALBERT 0.058 → 0.020 (it barely learns the task even with 1 client")
    assert "32-client result says little" in weak and "at chance from" not in weak
