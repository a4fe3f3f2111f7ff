"""`python -m bench.lora --quick`: every arm of the three studies (full fine-tuning against LoRA r = 8 and
r = 16 with the base held and downloaded; mixed ranks with product and factor aggregation; instruction tuning
of a tiny LLaMA) end to end on tiny models, as a subprocess, then the report again from its JSON alone.
Reads SST-2 in ../shared/data."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import ROOT, SHARED_DATA

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "sst2").is_dir(), reason="needs the shared data sets (../shared/data)"
)


def bench(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.lora", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def finite(xs: list[float | None]) -> bool:
    return bool(xs) and all(x is not None and math.isfinite(x) for x in xs)


def test_quick_runs_every_arm_and_renders_from_json(tmp_path: Path) -> None:
    bench("--quick", "--out", str(tmp_path))
    res = json.loads((tmp_path / "lora.json").read_text())
    a = res["args"]

    s = res["sst2"]
    arms = s["arms"]
    r0 = a["ranks"][0]
    want = {"full fine-tuning", *(f"LoRA r={r}" for r in a["ranks"]), f"LoRA r={r0}, base downloaded"}
    assert set(arms) == want and all("error" not in r for r in arms.values()), arms
    full = arms["full fine-tuning"]
    assert full["lora"] is None and full["lr"] == a["full_lr"]
    for name, r in arms.items():
        rounds = a["download_rounds"] if "downloaded" in name else a["rounds"]
        assert len(r["rounds"]) == rounds, name
        assert finite([x["test_accuracy"] for x in r["rounds"]]), name
        assert all(x["bytes_up"] > 0 and x["bytes_down"] > 0 for x in r["rounds"]), name
        assert all(len(x["updates"]) == a["workers"] for x in r["rounds"]), name
        assert all(
            u["train_seconds"] > 0 and u["num_steps"] == a["steps"] for x in r["rounds"] for u in x["updates"]
        )
        if r["lora"] is None:
            continue
        # an adapter travels, much less than the whole model; product aggregation records what it discards
        assert r["lora"]["rank"] in a["ranks"] and r["lora"]["alpha"] == 2 * r["lora"]["rank"], name
        assert r["lr"] == a["lora_lr"] and r["travelling"] < full["travelling"] / 2, name
        assert all(d is not None and 0 <= d < 1 for d in r["discarded"]), name
        assert r["distance"] == pytest.approx(r["discarded"], rel=1e-3, abs=1e-6), name
        later = [x["bytes_up"] for x in r["rounds"][1:]]
        assert max(later) < min(x["bytes_up"] for x in full["rounds"][1:]), name
    # workers holding the base download none of it; the others download all of it, once
    held = arms[f"LoRA r={r0}"]
    down = arms[f"LoRA r={r0}, base downloaded"]
    assert held["holds_base"] and not down["holds_base"]
    assert held["base_cached"] == [0] * a["workers"]
    assert down["base_cached"] == [s["base_bytes"]] * a["workers"]
    sent_after = sum(x["bytes_down"] for x in down["rounds"][1:])
    assert down["bytes_sent_counter"] - sent_after >= a["workers"] * s["base_bytes"]
    assert held["bytes_sent_counter"] == sum(x["bytes_down"] for x in held["rounds"])
    for name in ("full fine-tuning", *(f"LoRA r={r}" for r in a["ranks"])):
        p = arms[name]["probe"]
        assert p["peak_mib"] >= p["loaded_mib"] > 0 and p["steps"] == a["probe_steps"], name
    assert arms[f"LoRA r={r0}"]["probe"]["trainable"] < full["probe"]["trainable"] / 2

    k = res["ranks"]
    assert set(k["arms"]) == {"product", "factors"} and all("error" not in r for r in k["arms"].values())
    assert sorted(set(k["worker_ranks"].values())) == sorted(set(a["mixed_ranks"]))
    for agg, r in k["arms"].items():
        assert len(r["rounds"]) == a["ranks_rounds"] and finite([x["test_accuracy"] for x in r["rounds"]])
        assert r["lora"]["aggregation"] == agg and r["lora"]["rank"] == max(a["mixed_ranks"])
        assert {u["lora_rank"] for x in r["rounds"] for u in x["updates"]} == set(a["mixed_ranks"])
        assert finite(r["distance"]) and len(r["distance"]) == a["ranks_rounds"]
    product, factors = k["arms"]["product"], k["arms"]["factors"]
    assert finite(product["discarded"]) and product["distance"] == pytest.approx(
        product["discarded"], rel=1e-3
    )
    assert factors["discarded"] == [None] * a["ranks_rounds"]

    ins = res["instruct"]
    arms = ins["arms"]
    assert len(arms) == len(a["lm_targets"]) and all("error" not in r for r in arms.values()), arms
    # the family's default targets, then the same plus an adapter on the output head
    assert [r["lora"]["targets"] for r in arms.values()] == [
        ["q_proj", "v_proj"],
        ["q_proj", "v_proj", "lm_head"],
    ]
    for name, r in arms.items():
        assert r["lora"]["modules_to_save"] == [] and r["lr"] == a["lm_lr"], name
        assert len(r["rounds"]) == a["lm_rounds"] and finite([x["test_loss"] for x in r["rounds"]]), name
        assert finite([x["test_accuracy"] for x in r["rounds"]]), name
    assert (
        finite([ins["round0"]["loss"], ins["scratch"]["loss"]])
        and ins["pretrain"]["steps"] == a["pretrain_steps"]
    )
    assert len(ins["ops"]) == a["lm_workers"] and all(len(o) == a["lm_ops"] for o in ins["ops"].values())

    report = (tmp_path / "lora.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## What was cut"):
        assert heading in report
    tables = (
        "| round | full fine-tuning |",
        "| arm | round 1 up |",
        "| arm | train_seconds per round |",
        "| round | product accuracy | factors accuracy |",
        "| round | LoRA r=",
    )
    for table in tables:
        assert table in report, table
    assert "Claim: held-out response perplexity falls across rounds" in report
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "lora.png").stat().st_size > 1000

    again = tmp_path / "again"  # the report again from the JSON alone, nothing trained
    bench("--from-json", str(tmp_path / "lora.json"), "--out", str(again))
    assert (again / "lora.md").read_text() == report
