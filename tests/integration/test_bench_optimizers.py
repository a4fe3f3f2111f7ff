"""`python -m bench.optimizers --smoke`: the whole study (server-lr sweep, continuation from a checkpoint,
later α, centralised baseline, report, plot, JSON) on a tiny model and generated data, then again from its
JSON without training anything. Reads nothing from ../shared."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.optimizers_data import reference_split
from bench.optimizers_runs import workload_seed
from worker.trainer import local_seed

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"fedavg", "fedadam", "fedprox (μ = 0.1)"}


def run(out: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.optimizers", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def table(report: str, alpha: str) -> dict[str, list[str]]:
    """The results table of one α: {method: cells after the method}."""
    section = report.split(f"## α = {alpha},", 1)[1]
    rows = re.findall(r"^\| ([^|]+?) \| (.+) \|$", section.split("\n\n", 3)[2], re.M)
    return {name: [c.strip() for c in rest.split("|")] for name, rest in rows[1:]}


def number(cell: str) -> float:
    return float(cell.replace("−", "-"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("optimizers")
    return out, run(out)


def test_the_report_has_a_row_per_method_with_numbers_in_range(study: tuple[Path, str]) -> None:
    out, stdout = study
    report = (out / "optimizers.md").read_text()
    for alpha in ("0.5", "0.1"):
        rows = table(report, alpha)
        central = next(
            c for name, c in rows.items() if name.startswith("centralised") and "epoch" not in name
        )
        assert set(rows) >= METHODS, rows
        for name in METHODS:
            lr, final, best, gap, reach = rows[name]
            assert float(lr) > 0
            assert 0.0 <= number(final) <= number(best) <= 1.0
            assert abs(number(gap) - 100 * (number(final) - number(central[1]))) < 0.011
            assert reach == "—" or 1 <= int(reach) <= 2
    assert "The closest setting is" in report and "## What was cut to fit the budget" in report
    assert "| fedadam | 0.003 |" in report and "| fedadam | 0.01 |" in report  # the sweep table
    # the sweep's winner went on from its checkpoint, and every checkpoint is gone at the end
    assert "resuming after round 1" in stdout
    assert not list((out / "checkpoints").glob("*.safetensors"))
    stored = json.loads((out / "optimizers.json").read_text())
    assert len(stored["runs"]) == 7 and len(stored["central"]) == 1
    if importlib.util.find_spec("matplotlib"):
        assert (out / "optimizers.png").stat().st_size > 1000


def test_a_second_run_trains_nothing_and_writes_the_same_tables(study: tuple[Path, str]) -> None:
    out, _ = study
    before = (out / "optimizers.md").read_text()
    stdout = run(out)
    assert "(0 rounds still to train), centralised 0 steps" in stdout
    assert not re.search(r"round +\d+/\d+: accuracy", stdout)
    after = (out / "optimizers.md").read_text()
    assert before.split("## Machine")[0] == after.split("## Machine")[0]


def test_the_split_and_the_seeds_follow_the_reference_procedure() -> None:
    labels = [i % 3 % 2 for i in range(600)]  # both labels, unevenly
    pool, shards, q = reference_split(labels, 0.5, clients=4, per_client=50, seed=0)
    assert sorted(i for s in shards for i in s) == list(range(200)) and len(set(pool)) == 200
    assert all(len(s) == 50 and s == sorted(s) for s in shards) and len(q) == 4
    assert (pool, shards, q) == reference_split(labels, 0.5, clients=4, per_client=50, seed=0)
    for t, k in ((1, 0), (10, 7)):
        assert local_seed(workload_seed(t, k, f"client-{k}"), t, f"client-{k}") == 1000 * t + k
