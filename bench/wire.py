"""Wire bytes per round, up and down, and final accuracy for each encoding, against sending full fp32
weights both ways (what Flower's FedAvg sends), on the demo workload: every run in one command.

    python bench/wire.py                      # generated data, small BERT (the demo), 3 workers, 5 rounds
    python bench/wire.py --data ../shared/data/sst2 --model <MiniLM dir> --train-examples 3000 \\
        --test-examples 872 --max-steps 30 --lr 1e-4 --label sst2

Each configuration runs `strata demo` (real coordinator, workers and gRPC); the figures come from the
coordinator's database. Flower's bytes are computed from the model size: each participant downloads
and uploads every fp32 parameter each round.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, write_report

CONFIGS = [
    ("fp32", "fp32", 0.1),
    ("bf16", "bf16", 0.1),
    ("int8", "int8", 0.1),
    ("topk", "bf16", 0.1),
]


def run_demo(
    workdir: Path, up: str, down: str, q: float, extra: list[str]
) -> tuple[list[sqlite3.Row], int, float]:
    cmd = [
        sys.executable,
        "-m",
        "strata.cli",
        "demo",
        "--workdir",
        str(workdir),
        "--encoding",
        up,
        "--down-encoding",
        down,
        "--topk-fraction",
        str(q),
        *extra,
    ]
    t = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"demo failed ({' '.join(cmd)}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    seconds = time.monotonic() - t
    db = sqlite3.connect(workdir / "strata.db")
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT * FROM rounds WHERE state = 'completed' ORDER BY number").fetchall()
    params = db.execute("SELECT num_parameters FROM federations").fetchone()[0]
    db.close()
    return rows, params, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="demo", help="name of the report (bench/results/wire-LABEL.md)")
    args, extra = ap.parse_known_args()
    lines = [
        f"# Wire bytes per round: {args.label}",
        "",
        f"`python bench/wire.py {' '.join(sys.argv[1:])}`; machine: {machine()}.",
        "Per round, summed over the participants; the first round's download is a full snapshot for every "
        "encoding (new workers), later rounds send the global update.",
        "",
        "| upstream | downstream | final test acc | up bytes/round | up vs Flower | down bytes/round (rounds 2+) | down vs Flower | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    trajectories: list[str] = []
    for up, down, q in CONFIGS:
        with tempfile.TemporaryDirectory() as tmp:
            rows, params, seconds = run_demo(Path(tmp) / "run", up, down, q, extra)
        k = rows[0]["num_updates"]
        flower = params * 4 * k  # bytes each way per round
        up_avg = sum(r["bytes_up"] for r in rows) / len(rows)
        later = rows[1:] or rows
        down_avg = sum(r["bytes_down"] for r in later) / len(later)
        acc = rows[-1]["test_accuracy"]
        name = f"topk q={q}" if up == "topk" else up
        lines.append(
            f"| {name} | {down} | {acc:.4f} | {up_avg:,.0f} | {flower / up_avg:.1f}x smaller | "
            f"{down_avg:,.0f} | {flower / down_avg:.1f}x smaller | {seconds:.0f} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
        trajectories.append(
            f"| {name} / {down} | "
            + " | ".join(f"{r['test_accuracy']:.4f} ({r['test_loss']:.4f})" for r in rows)
            + " |"
        )
    lines += [
        "",
        "Test accuracy (loss) per round:",
        "",
        "| configuration | " + " | ".join(f"round {i + 1}" for i in range(len(rows))) + " |",
        "|---|" + "---:|" * len(rows),
        *trajectories,
    ]
    lines += [
        "",
        f"Model: {params:,} parameters; Flower's FedAvg sends {params * 4:,} bytes per worker each way per round.",
        "",
    ]
    write_report(f"wire-{args.label}", "\n".join(lines))


if __name__ == "__main__":
    main()
