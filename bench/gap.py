"""The gap to centralised training on the reference workload and on a harder split: Strata's recipes
against FedAvg, and centralised training of the same model on the same examples.

    python -m bench.gap [--alphas 0.5,0.1] [--seeds 0] [--rounds 5]
                        [--recipes fedavg,fedavg@2,fedavgm@1,prox@0.01,fedavg+agreement,fedavg+wide+local]
    python -m bench.gap --report        # re-render from the stored runs
    python -m bench.gap --smoke [--out DIR]    # the pipeline on a tiny model, in seconds

The workload is ../shared/reference/WORKLOAD.md with its training hyperparameters unchanged: SST-2, the
2048-row pool over 8 clients × 256 by make_split.py's procedure (at α = 0.5 checked against its SHA-256
list; α = 0.1 is the same procedure, harder), MiniLM-L6, every client 1 epoch per round, batch 32, AdamW
lr 5e-5 fresh each round, max_length 64, 5 rounds; the full 872-row test set after every round. Centralised
training is WORKLOAD.md's: the union of the 2048 examples for as many epochs as the federation has rounds
(the same examples processed), batch 32, one AdamW, shuffle and dropout seeded e in epoch e.

A recipe is server-side only (the clients' training is fixed): parts joined by '+', each one of
  fedavg@η | fedavgm@η (β 0.9) | fedadam@η (τ 1e-3) | prox@μ (FedProx on the clients, with fedavg η 1)
  fedtlu | agreement (targeted layers, 2 blocks besides the head per round, all blocks in round 1)
  wide (feed-forward ×2, function-preserving) | local (±4 tokens in the first 2 layers)
e.g. `fedavgm@1+agreement+wide`. Seed 0 is WORKLOAD.md's seeds exactly (head, shuffles, dropout);
seed s > 0 draws the head with seed s and offsets every local seed by 100000·s (the data is the same).

Writes bench/results/gap.md, gap.png and gap.json (every run, resumable per run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, save_json, write_report
from bench.optimizers_data import Workload, make_split, reference_workload, smoke_workload
from bench.optimizers_runs import server_step, workload_seed
from strata import adapt
from strata.aggregate import FedAvgAccumulator
from strata.layers import block_map
from strata.member.replica import Replica
from strata.modeling import batches, evaluate, load_model, model_inputs, task_of
from strata.optimizers import ServerOptimizer
from strata.selection import block_scores
from strata.serde import RoundTask
from strata.targeting import Targeting, TargetingConfig
from worker.trainer import train_round

SERVER = ("fedavg", "fedavgm", "fedadam")
POLICIES = ("fedtlu", "agreement")


@dataclass(frozen=True)
class Recipe:
    """What the server does: optimizer and rate, FedProx's μ, targeted layers, the model's knobs."""

    text: str
    server: str = "fedavg"
    lr: float = 1.0
    mu: float = 0.0
    policy: str = "full"
    wide: bool = False
    local: bool = False

    @property
    def architecture(self) -> str:
        return {(False, False): "plain", (True, False): "wide", (False, True): "local"}.get(
            (self.wide, self.local), "wide+local"
        )


def parse_recipe(text: str) -> Recipe:
    fields: dict[str, Any] = {}
    for part in text.split("+"):
        name, _, value = part.partition("@")
        if name in SERVER:
            fields |= {"server": name, "lr": float(value) if value else 1.0}
        elif name == "prox":
            fields["mu"] = float(value or 0.01)
        elif name in POLICIES:
            fields["policy"] = name
        elif name in ("wide", "local"):
            fields[name] = True
        else:
            raise ValueError(f"recipe {text!r}: unknown part {part!r} (see python -m bench.gap --help)")
    recipe = Recipe(text, **fields)
    if not recipe.lr > 0 or recipe.mu < 0:
        raise ValueError(f"recipe {text!r}: the server rate must be positive and μ not negative")
    return recipe


class Gap:
    """The stored runs (gap.json) and the model every run of one seed and architecture starts from."""

    def __init__(self, wl: Workload, args: argparse.Namespace, path: Path) -> None:
        self.wl, self.args, self.path = wl, args, path
        self.stored: dict[str, Any] = {"fed": {}, "central": {}, "initial": {}}
        if path.is_file():
            self.stored.update(json.loads(path.read_text()))
        self.test = sorted(wl.test, key=lambda e: len(e.text))  # batched by length: faster, same metric
        self.splits: dict[float, Any] = {}

    def split(self, alpha: float) -> Any:
        """One α's clients, made (and checked against WORKLOAD.md) once per invocation."""
        if alpha not in self.splits:
            self.splits[alpha] = make_split(self.wl, alpha)
        return self.splits[alpha]

    def key(self, *parts: Any) -> str:
        return "/".join(str(p) for p in parts) + f"/{self.wl.name}/r{self.args.rounds}"

    def model(self, arch: str, seed: int) -> Any:
        model, tok = load_model(self.wl.model_dir, self.wl.labels, seed=self.wl.seed + seed)
        if "wide" in arch:
            adapt.widen_ffn(model, 2.0, seed=seed)
        if "local" in arch:
            adapt.add_local_attention(model, min(2, model.config.num_hidden_layers), 4)
        return model, tok

    def evaluate(self, model: Any, tok: Any) -> float:
        return evaluate(model, tok, self.test, max_len=self.wl.max_len, batch_size=self.wl.eval_batch)[1]

    def federate(self, recipe: Recipe, alpha: float, seed: int) -> dict[str, Any]:
        key = self.key("fed", recipe.text, alpha, seed)
        if key in self.stored["fed"]:
            return dict(self.stored["fed"][key])
        model, tok = self.model(recipe.architecture, seed)
        replica = Replica(model, tok, block_map(model), "cpu")
        targeting = None
        if recipe.policy != "full":
            cfg = TargetingConfig(policy=recipe.policy, blocks=2, refresh_every=self.args.rounds, seed=seed)
            targeting = Targeting(cfg, replica.bmap)
        opt = ServerOptimizer(recipe.server, lr=recipe.lr)
        state: dict[str, dict[str, torch.Tensor]] = {}
        params = dict(model.named_parameters())
        shards = self.split(alpha).shards
        rec: dict[str, Any] = {
            "recipe": recipe.text,
            "alpha": alpha,
            "seed": seed,
            "accuracy": [],
            "applied": [],
        }
        started = time.monotonic()
        for t in range(1, self.args.rounds + 1):
            plan = targeting.plan(t) if targeting else None
            blocks = tuple(plan.train) if plan and len(plan.train) < len(replica.bmap.names) else ()
            acc = FedAvgAccumulator()
            for k, shard in enumerate(shards):
                worker = f"client-{k}"
                local = dataclasses.replace(
                    self.wl.local, seed=workload_seed(t, k, worker) + 100_000 * seed, prox_mu=recipe.mu
                )
                task = RoundTask(t, t - 1, "", 0.0, local, "fp32", self.args.rounds, blocks=blocks)
                res = train_round(replica, shard, task, None, self.wl.model_dir, worker)
                acc.accept(res.delta, res.num_samples)
            applied = replica.bmap.names
            if targeting and plan:
                weight_sq = {n: float(params[n].detach().double().pow(2).sum()) for n in acc.counts}
                applied, _ = targeting.decide(
                    t, plan, block_scores(acc.moments(), weight_sq, replica.bmap.block_of)
                )
                keep = replica.bmap.tensors_of(applied)
                acc.drop([n for n in list(acc.counts) if n not in keep])
            server_step(opt, acc, state, params)
            rec["accuracy"].append(self.evaluate(model, tok))
            rec["applied"].append(list(applied))
            print(f"{recipe.text:>28} α={alpha:<4g} seed {seed} round {t}: accuracy {rec['accuracy'][-1]:.4f}",
                  flush=True)  # fmt: skip
        rec["minutes"] = (time.monotonic() - started) / 60
        rec["initial"] = self.initial(recipe.architecture, seed)
        self.stored["fed"][key] = rec
        save_json(self.path, self.stored)
        return rec

    def initial(self, arch: str, seed: int) -> float:
        key = self.key("initial", arch, seed)
        if key not in self.stored["initial"]:
            self.stored["initial"][key] = self.evaluate(*self.model(arch, seed))
        return float(self.stored["initial"][key])

    def central(self, arch: str, seed: int) -> dict[str, Any]:
        """WORKLOAD.md's centralised run: the pool's union, --rounds epochs, one AdamW, epoch e seeded e."""
        key = self.key("central", arch, seed)
        if key in self.stored["central"]:
            return dict(self.stored["central"][key])
        model, tok = self.model(arch, seed)
        pool = self.split(self.args.alphas[0]).pool  # the union is the same for every α
        opt = torch.optim.AdamW(model.parameters(), lr=self.wl.lr, weight_decay=0.0)
        rec: dict[str, Any] = {"arch": arch, "seed": seed, "accuracy": []}
        started = time.monotonic()
        for epoch in range(1, self.args.rounds + 1):
            model.train()
            torch.manual_seed(epoch + 100_000 * seed)
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(epoch + 100_000 * seed))
            for batch in batches(pool, self.wl.batch_size, order.tolist()):
                enc, labels = model_inputs(task_of(model), tok, batch, self.wl.max_len, "cpu")
                loss = model(**enc, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            rec["accuracy"].append(self.evaluate(model, tok))
            print(f"{'centralised ' + arch:>28} seed {seed} epoch {epoch}: accuracy {rec['accuracy'][-1]:.4f}",
                  flush=True)  # fmt: skip
        rec["minutes"] = (time.monotonic() - started) / 60
        self.stored["central"][key] = rec
        save_json(self.path, self.stored)
        return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alphas", default="0.5,0.1")
    ap.add_argument("--seeds", default="0")
    ap.add_argument(
        "--rounds", type=int, default=5, help="WORKLOAD.md's 5; the centralised run takes as many epochs"
    )
    ap.add_argument(
        "--recipes", default="fedavg,fedavg@2,fedavgm@1,prox@0.01,fedavg+agreement,fedavg+wide+local"
    )
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    args.alphas = [float(a) for a in args.alphas.split(",") if a]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    try:
        args.recipe_list = [parse_recipe(r) for r in args.recipes.split(",") if r]
    except ValueError as exc:
        ap.error(str(exc))
    if "fedavg" not in [r.text for r in args.recipe_list]:
        ap.error("fedavg is every comparison's baseline: keep it in --recipes")
    from bench.gap_report import plot, report

    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="gap-"))
        out.mkdir(parents=True, exist_ok=True)
        args.rounds = 2
        gap = Gap(smoke_workload(out / "smoke"), args, out / "gap-smoke.json")
        name = "gap-smoke"
    else:
        out = RESULTS
        gap = Gap(reference_workload(), args, RESULTS / "gap.json")
        name = "gap"
    if not args.report:
        archs = sorted({r.architecture for r in args.recipe_list})
        for seed in args.seeds:
            for arch in archs:
                gap.central(arch, seed)
            for alpha in args.alphas:
                for recipe in args.recipe_list:
                    gap.federate(recipe, alpha, seed)
    text = report(gap, args, name)
    if args.smoke:
        (out / f"{name}.md").write_text(text)
    else:
        write_report(name, text)
    plot(gap, args, out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
