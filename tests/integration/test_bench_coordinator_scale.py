"""The workers-per-coordinator benchmark's smoke mode: a tiny model, a few light workers, every number."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS


def test_quick_reports_every_number_and_counts_each_update_once(tmp_path: Path) -> None:
    kept = RESULTS / "coordinator_scale.md"
    before = kept.stat().st_mtime_ns if kept.exists() else None
    out = tmp_path / "scale.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.coordinator_scale", "--quick", "--workers", "2", "6"]
        + ["--rounds", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (kept.stat().st_mtime_ns if kept.exists() else None) == before
    text = out.read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")][1:]
    assert [int(r[0]) for r in rows] == [2, 6]
    for r in rows:
        assert int(r[1]) == 2 and len(r[2].split(",")) == 2
        assert float(r[3].replace(",", "")) > 0 and float(r[4]) > 0
        assert r[5].strip() == "yes"
        assert int(r[6].replace(",", "")) > 0 and int(r[7].replace(",", "")) > 0 and float(r[8]) >= 0
    assert "- Knee (round time per worker at least twice its lowest, " in text
