"""The runs of bench.optimizers: the methods, their default server learning rates and the measured
seconds per round behind the plan's estimate, one federated run (`Spec`), and `Study`, which trains the
runs of one invocation in this process with the product's own code (the worker's `train_round`,
`FedAvgAccumulator`, `strata.optimizers.step`), keeps their results in optimizers.json, checkpoints them
after every round and runs the centralised baseline; `workload_seed` gives WORKLOAD.md's client seeds."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.optimizers_data import Split, Workload, make_split
from strata import atomic, tensorfile
from strata.aggregate import FedAvgAccumulator
from strata.data import Example
from strata.frames import add_update
from strata.layers import block_map
from strata.modeling import batches, evaluate, global_tensors, load_model, load_tensors, model_inputs, task_of
from strata.optimizers import ServerOptimizer, flatten_state, step, unflatten_state
from strata.serde import RoundTask
from worker.trainer import Replica, local_seed, train_round

METHODS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox")
# server learning rates: several values are swept; a method name borrows the rate chosen for that method
DEFAULT_LRS = "fedavg=1,fedprox=1,fedavgm=1,fedadam=0.003:0.03,fedyogi=fedadam,fedadagrad=0.01"
# seconds measured on the 2-core development machine (MiniLM-L6, 2 threads): one round of 8 clients
# (8 × 8 steps, 6–8.5 s a client) with its evaluation (5–6.5 s), one step of 32 examples, one evaluation
# of the 872-row test set; only for the plan's estimate (the live lines rescale it by the rounds measured)
ROUND_S, STEP_S, EVAL_S = 65.0, 0.9, 6.0


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
            server_step(opt, acc, state, params)
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


def server_step(
    opt: ServerOptimizer,
    acc: FedAvgAccumulator,
    state: dict[str, dict[str, torch.Tensor]],
    params: dict[str, torch.nn.Parameter],
) -> None:
    """Apply the server optimizer's step for every tensor the round's mean carries (consumes `acc`)."""
    with torch.no_grad():
        for name, mean in acc.means():
            update, new = step(opt, mean, state.get(name))
            if new:
                state[name] = new
            add_update(params[name], update)


def workload_seed(t: int, k: int, worker: str) -> int:
    """The TrainingConfig.seed for which the worker's `local_seed` gives WORKLOAD.md's 1000·round + client
    (it seeds both the shuffle generator and torch's dropout); 1,000,003 is odd, so invertible mod 2^63."""
    target = 1000 * t + k
    seed = ((target - t * 7_919 - zlib.crc32(worker.encode())) * pow(1_000_003, -1, 2**63)) % 2**63
    if local_seed(seed, t, worker) != target:
        raise RuntimeError("worker.trainer.local_seed changed: update bench.optimizers_runs.workload_seed")
    return seed
