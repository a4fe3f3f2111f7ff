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
