"""`strata demo`: a whole federation on this machine: coordinator, dashboard API and N worker processes.

The demo only starts processes (`python -m strata.cli ...`) and reads the REST API, so it exercises the
same paths an operator uses. Each process's settings are built and validated by its service's own
settings class, which the demo gets from the command registry (`strata.cli.settings_class`), so this
shared core still imports none of the services, and every coordinator setting is a demo flag too.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from strata import synthetic
from strata.cli import settings_class
from strata.data import Example, load_dataset_dir, write_examples, write_labels
from strata.demo_procs import Proc, Processes
from strata.demo_report import Feed, follow, render_table, tree_flags
from strata.settings import StrataSettings
from strata.split import dirichlet_split, holdout, label_histogram

FEDERATION = "demo"
#: coordinator settings the demo sets itself, so it has no flag for them: its processes depend on them,
#: or its own --model and --db give them
FIXED = (
    "federation",
    "listen",
    "port_file",
    "database_url",
    "data_dir",
    "model",
    "labels",
    "eval_data",
    "worker_tokens",
    "exit_when_done",
)
#: coordinator settings the demo does not offer: its processes talk plaintext gRPC on 127.0.0.1
PLAINTEXT = ("tls_cert", "tls_key", "tls_client_ca")
#: how a sub-federation reaches its parent: the demo's tree (--federations) sets them itself
TREE = (
    "parent",
    "parent_token",
    "parent_name",
    "parent_tls",
    "parent_tls_ca",
    "parent_tls_cert",
    "parent_tls_key",
    "parent_tls_server_name",
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run a complete federation on this machine",
        description="Start a coordinator, the dashboard API and N workers on this machine (SQLite, CPU), "
        "run the rounds, print a line per round and a final table.",
    )
    p.add_argument("--workers", type=int, default=3, help="number of worker processes (default 3)")
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        help="data folder with train/test splits and labels.json (default: generated); with --federations, "
        "once per sub-federation",
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
    p.add_argument("--port", type=int, default=0, help="dashboard API port (default: a free one)")
    p.add_argument(
        "--epochs",
        "--local-epochs",
        dest="local_epochs",
        metavar="N",
        help="local epochs per round (default 1)",
    )
    p.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        metavar="LR",
        help="local learning rate (default 1e-3 for the generated model, 5e-5 with --model)",
    )
    tree_flags(p)
    own = {action.dest for action in p._actions}
    group = p.add_argument_group(
        "coordinator settings",
        "Every setting of `strata coordinator` but those the demo sets itself (federation, addresses, "
        "database, folders, model, labels, tokens, TLS), checked by the coordinator's own settings before "
        "anything starts. Unless given (flag or STRATA_COORDINATOR_* variable), the demo uses --min-workers "
        "and --min-updates = --workers (at most --workers-per-round), --round-timeout 600, --start-timeout "
        "300 and --down-encoding = --encoding; --seed also seeds the data, its split and the generated model.",
    )
    flags = settings_class("coordinator").add_flags(group, skip={*FIXED, *PLAINTEXT, *TREE, *own})
    p.set_defaults(func=main, coordinator_flags=[*flags, "local_epochs", "learning_rate"])


def main(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.federations < 0:
        print("strata demo: --workers must be at least 1 and --federations at least 0", file=sys.stderr)
        return 2
    if len(args.data or []) > max(1, args.federations):
        print(
            "strata demo: --data is given once, or once per sub-federation with --federations",
            file=sys.stderr,
        )
        return 2
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-demo-")).resolve()
    try:
        from strata.demo_tree import TreeDemo

        # validates every process's settings: a bad one raises SettingsError
        demo = TreeDemo(args, workdir) if args.federations else Demo(args, workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return demo.run()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


class Demo(Processes):
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.a = args
        self.dir = workdir
        self.procs: list[Proc] = []
        self.model_dir = args.model.resolve() if args.model else workdir / "model"
        self.test_path = workdir / "test.jsonl"
        self.port_file = workdir / "coordinator.port"
        self.names = [f"org-{k + 1}" for k in range(args.workers * max(1, args.federations))]
        self.worker_dirs = [workdir / "workers" / name for name in self.names]
        self.tokens = [secrets.token_urlsafe(24) for _ in self.names]
        self.db = args.db or f"sqlite:///{workdir / 'strata.db'}"
        self.coordinator = self.coordinator_settings()
        c = self.coordinator.model_dump()
        self.rounds, self.seed, self.max_seq_len = c["rounds"], c["seed"], c["max_seq_len"]
        worker = settings_class("worker")
        self.workers = [  # their coordinator's address is set once it listens
            worker.load(
                {
                    "coordinator": "127.0.0.1:0",
                    "token": token,
                    "name": name,
                    "data": data,
                    "cache_dir": workdir / "worker-cache" / name,
                    "device": "cpu",
                    "progress": False,
                }
            )
            for name, data, token in zip(self.names, self.worker_dirs, self.tokens, strict=True)
        ]
        self.api_port = args.port or _free_port()
        self.dashboard = settings_class("dashboard").load(
            {"database_url": self.db, "port": self.api_port, "log_level": "warning"}
        )

    def coordinator_settings(self) -> StrataSettings:
        """The coordinator's settings: the flags given, what the demo fixes, and the demo's defaults for
        what neither the flags nor STRATA_COORDINATOR_* variables set."""
        a, cls = self.a, settings_class("coordinator")
        given = {name: v for name in a.coordinator_flags if (v := getattr(a, name)) is not None}
        fixed = self.fixed_settings()
        first = cls.load(given | fixed)
        c = first.model_dump()
        demo = {
            "min_workers": a.workers,
            # a private federation releases every round whatever arrived (docs/privacy.md): no quorum
            "min_updates": 1 if c["dp"] else min(a.workers, c["workers_per_round"] or a.workers),
            "round_timeout": 600.0,
            "start_timeout": 300.0,
            "learning_rate": 5e-5 if a.model is not None else 1e-3,
            "down_encoding": c["encoding"],
        }
        unset = {k: v for k, v in demo.items() if k not in first.model_fields_set}
        return cls.load(unset | given | fixed)

    def fixed_settings(self) -> dict[str, Any]:
        """The coordinator settings in FIXED: the demo's processes depend on them."""
        return {
            "federation": FEDERATION,
            "listen": "127.0.0.1:0",
            "port_file": self.port_file,
            "database_url": self.db,
            "data_dir": self.dir / "coordinator-data",  # not "coordinator": the processes run in this folder
            "model": self.model_dir,
            "labels": str(self.dir / "labels.json"),
            "eval_data": self.test_path,
            "worker_tokens": self.tokens,
            "exit_when_done": True,
        }

    # ------------------------------------------------------------------ data and model
    def prepare(self) -> None:
        a = self.a
        if a.data:
            ds = load_dataset_dir(a.data[0])
            train, test, labels = (
                _sample(ds.train, a.train_examples or 4000, self.seed),
                _sample(ds.test, a.test_examples, self.seed),
                ds.labels,
            )
            source = str(a.data[0])
        else:
            train, test = synthetic.generate_splits(a.train_examples or 2400, a.test_examples, self.seed)
            labels, source = list(synthetic.LABELS), "generated topics"
        shards = dirichlet_split(
            [e.label for e in train],
            a.workers,
            a.alpha,
            self.seed,
            min_size=max(4, min(20, len(train) // (4 * a.workers))),
        )
        hist = label_histogram([e.label for e in train], shards, len(labels))
        print(
            f"data: {source}: {len(train)} training examples over {a.workers} workers (Dirichlet alpha={a.alpha}), "
            f"{len(test)} held-out at the coordinator"
        )
        for k, (shard, d) in enumerate(zip(shards, self.worker_dirs, strict=True)):
            keep, held = holdout(shard, 0.1, seed=self.seed + k)
            write_examples(d / "train.jsonl", [train[i] for i in keep])
            write_examples(d / "test.jsonl", [train[i] for i in held])
            write_labels(d, labels)
            print(f"  {self.names[k]}: {len(shard):5d} examples, per label {hist[k]}")
        write_examples(self.test_path, test)
        write_labels(self.dir, labels)
        if a.model is None:
            from transformers.utils import logging as hf_logging

            from strata.modeling import make_tiny_model_dir

            hf_logging.disable_progress_bar()

            make_tiny_model_dir(
                self.model_dir, [e.text for e in train], labels, seed=self.seed, max_len=self.max_seq_len
            )

    def run(self) -> int:
        a = self.a
        started = time.monotonic()
        self.prepare()
        coord = self.start("coordinator", self.coordinator, 2, {"worker_tokens": ",".join(self.tokens)})
        self.start("dashboard", self.dashboard, 1)
        api = f"http://127.0.0.1:{self.api_port}"
        try:
            port = self._wait_for_port(coord)
            print(f"coordinator on 127.0.0.1:{port}, dashboard on {api}/ (API docs at {api}/docs)")
            threads = max(1, (os.cpu_count() or 2) // a.workers)
            for name, settings in zip(self.names, self.workers, strict=True):
                self.start(name, settings.model_copy(update={"coordinator": f"127.0.0.1:{port}"}), threads)
            feed = Feed(f"{api}/api/v1/federations/{FEDERATION}/rounds", "", self.rounds)
            rows = follow({FEDERATION: feed}, coord, self.procs)[FEDERATION]
            ok = self._check_exits()
            print()
            print(render_table(rows))
            completed = [r for r in rows if r["state"] == "completed"]
            print(
                f"\n{len(completed)} of {self.rounds} rounds completed in {time.monotonic() - started:.0f}s"
            )
            ok = ok and len(completed) == self.rounds
            if not ok:
                self._print_failures()
            if a.serve:
                # Ctrl-C (or SIGTERM) stops it even where SIGINT arrives ignored (a shell's background job,
                # a test runner's worker process): install the handler rather than inherit the disposition
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.default_int_handler)
                print(f"serving the dashboard API on {api} (Ctrl-C to stop); work folder {self.dir}")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            return 0 if ok else 1
        finally:
            self.stop_all()


def _sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    if n >= len(examples):
        return examples
    return random.Random(seed).sample(examples, n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
