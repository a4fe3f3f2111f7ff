"""The simulate benchmark's smoke mode: a tiny model, a few virtual workers, a report with every number."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS


def test_quick_runs_the_simulation_and_reports_every_number(tmp_path: Path) -> None:
    kept = RESULTS / "simulate.md"
    before = kept.stat().st_mtime_ns if kept.exists() else None
    out = tmp_path / "simulate.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.simulate", "--quick", "--workers", "3", "6", "--processes", "1"]
        + ["--rounds", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (kept.stat().st_mtime_ns if kept.exists() else None) == before  # --out leaves the results alone
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert [int(r[0]) for r in rows] == [3, 6]
    for r, n in zip(rows, (3, 6), strict=True):
        assert int(r[1]) == 1 and int(r[2]) == 1  # processes, rounds
        assert float(r[3]) > 0 and float(r[4]) > 0
        assert r[5].strip() == f"yes ({n} updates)"
        assert all(float(c.replace(",", "")) > 0 for c in r[6:])
    assert "From 3 to 6 virtual workers" in out.read_text()
