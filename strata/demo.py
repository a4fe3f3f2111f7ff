"""`strata demo`: a whole federation on this machine: coordinator, dashboard API and N worker processes.

The demo only starts processes (`python -m strata.cli ...`) and reads the REST API, so it exercises the
same paths an operator uses, and this shared core still imports none of the services.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ByteSize, TypeAdapter, ValidationError

from strata import synthetic
from strata.data import Example, load_dataset_dir, write_examples, write_labels
from strata.names import ENCODINGS
from strata.selection import POLICIES
from strata.split import dirichlet_split, holdout, label_histogram
from strata.targeting import SCHEDULES, TargetingConfig

FEDERATION = "demo"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run a complete federation on this machine",
        description="Start a coordinator, the dashboard API and N workers on this machine (SQLite, CPU), "
        "run the rounds, print a line per round and a final table.",
    )
    p.add_argument("--workers", type=int, default=3, help="number of worker processes (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="rounds to run (default 5)")
    p.add_argument(
        "--data", type=Path, help="data folder with train/test splits and labels.json (default: generated)"
    )
    p.add_argument(
        "--model", type=Path, help="transformers model directory (default: a small BERT built from a config)"
    )
    p.add_argument("--db", help="database URL (default: SQLite in the work folder)")
    p.add_argument(
        "--serve", action="store_true", help="keep the dashboard API up afterwards (Ctrl-C to stop)"
    )
    p.add_argument("--workdir", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration of the non-IID label split (default 0.5)",
    )
    p.add_argument(
        "--train-examples",
        type=int,
        help="training examples shared among workers (default 2400 generated, 4000 with --data)",
    )
    p.add_argument(
        "--test-examples",
        type=int,
        default=500,
        help="held-out examples the coordinator evaluates on (default 500)",
    )
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round (default 1)")
    p.add_argument("--max-steps", type=int, default=0, help="cap on local steps per round (default: no cap)")
    p.add_argument("--batch-size", type=int, default=16, help="local batch size (default 16)")
    p.add_argument(
        "--lr",
        type=float,
        help="local learning rate (default 1e-3 for the generated model, 5e-5 with --model)",
    )
    p.add_argument("--max-seq-len", type=int, default=64, help="tokens per example (default 64)")
    p.add_argument(
        "--round-timeout", type=float, default=600.0, help="round deadline in seconds (default 600)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for data, split and model (default 0)")
    p.add_argument("--port", type=int, default=0, help="dashboard API port (default: a free one)")
    p.add_argument(
        "--encoding", choices=ENCODINGS, default="fp32", help="upstream update encoding (default fp32)"
    )
    p.add_argument(
        "--topk-fraction", type=float, default=0.1, help="topk: share of entries sent (default 0.1)"
    )
    p.add_argument(
        "--down-encoding",
        choices=ENCODINGS,
        help="encoding of the global update sent down (default: --encoding)",
    )
    p.add_argument(
        "--downstream",
        choices=["delta", "snapshot"],
        default="delta",
        help="workers download the global updates (delta, default) or the whole model (snapshot)",
    )
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="full",
        help="layer selection policy (default full: every block every round)",
    )
    p.add_argument(
        "--blocks",
        type=int,
        default=0,
        help="blocks besides the head trained per round (random/fedtlu/agreement)",
    )
    p.add_argument("--block-budget", default="0", help="instead of --blocks: fp32 bytes per round, e.g. 20MB")
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="pre-selected",
        help="pre-selected (workers train only the chosen blocks, default) or server-masked",
    )
    p.add_argument(
        "--refresh-every", type=int, default=5, help="apply every block at least every R rounds (default 5)"
    )
    p.add_argument(
        "--probe-every",
        type=int,
        default=10,
        help="pre-selected: a round training every block every P rounds",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.rounds < 1:
        print("strata demo: --workers and --rounds must be at least 1", file=sys.stderr)
        return 2
    try:
        budget = int(TypeAdapter(ByteSize).validate_python(args.block_budget))
        TargetingConfig(
            args.policy, args.blocks, budget, args.refresh_every, args.schedule, args.probe_every
        ).check()
    except ValidationError as exc:
        print(f"strata demo: --block-budget: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"strata demo: {exc}", file=sys.stderr)
        return 2
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return Demo(args, workdir).run()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


class Demo:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.a = args
        self.dir = workdir
        self.procs: list[Proc] = []
        self.db = args.db or f"sqlite:///{workdir / 'strata.db'}"

    # ------------------------------------------------------------------ data and model
    def prepare(self) -> tuple[Path, Path, list[Path], list[str]]:
        a = self.a
        if a.data is not None:
            ds = load_dataset_dir(a.data)
            train, test, labels = (
                _sample(ds.train, a.train_examples or 4000, a.seed),
                _sample(ds.test, a.test_examples, a.seed),
                ds.labels,
            )
            source = str(a.data)
        else:
            train, test = synthetic.generate_splits(a.train_examples or 2400, a.test_examples, a.seed)
            labels, source = list(synthetic.LABELS), "generated topics"
        shards = dirichlet_split(
            [e.label for e in train],
            a.workers,
            a.alpha,
            a.seed,
            min_size=max(4, min(20, len(train) // (4 * a.workers))),
        )
        hist = label_histogram([e.label for e in train], shards, len(labels))
        print(
            f"data: {source}: {len(train)} training examples over {a.workers} workers (Dirichlet alpha={a.alpha}), "
            f"{len(test)} held-out at the coordinator"
        )
        worker_dirs = []
        for k, shard in enumerate(shards):
            keep, held = holdout(shard, 0.1, seed=a.seed + k)
            d = self.dir / "workers" / f"org-{k + 1}"
            write_examples(d / "train.jsonl", [train[i] for i in keep])
            write_examples(d / "test.jsonl", [train[i] for i in held])
            write_labels(d, labels)
            worker_dirs.append(d)
            print(f"  org-{k + 1}: {len(shard):5d} examples, per label {hist[k]}")
        test_path = self.dir / "test.jsonl"
        write_examples(test_path, test)
        write_labels(self.dir, labels)
        if a.model is not None:
            model_dir = a.model
        else:
            from transformers.utils import logging as hf_logging

            from strata.modeling import make_tiny_model_dir

            hf_logging.disable_progress_bar()

            model_dir = make_tiny_model_dir(
                self.dir / "model", [e.text for e in train], labels, seed=a.seed, max_len=a.max_seq_len
            )
        return model_dir, test_path, worker_dirs, labels

    # ------------------------------------------------------------------ processes
    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Proc:
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "wb")  # noqa: SIM115 - owned by the child process
        full_env = (
            os.environ
            | env
            | {
                "PYTHONUNBUFFERED": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            }
        )
        p = subprocess.Popen(
            [sys.executable, "-m", "strata.cli", *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=self.dir,
            start_new_session=True,
        )
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def run(self) -> int:
        a = self.a
        started = time.monotonic()
        model_dir, test_path, worker_dirs, labels = self.prepare()
        tokens = [secrets.token_urlsafe(24) for _ in worker_dirs]
        port_file = self.dir / "coordinator.port"
        lr = a.lr if a.lr is not None else (5e-5 if a.model is not None else 1e-3)
        coord = self.spawn(
            "coordinator",
            [
                "coordinator",
                "--federation",
                FEDERATION,
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--database-url",
                self.db,
                "--data-dir",
                str(self.dir / "coordinator"),
                "--model",
                str(model_dir),
                "--labels",
                str(self.dir / "labels.json"),
                "--eval-data",
                str(test_path),
                "--rounds",
                str(a.rounds),
                "--min-workers",
                str(a.workers),
                "--min-updates",
                str(a.workers),
                "--round-timeout",
                str(a.round_timeout),
                "--start-timeout",
                "300",
                "--local-epochs",
                str(a.epochs),
                "--max-steps",
                str(a.max_steps),
                "--batch-size",
                str(a.batch_size),
                "--learning-rate",
                str(lr),
                "--max-seq-len",
                str(a.max_seq_len),
                "--seed",
                str(a.seed),
                "--encoding",
                a.encoding,
                "--topk-fraction",
                str(a.topk_fraction),
                "--down-encoding",
                a.down_encoding or a.encoding,
                "--downstream",
                a.downstream,
                "--policy",
                a.policy,
                "--blocks",
                str(a.blocks),
                "--block-budget",
                str(a.block_budget),
                "--schedule",
                a.schedule,
                "--refresh-every",
                str(a.refresh_every),
                "--probe-every",
                str(a.probe_every),
            ],
            {"STRATA_COORDINATOR_WORKER_TOKENS": ",".join(tokens), "OMP_NUM_THREADS": "2"},
        )
        api_port = a.port or _free_port()
        self.spawn(
            "dashboard",
            ["dashboard", "--database-url", self.db, "--port", str(api_port), "--log-level", "warning"],
            {},
        )
        api = f"http://127.0.0.1:{api_port}"
        try:
            port = self._wait_for_port(port_file, coord)
            print(f"coordinator on 127.0.0.1:{port}, dashboard on {api}/ (API docs at {api}/docs)")
            threads = str(max(1, (os.cpu_count() or 2) // max(1, a.workers)))
            for k, (d, token) in enumerate(zip(worker_dirs, tokens, strict=True)):
                self.spawn(
                    f"org-{k + 1}",
                    [
                        "worker",
                        "--coordinator",
                        f"127.0.0.1:{port}",
                        "--name",
                        f"org-{k + 1}",
                        "--data",
                        str(d),
                        "--cache-dir",
                        str(self.dir / "worker-cache" / f"org-{k + 1}"),
                        "--device",
                        "cpu",
                        "--no-progress",
                    ],
                    {"STRATA_WORKER_TOKEN": token, "OMP_NUM_THREADS": threads},
                )
            rows = self._follow(api, coord)
            ok = self._check_exits()
            print()
            print(render_table(rows))
            completed = [r for r in rows if r["state"] == "completed"]
            print(f"\n{len(completed)} of {a.rounds} rounds completed in {time.monotonic() - started:.0f}s")
            ok = ok and len(completed) == a.rounds
            if not ok:
                self._print_failures()
            if a.serve:
                print(f"serving the dashboard API on {api} (Ctrl-C to stop); work folder {self.dir}")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            return 0 if ok else 1
        finally:
            self.stop_all()

    def _wait_for_port(self, port_file: Path, coord: Proc) -> int:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if port_file.is_file() and (text := port_file.read_text().strip()):
                return int(text)
            if coord.popen.poll() is not None:
                raise SystemExit(self._fail("the coordinator exited during start-up"))
            time.sleep(0.1)
        raise SystemExit(self._fail("the coordinator did not start within 180s"))

    def _follow(self, api: str, coord: Proc) -> list[dict[str, Any]]:
        """Print a line per finished round (read from the REST API) until the coordinator exits."""
        printed: set[int] = set()
        rows: list[dict[str, Any]] = []
        with httpx.Client(base_url=api, timeout=5.0) as http:
            while True:
                finished = coord.popen.poll() is not None
                try:
                    resp = http.get(f"/api/v1/federations/{FEDERATION}/rounds", params={"limit": 500})
                    rows = resp.json()["items"] if resp.status_code == 200 else rows
                except httpx.HTTPError:
                    pass
                for r in rows:
                    if r["state"] in ("completed", "failed") and r["number"] not in printed:
                        printed.add(int(r["number"]))
                        print(round_line(r, self.a.rounds), flush=True)
                if finished:
                    return rows
                if any(p.popen.poll() not in (None, 0) for p in self.procs):
                    return rows
                time.sleep(0.5)

    def _check_exits(self) -> bool:
        ok = True
        for p in self.procs:
            if p.name == "dashboard":
                continue
            try:
                code = p.popen.wait(timeout=60 if p.name != "coordinator" else 5)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                print(
                    f"{p.name} {'did not exit' if code is None else f'exited with status {code}'}",
                    file=sys.stderr,
                )
                ok = False
        return ok

    def _print_failures(self) -> None:
        for p in self.procs:
            if p.popen.poll() not in (0, None) or p.name == "coordinator":
                tail = p.log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of {p.name} ({p.log}) ---", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

    def _fail(self, msg: str) -> int:
        print(f"strata demo: {msg}", file=sys.stderr)
        self._print_failures()
        return 1


def _sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    if n >= len(examples):
        return examples
    return random.Random(seed).sample(examples, n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mb(n: Any) -> str:
    return f"{(int(n or 0)) / 1e6:.2f} MB"


def _ratio(v: Any) -> str:
    return f"{v:.1f}x" if isinstance(v, (int, float)) else "–"


def round_line(r: dict[str, Any], total: int) -> str:
    if r["state"] == "failed":
        return f"round {r['number']}: FAILED: {r.get('error')}"
    acc, loss = r.get("test_accuracy"), r.get("test_loss")
    head = f"round {r['number']}/{total}  " + (
        f"test acc {acc:.4f}  test loss {loss:.4f}  " if acc is not None else ""
    )
    return (
        head + f"train loss {r.get('train_loss') or 0:.4f}  "
        f"up {_mb(r['bytes_up'])} ({_ratio(r.get('up_ratio'))} < fp32)  "
        f"down {_mb(r['bytes_down'])} ({_ratio(r.get('down_ratio'))} < fp32)  "
        f"{r.get('duration_seconds') or 0:.1f}s  ({r['num_updates']} updates)"
        + (f"  blocks {short_blocks(r['blocks'])}" if r.get("blocks") else "")
    )


def short_blocks(blocks: list[str]) -> str:
    """embeddings, layer.3, pooler, head -> E,L3,P,H"""
    names = {"embeddings": "E", "pooler": "P", "head": "H"}
    return ",".join(names.get(b, b.replace("layer.", "L")) for b in blocks)


def render_table(rows: list[dict[str, Any]]) -> str:
    """The final table as markdown: round, test accuracy, loss, bytes up and down (and their ratio to
    fp32), seconds."""
    out = [
        "| round | state | test accuracy | test loss | train loss | bytes up | up ratio | bytes down | down ratio | seconds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:

        def f(key: str, fmt: str = ".4f", row: dict[str, Any] = r) -> str:
            v = row.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "–"

        out.append(
            f"| {r['number']} | {r['state']} | {f('test_accuracy')} | {f('test_loss')} | {f('train_loss')} | "
            f"{int(r['bytes_up'] or 0):,} | {_ratio(r.get('up_ratio'))} | {int(r['bytes_down'] or 0):,} | "
            f"{_ratio(r.get('down_ratio'))} | {f('duration_seconds', '.1f')} |"
        )
    return "\n".join(out)
