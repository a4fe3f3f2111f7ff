"""bench.gap: recipes parse (or are refused clearly), and the study runs on a tiny model with targeted
layers, a server optimizer, FedProx and the design knobs, then resumes with nothing to train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gap


def test_recipes_parse_into_their_parts_and_unknown_parts_are_refused() -> None:
    r = gap.parse_recipe("fedavgm@0.5+agreement+wide")
    assert (r.server, r.lr, r.policy, r.wide, r.local, r.architecture) == (
        "fedavgm",
        0.5,
        "agreement",
        True,
        False,
        "wide",
    )
    assert gap.parse_recipe("prox@0.1").mu == 0.1 and gap.parse_recipe("fedavg").lr == 1.0
    assert gap.parse_recipe("fedavg+local+wide").architecture == "wide+local"
    with pytest.raises(ValueError, match="unknown part 'momentum'"):
        gap.parse_recipe("fedavg+momentum")
    with pytest.raises(ValueError, match="must be positive"):
        gap.parse_recipe("fedavg@0")


def test_smoke_runs_every_recipe_against_centralised_then_resumes(tmp_path: Path) -> None:
    argv = ["--smoke", "--out", str(tmp_path), "--alphas", "0.5",
            "--recipes", "fedavg,fedavgm@1+agreement+wide+local+prox@0.01"]  # fmt: skip
    assert gap.main(argv) == 0
    stored = json.loads((tmp_path / "gap-smoke.json").read_text())
    assert len(stored["fed"]) == 2 and len(stored["central"]) == 2  # plain and wide+local
    targeted = next(r for r in stored["fed"].values() if r["recipe"] != "fedavg")
    assert len(targeted["applied"][0]) > len(targeted["applied"][1])  # every block in round 1, then fewer
    report = (tmp_path / "gap-smoke.md").read_text()
    assert "## Verdict" in report and "| fedavgm@1+agreement+wide+local+prox@0.01 | 1 |" in report
    before = (tmp_path / "gap-smoke.json").read_text()
    assert gap.main(argv) == 0
    assert (tmp_path / "gap-smoke.json").read_text() == before
    with pytest.raises(SystemExit):
        gap.main(["--smoke", "--out", str(tmp_path), "--recipes", "fedavgm@1"])  # no fedavg baseline
