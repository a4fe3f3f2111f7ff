"""Strata against Flower on the reference workload, in one run, one after the other: test accuracy, wall
time, bytes each way and memory per round and in total, for Flower's FedAvg, Strata's fp32 FedAvg and
Strata's best-bytes setting.

    python -m bench.flower --setup          # once: Flower 1.41.0 in its own virtual environment (.venv-flower)
    python -m bench.flower [--best lowrank:16] [--skip-flower]
    python -m bench.flower --smoke --skip-flower --out DIR      # Strata's part on a tiny model, in seconds

The workload is ../shared/reference/WORKLOAD.md, unchanged: SST-2, 8 clients x 256 examples (Dirichlet
alpha = 0.5; the files are checked against its SHA-256 list), MiniLM-L6, 5 rounds of FedAvg over all 8
clients, 1 local epoch of batch 32 with a fresh AdamW (lr 5e-5, no weight decay), max_length 64, and
server-side evaluation on the 872-row test set after every round. Flower runs as RESULTS-flower.md
arranged it: flwr 1.41.0's Deployment Runtime (one SuperLink, 8 SuperNodes, `flwr run --stream`), its
ServerApp and ClientApp in bench/flower_app/, in a virtual environment of its own (flwr pins versions of
packages Strata also uses). Strata runs its product: one coordinator process and 8 `strata worker`
processes over gRPC on 127.0.0.1. Every client process trains on one thread (OMP_NUM_THREADS=1), the
servers evaluate on two. The best-bytes setting sends `--best` both ways and its workers start from their
own copy of MiniLM (`--base-model`), so round 1 downloads nothing.

Bytes are the parameter payload: Flower's Σ ndarray.nbytes of the arrays each way (what RESULTS-flower.md
counts as nbytes), Strata's compressed frames as its coordinator counts them. Memory is the peak RSS of
each role's process tree, and of all of them together, sampled every 0.25 s. Ratios are from this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine, write_report
from bench.flower_runs import FLOWER_APP, FLOWER_VERSION, run_flower, run_strata, write_data
from bench.optimizers_data import make_split, reference_workload, smoke_workload
from strata import atomic

VENV = ROOT / ".venv-flower"


def setup(venv: Path) -> int:
    """Flower and what its apps import, in their own virtual environment."""
    import torch
    import transformers

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [f"flwr=={FLOWER_VERSION}", f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}", "zstandard", "numpy"]  # fmt: skip
    return subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *pins]).returncode


def totals(run: dict[str, Any]) -> dict[str, float]:
    rounds = run["rounds"]
    return {
        "accuracy": rounds[-1]["accuracy"],
        "down": sum(r["down"] for r in rounds),
        "up": sum(r["up"] for r in rounds),
        "rounds_s": sum(r["seconds"] or 0 for r in rounds),
    }


def report(res: dict[str, Any]) -> str:
    runs: dict[str, dict[str, Any]] = res["runs"]
    clients, n = res["clients"], res["rounds"]
    lines = [
        "# Strata against Flower on the reference workload",
        "",
        f"`{res['command']}`; {res['machine']}; {res['minutes']:.1f} min in all. {res['workload']}. Data: "
        f"{res['check']}.",
        "",
        "| system | accuracy after round " + str(n) + " | rounds s | wall s | MB down per worker per round | "
        "MB up per worker per round | server peak MiB | all processes peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        t = totals(run)
        mem = run["memory"]
        server = mem["peak_mib"].get("superlink", mem["peak_mib"].get("coordinator", 0))
        lines.append(
            f"| {name} | {t['accuracy']:.4f} | {t['rounds_s']:.0f} | {run['wall']:.0f} | "
            f"{t['down'] / clients / n / 1e6:.2f} | {t['up'] / clients / n / 1e6:.2f} | {server:.0f} | "
            f"{mem['peak_total_mib']:.0f} |"
        )
    base = runs.get("Flower")
    if base is not None:
        bt = totals(base)
        lines += ["", "Ratios from this run (Flower ÷ Strata; accuracy as a difference):", ""]
        for name, run in runs.items():
            if name == "Flower":
                continue
            t = totals(run)
            lines.append(
                f"- {name}: {bt['rounds_s'] / t['rounds_s']:.2f}x faster rounds, {base['wall'] / run['wall']:.2f}x "
                f"less wall time, {(bt['down'] + bt['up']) / (t['down'] + t['up']):.0f}x fewer bytes, "
                f"{base['memory']['peak_total_mib'] / run['memory']['peak_total_mib']:.2f}x less memory in all, "
                f"accuracy {100 * (t['accuracy'] - bt['accuracy']):+.2f} points."
            )
    lines += ["", "Per round (accuracy / round seconds / MB down and up per worker):", "",
              "| round | " + " | ".join(runs) + " |", "|---:|" + "---|" * len(runs)]  # fmt: skip
    for i in range(n):
        cells = []
        for run in runs.values():
            r = run["rounds"][i] if i < len(run["rounds"]) else None
            cells.append("–" if r is None else f"{r['accuracy']:.4f} / {r['seconds'] or 0:.0f} s / "
                         f"{r['down'] / clients / 1e6:.2f} + {r['up'] / clients / 1e6:.2f}")  # fmt: skip
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", "Peak RSS per role (MiB): " + "; ".join(
        f"{name}: " + ", ".join(f"{role} {v:.0f}" for role, v in run["memory"]["peak_mib"].items())
        for name, run in runs.items()) + "."]  # fmt: skip
    lines += ["", res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--setup", action="store_true", help=f"create {VENV.name} with flwr {FLOWER_VERSION} and exit"
    )
    p.add_argument("--flower-venv", type=Path, default=VENV)
    p.add_argument(
        "--best", default="lowrank:16", help="Strata's best-bytes encoding, both ways (ENC[:RANK])"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--skip-flower", action="store_true", help="run Strata's part only")
    p.add_argument("--smoke", action="store_true", help="a tiny model and generated data (Strata's part)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.setup:
        return setup(args.flower_venv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-flower-"))
    # the smoke run: two clients of a tiny model, enough to run every step of Strata's part
    wl = (
        dataclasses.replace(smoke_workload(work / "smoke-model"), clients=2)
        if args.smoke
        else reference_workload()
    )
    rounds = min(args.rounds, 2) if args.smoke else args.rounds
    split = make_split(wl, 0.5)
    check = write_data(wl, split, work / "data")
    enc, _, rank = args.best.partition(":")
    runs: dict[str, Any] = {}
    if not args.skip_flower:
        python = args.flower_venv / "bin" / "python"
        if not python.is_file():
            raise SystemExit(
                f"{python} not found: run `python -m bench.flower --setup` first (or --skip-flower)"
            )
        print("Flower ...", file=sys.stderr, flush=True)
        runs["Flower"] = run_flower(python, work / "data", wl.model_dir, work / "flower", rounds, wl.clients)
    for name, up, r, base in (
        ("Strata fp32", "fp32", 8, False),
        (f"Strata {args.best} + base held", enc, int(rank or 16), True),
    ):
        print(f"{name} ...", file=sys.stderr, flush=True)
        runs[name] = run_strata(name, up, up, r, base, work / "data", wl.model_dir, wl.labels, work / name.replace(" ", "_"),
                                rounds, wl.clients)  # fmt: skip
    res = {
        "command": "python -m bench.flower " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "workload": f"{wl.name}: {wl.clients} clients x {wl.per_client}, {rounds} rounds",
        "check": check,
        "clients": wl.clients,
        "rounds": rounds,
        "runs": runs,
        "minutes": (time.monotonic() - started) / 60,
        "notes": (
            "Flower's round seconds run from sending a round's train messages to the end of its evaluation "
            "(the ServerApp's clock); Strata's are the coordinator's round duration (open to closed, the "
            "evaluation included). Wall is the launch of the first process to the results. "
            f"The Flower app is {FLOWER_APP.relative_to(ROOT)}. One seed per system: Strata's workers draw "
            "their own shuffle and dropout seeds, so its accuracy differs from Flower's by what another seed "
            "would change."
        ),
    }
    out = args.out or (ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    name = "flower-smoke" if args.smoke else "flower"
    atomic.write_text(out / f"{name}.json", json.dumps(res, indent=1))
    write_report(name, report(res), out / f"{name}.md" if args.out else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
