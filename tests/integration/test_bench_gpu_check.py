"""`python -m bench.gpu_check --smoke`: the GPU check end to end on a tiny LLaMA on the CPU (a plain peft
loop, then a real LoRA federation of a `strata coordinator` process and 2 `strata worker` processes, 1
round), its report's tables filled with numbers; and without a GPU the full check refuses with exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.common import RESULTS

ROOT = Path(__file__).resolve().parents[2]
TOKENS_PER_STEP = 4 * 32  # the smoke workload: batch 4 × seq_len 32


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table(report: str, section: str) -> list[list[str]]:
    """The body rows of the first table under `## section`, as stripped cells."""
    part = report.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in part.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


def value(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_smoke_runs_a_lora_federation_and_reports_every_number(tmp_path: Path) -> None:
    kept = RESULTS / "gpu_check.md"
    before = kept.stat().st_mtime_ns if kept.exists() else None
    out = tmp_path / "report.md"
    done = run("--smoke", "--out", str(out), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = out.read_text()
    assert report in done.stdout
    assert (kept.stat().st_mtime_ns if kept.exists() else None) == before  # smoke never writes it

    tokens = {(r[0], r[1], r[2]): r for r in table(report, "Tokens per second")}
    loop = tokens[("plain peft loop", "fp32", "–")]
    assert int(loop[3]) == 3 and value(loop[5]) > 0 and loop[6] == "1.00"
    for worker in ("org-1", "org-2"):
        r = tokens[(f"strata {worker}", "fp32", "1")]
        steps, seconds, rate = int(r[3]), value(r[4]), value(r[5])
        assert steps == 3 and seconds > 0  # tokens/s = num_steps × batch × seq_len / train_seconds
        half = 0.5 * 10 ** -len(r[4].partition(".")[2])  # the seconds cell is rounded to its digits
        assert (
            steps * TOKENS_PER_STEP / (seconds + half) - 1
            <= rate
            <= steps * TOKENS_PER_STEP / (seconds - half) + 1
        )
        assert value(r[6]) > 0 and r[7] in ("yes", "no")
    both = tokens[("strata, both workers", "fp32", "1")]
    assert int(both[3]) == 6 and value(both[5]) > 0 and "span" in both[8]
    for run_ in ("plain peft loop", "strata"):
        assert "skipped: a CPU cannot quantize" in tokens[(run_, "4-bit", "–")][5]
    assert re.search(
        r"^- fp32: in the last round each worker ran at .* goal ≥ 0\.9× (met|not met)", report, re.M
    )

    memory = {(r[0], r[1]): r for r in table(report, "Peak memory")}
    for worker in ("org-1", "org-2"):
        assert value(memory[(f"strata {worker}", "fp32")][2]) > 50  # MiB: a worker process imports torch
    assert "skipped" in memory[("strata", "4-bit")][3]

    (bytes_row,) = table(report, "Bytes per round")
    assert bytes_row[:3] == ["fp32", "1", "completed"]
    up, down, raw_up, raw_down = (value(c) for c in bytes_row[3:7])
    assert up > 0 and down > 0 and raw_up > 0 and raw_down > 0
    assert "## Error" not in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_the_full_check_refuses() -> None:
    done = run(timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "needs a CUDA GPU" in done.stderr and "--smoke" in done.stderr
