"""bench.privacy's study 2: the WorldLM tree of federations against a flat federation under the same DP
setting (bench.worldlm's experiment B set-up; see bench/privacy.py's docstring)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.privacy_common import dp_values, failure, mechanism, median_norm, read_dp, read_norms
from bench.worldlm import common_settings
from bench.worldlm_data import data_b, describe, gpt2_size, model_b
from bench.worldlm_run import Evaluator, Node, Run, run_tree
from strata.data import read_examples
from strata.privacy_cli import smallest_z

#: where study 2's clips come from: (tier, its flag, the updates whose median norm it is without the flag)
CLIP_SOURCES = (
    ("workers", "lm-clip", "the worker updates of the flat no-DP arm"),
    ("parent", "lm-parent-clip", "the sub-federation updates at the tree no-DP arm's parent"),
)
#: a study-2 arm: (name, kind: flat | tree, DP at: None | workers | parent, the parent's key-block settings)
LmArm = tuple[str, str, str | None, dict[str, Any]]


def lm_arms(args: argparse.Namespace) -> list[LmArm]:
    key = dict(
        local_blocks=args.lm_local_blocks, key_aggregation="attention",
        residual_keep=args.beta, attention_temperature=args.tau,
    )  # fmt: skip
    plain = {"local_blocks": ""}
    kb = f"tree {args.lm_local_blocks} attention"
    return [
        ("flat", "flat", None, {}),
        ("tree", "tree", None, plain),
        (kb, "tree", None, key),
        ("flat + DP(workers)", "flat", "workers", {}),
        ("tree + DP(workers)", "tree", "workers", plain),
        (f"{kb} + DP(workers)", "tree", "workers", key),
        ("tree + DP(parent)", "tree", "parent", plain),
    ]


def run_lm_arm(
    kind: str, dp: dict[str, Any], key: dict[str, Any], groups: dict[str, Any], common: dict[str, Any],
    ev: Evaluator, work: Path,
) -> dict[str, Any]:  # fmt: skip
    """One arm of study 2: per source the loss of the model that source uses, after each round (flat: the
    global model; a tree: the source's own sub-federation model), and per tier each coordinator's ε."""
    tests = {g: read_examples(v["test"], require_labels=False) for g, v in groups.items()}
    rec: dict[str, Any] = {}
    run: Run
    if kind == "flat":
        node = Node("flat", data=[d for v in groups.values() for d in v["dirs"]], extra=dp.get("workers", {}))
        run = run_tree(node, common, work)
        evs = {
            g: [ev(run.ckpt["flat"], r["result_version"], t) for r in run.rounds["flat"]]
            for g, t in tests.items()
        }
        per = {g: {"loss": [x[0] for x in v], "accuracy": [x[1] for x in v]} for g, v in evs.items()}
    else:
        subs = [
            Node(g, data=v["dirs"], eval_data=v["test"], extra=dp.get("workers", {}))
            for g, v in groups.items()
        ]
        run = run_tree(Node("world", children=subs, extra=key | dp.get("parent", {})), common, work)
        per = {g: {k: [r[f"test_{k}"] for r in run.rounds[g]] for k in ("loss", "accuracy")} for g in groups}
        last = run.rounds["world"][-1]["result_version"]
        rec["world"] = {g: dict(zip(("loss", "accuracy"), ev(run.ckpt["world"], last, t), strict=True))
                        for g, t in tests.items()}  # fmt: skip
    rec["per_round"] = per
    rec["seconds"] = run.seconds
    rec["epsilon"], rec["clip"], rec["norms"] = {}, {}, {}
    for name, tier in run.tier.items():
        rows = read_dp(work / name, name)
        if any(r["private"] for r in rows):
            rec["epsilon"].setdefault(str(tier), {})[name] = [r["epsilon"] for r in rows]
            rec["clip"].setdefault(str(tier), {})[name] = [r["clip"] for r in rows]
        else:
            rec["norms"][name] = read_norms(work / name, name)
    return rec


def study_worldlm(args: argparse.Namespace, root: Path, bar: tqdm) -> dict[str, Any]:
    data = data_b(args, root)
    model = model_b(args, data, root)
    common = common_settings(args, "B", model, "causal-lm", []) | dict(divergence=False)
    ev = Evaluator(model, [], "causal-lm", args.max_len_b)
    rounds, eps = args.rounds_b, args.lm_epsilon
    z = smallest_z(eps, rounds, args.sampling_rate, args.delta)
    clip: dict[str, float | None] = {"workers": args.lm_clip or None, "parent": args.lm_parent_clip or None}
    vocab = json.loads((model / "config.json").read_text()).get("vocab_size")
    out = describe(data, model, common) | dict(
        gpt2=gpt2_size(args.gpt2), vocab=vocab, epsilon=eps, z=z, q=args.sampling_rate, delta=args.delta,
        clip=clip, clip_source={k: f"--{flag}" if clip[k] else f"median norm of {what}" for k, flag, what in CLIP_SOURCES},
        arms={},
    )  # fmt: skip
    sources = len(data["groups"])
    members = {
        "workers": {"flat": sources * args.b_workers, "tree": args.b_workers},
        "parent": {"tree": sources},
    }
    for i, (name, kind, at, key) in enumerate(lm_arms(args)):
        bar.set_postfix_str(f"worldlm: {name}")
        rec: dict[str, Any] = dict(kind=kind, dp_at=at, settings=key)
        try:
            dp: dict[str, Any] = {}
            if at is not None:
                s = clip[at] or 1.0
                if not clip[at]:
                    out["clip_source"][at] += " (no measurement: 1.0)"
                    clip[at] = s
                m, _ = mechanism(z, args.sampling_rate, members[at][kind], False)
                rec["dp"] = dict(z=z, clip=s, m=m, unit="worker" if at == "workers" else "sub-federation")
                dp[at] = dp_values(eps, z, s, False, args)
            rec |= run_lm_arm(kind, dp, key, data["groups"], common, ev, root / "runs" / f"lm-{i}")
            if name == "flat" and clip["workers"] is None:
                clip["workers"] = median_norm(rec["norms"].get("flat", []))
            if name == "tree" and clip["parent"] is None:
                clip["parent"] = median_norm(rec["norms"].get("world", []))
            tqdm.write(f"worldlm {name}: " + ", ".join(
                f"{g} perplexity {np.exp(min(m['loss'][-1], 700)):.1f}" for g, m in rec["per_round"].items()
            ) + f" ({rec['seconds']:.0f} s)")  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - recorded and reported
            rec["error"] = failure(exc)
            tqdm.write(f"worldlm {name}: FAILED: {rec['error']}")
        out["arms"][name] = rec
        bar.update()
    return out
