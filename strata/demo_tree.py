"""`strata demo --federations F`: a two-level tree on this machine (docs/methods.md section 5).

A parent federation ("world") whose members are F sub-federations ("fed-1", ...), each a coordinator
process with its own database, dashboard API, held-out set and `--workers` worker processes. The data
(generated topics, or `--data` given once per sub-federation) differ between sub-federations: with
generated data each sub-federation draws its topic mix from a Dirichlet (concentration --tree-alpha), and
inside each one the examples are split among its workers as in the flat demo (--alpha). The coordinator
flags configure the parent (rounds, key blocks, attention, encodings) and, where they are training
settings, the sub-federations too; --inner-rounds sets how many rounds each sub-federation runs per
parent round. A line is printed per parent round and per sub-federation round, from the REST APIs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from pathlib import Path
from typing import Any

from strata import synthetic
from strata.cli import settings_class
from strata.data import Example, load_dataset_dir, write_examples, write_labels
from strata.demo import Demo, _free_port, _sample
from strata.demo_procs import Proc
from strata.demo_report import Feed, follow, render_table
from strata.split import dirichlet_split, holdout, label_histogram

PARENT = "world"
#: settings that only the parent uses; sub-federations keep their defaults
PARENT_ONLY = ("rounds", "local_blocks", "residual_keep", "key_aggregation", "attention_temperature")


class TreeDemo(Demo):
    """The flat demo's processes and reporting, arranged as a parent and F sub-federations."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.feds = [f"fed-{k + 1}" for k in range(args.federations)]
        self.fed_tokens = [secrets.token_urlsafe(24) for _ in self.feds]
        super().__init__(args, workdir)
        self.coordinator = self.coordinator.model_copy(
            update={
                "federation": PARENT,
                "worker_tokens": self.fed_tokens,
                "min_workers": len(self.feds),
                "min_updates": len(self.feds),
            }
        )
        base = self.coordinator.model_dump()
        cls = settings_class("coordinator")
        self.subs: dict[str, Any] = {}
        for k, fed in enumerate(self.feds):
            names = self.sub_names(fed)
            values = {n: v for n, v in base.items() if n not in PARENT_ONLY and v is not None} | {
                "federation": fed,
                "port_file": workdir / f"{fed}.port",
                "database_url": f"sqlite:///{workdir / f'{fed}.db'}",
                "data_dir": workdir / fed,
                "model": None,  # the parent's
                "eval_data": workdir / fed / "test.jsonl",
                "worker_tokens": [self.tokens[self.names.index(n)] for n in names],
                "min_workers": len(names),
                "min_updates": len(names),
                "parent": "127.0.0.1:1",  # set once the parent listens
                "parent_token": self.fed_tokens[k],
                "inner_rounds": base["inner_rounds"],
            }
            values.pop("parent_name", None)
            self.subs[fed] = cls.load(values)
        self.sub_api = {fed: _free_port() for fed in self.feds}

    def sub_names(self, fed: str) -> list[str]:
        """The workers of sub-federation `fed`: --workers of them, numbered across the tree."""
        k, w = self.feds.index(fed), self.a.workers
        return self.names[k * w : (k + 1) * w]

    # ------------------------------------------------------------------ data
    def prepare(self) -> None:
        a = self.a
        datasets = a.data or []
        if datasets and len(datasets) != len(self.feds):
            raise SystemExit(f"strata demo: give --data once per sub-federation ({len(self.feds)} times)")
        parts: list[tuple[list[Example], list[Example]]] = []
        if datasets:
            for d in datasets:
                ds = load_dataset_dir(d)
                parts.append(
                    (
                        _sample(ds.train, a.train_examples or 2000, self.seed),
                        _sample(ds.test, a.test_examples, self.seed),
                    )
                )
            labels = load_dataset_dir(datasets[0]).labels
        else:
            labels = list(synthetic.LABELS)
            n_train = a.train_examples or 1200 * len(self.feds)
            n_test = a.test_examples * len(self.feds)
            pool, _ = synthetic.generate_splits(n_train + n_test, 0, self.seed)
            by_fed = dirichlet_split(
                [e.label for e in pool], len(self.feds), a.tree_alpha, self.seed, min_size=60
            )
            share = n_test / (n_train + n_test)  # each sub-federation's held-out set has its own topic mix
            for k, shard in enumerate(by_fed):
                keep, held = holdout(shard, share, seed=self.seed + 100 + k)
                parts.append(([pool[i] for i in keep], [pool[i] for i in held]))
        everyone: list[Example] = []
        for fed, (train, test) in zip(self.feds, parts, strict=True):
            everyone += test
            names = self.sub_names(fed)
            shards = dirichlet_split([e.label for e in train], len(names), a.alpha, self.seed, min_size=8)
            hist = label_histogram([e.label for e in train], [list(range(len(train)))], len(labels))[0]
            print(f"{fed}: {len(train)} training examples, per label {hist}; {len(test)} held out")
            for k, shard in enumerate(shards):
                keep, held = holdout(shard, 0.1, seed=self.seed + k)
                d = self.worker_dirs[self.names.index(names[k])]
                write_examples(d / "train.jsonl", [train[i] for i in keep])
                write_examples(d / "test.jsonl", [train[i] for i in held])
                write_labels(d, labels)
            write_examples(self.dir / fed / "test.jsonl", test)
        write_examples(self.test_path, everyone)
        write_labels(self.dir, labels)
        if a.model is None:
            from transformers.utils import logging as hf_logging

            from strata.modeling import make_tiny_model_dir

            hf_logging.disable_progress_bar()
            texts = [e.text for train, _ in parts for e in train]
            make_tiny_model_dir(self.model_dir, texts, labels, seed=self.seed, max_len=self.max_seq_len)

    # ------------------------------------------------------------------ processes
    def run(self) -> int:
        started = time.monotonic()
        self.prepare()
        parent = self.start("coordinator", self.coordinator, 1, {"worker_tokens": ",".join(self.fed_tokens)})
        self.start("dashboard", self.dashboard, 1)
        try:
            port = self._wait_for_port(parent)
            print(
                f"parent federation {PARENT} on 127.0.0.1:{port}, dashboard http://127.0.0.1:{self.api_port}/"
            )
            subs: dict[str, Proc] = {}
            for fed, s in self.subs.items():
                page = f"http://127.0.0.1:{self.sub_api[fed]}/?federation={fed}"  # the parent's page links it
                s = s.model_copy(update={"parent": f"127.0.0.1:{port}", "dashboard_url": page})
                subs[fed] = self.start(fed, s, 1, {"worker_tokens": ",".join(s.worker_tokens)})
                board = self.dashboard.model_copy(
                    update={"database_url": s.database_url, "port": self.sub_api[fed]}
                )
                self.start(f"dashboard-{fed}", board, 1)
            threads = max(1, (os.cpu_count() or 2) // len(self.names))
            for fed, proc in subs.items():
                sub_port = self._wait_for_port(proc, self.subs[fed].port_file)
                print(f"  {fed} on 127.0.0.1:{sub_port}, dashboard http://127.0.0.1:{self.sub_api[fed]}/")
                for name in self.sub_names(fed):
                    w = self.workers[self.names.index(name)]
                    self.start(name, w.model_copy(update={"coordinator": f"127.0.0.1:{sub_port}"}), threads)
            feeds = {
                fed: Feed(
                    f"http://127.0.0.1:{port}/api/v1/federations/{fed}/rounds",
                    f"{PARENT} " if fed == PARENT else f"  {fed} ",
                    self.rounds if fed == PARENT else self.rounds * self.subs[fed].inner_rounds,
                )
                for fed, port in ({PARENT: self.api_port} | self.sub_api).items()
            }
            rows = follow(feeds, parent, self.procs)[PARENT]
            ok = self._check_exits()
            print()
            print(render_table(rows))
            done = [r for r in rows if r["state"] == "completed"]
            print(
                f"\n{len(done)} of {self.rounds} parent rounds completed in {time.monotonic() - started:.0f}s"
            )
            ok = ok and len(done) == self.rounds
            if not ok:
                self._print_failures()
            return 0 if ok else 1
        finally:
            self.stop_all()
