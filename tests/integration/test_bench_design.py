"""bench.design: the organisations' own preprocessing pipelines (pure), and the whole study on a tiny model:
federations with per-block divergence, centralised runs per architecture, a report, and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import design

TEXTS = [
    "the film is a charming and often affecting journey",
    "an unflinching and often funny look at the lives of the people who make the world go round each day",
    "dull",
]


def test_each_pipeline_changes_the_text_its_own_way() -> None:
    assert design.preprocess(TEXTS, "as-sent", 0) == TEXTS
    truncated = design.preprocess(TEXTS, "truncated", 0)
    assert [len(t.split()) for t in truncated] == [9, 12, 1]
    own = design.preprocess(TEXTS * 200 + ["zebra"], "own-vocabulary", 0, unk="[UNK]")
    assert own[-1] == "zebra"  # 500 most frequent words: the rare one is still in at this size
    big = [f"word{i}" for i in range(600)]
    replaced = design.preprocess([" ".join(big), "word0 word599"], "own-vocabulary", 0, unk="[UNK]")
    assert replaced[1].split()[0] == "word0" and "[UNK]" in replaced[0]
    augmented = design.preprocess(TEXTS * 50, "augmented", 7)
    kept = sum(len(t.split()) for t in augmented) / sum(len(t.split()) for t in TEXTS * 50)
    assert 0.75 < kept < 0.95
    assert augmented == design.preprocess(TEXTS * 50, "augmented", 7)  # seeded
    assert all(t for t in augmented)  # never an empty text
    with pytest.raises(ValueError, match="unknown pipeline"):
        design.preprocess(TEXTS, "stemmed", 0)


def test_smoke_measures_divergence_and_the_gap_then_resumes(tmp_path: Path) -> None:
    argv = ["--smoke", "--out", str(tmp_path), "--seeds", "0", "--arms", "baseline,all", "--pool", "128"]
    assert design.main(argv) == 0
    stored = json.loads((tmp_path / "design-smoke.json").read_text())
    assert len(stored["fed"]) == 2 and len(stored["central"]) == 2  # plain and wide+local
    for rec in stored["fed"].values():
        assert len(rec["accuracy"]) == 2 == len(rec["D"])
        assert {"layer.0", "layer.1", "head"} <= set(rec["D"][0])
        assert all(v is None or v >= 0 for rnd in rec["rho"] for v in rnd.values())
    report = (tmp_path / "design-smoke.md").read_text()
    assert "## Verdicts" in report and "| all | wide, local, harmonised |" in report
    assert (tmp_path / "design-smoke.png").stat().st_size > 0
    before = (tmp_path / "design-smoke.json").read_text()
    assert design.main(argv) == 0
    assert (tmp_path / "design-smoke.json").read_text() == before
