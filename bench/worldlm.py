"""Federations of federations (WorldLM, docs/methods.md section 5) against flat federations.

    python -m bench.worldlm [--experiments A,B,C] [--rounds-a 5] [--rounds-b 8] [--out bench/results]
    python -m bench.worldlm --quick [--out DIR]      # every arm end to end on tiny models, in about a minute
    python -m bench.worldlm --from-json bench/results/worldlm.json   # re-render the report, train nothing

Every federation is real: coordinators serve gRPC on 127.0.0.1 with a SQLite database each, workers run
the worker's own code in threads of this process (bench/worldlm_run.py). All arms of an experiment run in
the same invocation on the same worker data, with the same seeds and the same local steps: every worker
trains exactly --a-steps / --b-steps AdamW steps per round (max_steps, with enough local epochs that the
cap decides), and a sub-federation runs one inner round per parent round, so every arm trains every
worker the same number of rounds. The estimate printed first comes from a timing probe (constants below);
the defaults take about 40 min on 2 cores at the probe's rate (A 25, B 10, C 8).

A. Classification across languages: English SST-2 and its Portuguese translation (sst2_pt) as two
   sub-federations of --a-workers workers each, disjoint row ranges for the two languages (no sentence is
   in both), a Dirichlet(α) label split inside each, MiniLM-L6. Arms: flat (all workers, one federation;
   its global model evaluated on both test sets), tree without key blocks, tree with top:1 / top:2 key
   blocks aggregated by the mean or by attention, and each sub-federation alone (the two side by side,
   independent). A tree's language is evaluated with its own sub-federation's model (its coordinator
   evaluates every version it makes on its language's test set); the parent's final model (the "world
   model") is evaluated on both as well.
B. Language modelling from scratch (WorldLM's metric, perplexity): a small GPT-2 with a WordPiece
   tokenizer trained on the workers' text, sub-federations on English news (ag_news_subset), English
   forum posts (20newsgroups, headers stripped) and Portuguese sentences (sst2_pt). Arms: flat, tree,
   tree + key blocks (--lm-local-blocks) + attention, each sub-federation alone; the report gives flat /
   tree-local-attention perplexity per source against the goal of 1.5x.
C. The bytes each tier moves per round (rounds rows: bytes_up, bytes_down) and each coordinator's
   memory (peak RSS of its own `python -m strata.cli coordinator` process) at 1, 2 and 3 levels (world ->
   2 regions -> 4 sub-federations), on A's model and four of A's workers.

Writes worldlm.md, worldlm.png and worldlm.json to --out (default bench/results); the JSON is written
after each experiment, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.common import RESULTS, machine, save_json
from bench.worldlm_data import data_a, data_b, describe, gpt2_size, model_a, model_b
from bench.worldlm_report import merge, render
from bench.worldlm_run import Evaluator, Node, Run, run_tree
from strata.data import read_examples

# wall seconds measured in this benchmark's probe on the 2-core development machine, while other jobs
# kept its load average near 5 (so on an idle machine the run is faster): per training example of a
# MiniLM round (all workers' threads, ingest and aggregation included), per held-out row a coordinator
# evaluates, per GPT-2 worker step (one thread), and per round and arm fixed; only for the estimate.
# A_EXAMPLE_S is from experiment A's full run (34 min for 7 arms x 6 rounds x 1,024 examples, under load)
A_EXAMPLE_S, A_EVAL_S, B_STEP_S, ROUND_FIXED_S, ARM_FIXED_S = 0.035, 0.025, 0.4, 8.0, 30.0
QUICK = dict(
    a_workers=2, a_examples=16, a_steps=2, a_test=32, rounds_a=1, max_len_a=32,
    b_workers=1, b_examples=16, b_steps=2, b_test=32, rounds_b=2, max_len_b=32,
    gpt2="layers=1,hidden=32,heads=2,vocab=1500", rounds_c=1, batch=8, round_timeout=120, tiers_in_process=True,
)  # fmt: skip
#: an arm: (name, kind: flat | tree | local, the top coordinator's key-block settings)
Arm = tuple[str, str, dict[str, Any]]


def a_arms(args: argparse.Namespace) -> list[Arm]:
    key = dict(residual_keep=args.beta, attention_temperature=args.tau)
    arms: list[Arm] = [("flat", "flat", {}), ("tree", "tree", {"local_blocks": ""})]
    for top in ("top:1", "top:2"):
        for agg in ("mean", "attention"):
            arms.append((f"tree {top} {agg}", "tree", key | dict(local_blocks=top, key_aggregation=agg)))
    return [*arms, ("local only", "local", {})]


def b_arms(args: argparse.Namespace) -> list[Arm]:
    key = dict(residual_keep=args.beta, attention_temperature=args.tau, key_aggregation="attention")
    return [
        ("flat", "flat", {}),
        ("tree", "tree", {"local_blocks": ""}),
        (f"tree {args.lm_local_blocks} attention", "tree", key | dict(local_blocks=args.lm_local_blocks)),
        ("local only", "local", {}),
    ]


# ---------------------------------------------------------------------------------------------- arms


def common_settings(
    args: argparse.Namespace, exp: str, model: Path | None, task: str, labels: list[str]
) -> dict[str, Any]:
    """What every coordinator of an experiment shares (a member takes task, labels and model from its parent)."""
    a = exp == "A" or exp == "C"
    return dict(
        model=model,
        task=task,
        labels=",".join(labels) if labels else None,
        rounds=args.rounds_a if exp == "A" else args.rounds_b if exp == "B" else args.rounds_c,
        round_timeout=args.round_timeout,
        worker_timeout=args.round_timeout,
        local_epochs=1000,  # the cap below decides: exactly max_steps steps, whatever the shard's size
        max_steps=args.a_steps if a else args.b_steps,
        batch_size=args.batch,
        learning_rate=args.lr_a if a else args.lr_b,
        max_seq_len=args.max_len_a if a else args.max_len_b,
        seed=args.seed,
        linger_seconds=0.5,
        grace_seconds=0.2,
        task_poll_seconds=2.0,
        divergence=True,
    )


def tiers(run: Run) -> dict[str, dict[str, Any]]:
    """Per tier (0: the top): its coordinators, and the bytes up and down in each round, summed over them."""
    out: dict[str, dict[str, Any]] = {}
    rounds = max(len(r) for r in run.rounds.values())
    for name, rows in run.rounds.items():
        t = out.setdefault(str(run.tier[name]), {"coordinators": 0, "up": [0] * rounds, "down": [0] * rounds})
        t["coordinators"] += 1
        for i, r in enumerate(rows):
            t["up"][i] += r["bytes_up"]
            t["down"][i] += r["bytes_down"]
    return out


def run_arm(
    kind: str, key: dict[str, Any], groups: dict[str, Any], common: dict[str, Any], ev: Evaluator, work: Path
) -> dict[str, Any]:
    """One arm: per group the loss and accuracy of the model that group uses, after each round."""
    tests = {g: read_examples(v["test"], require_labels=False) for g, v in groups.items()}
    per: dict[str, dict[str, list[float]]] = {}
    rec: dict[str, Any] = {"kind": kind, "settings": key}
    if kind == "flat":
        run = run_tree(Node("flat", data=[d for v in groups.values() for d in v["dirs"]]), common, work)
        rows = run.rounds["flat"]
        for g, test in tests.items():  # the one global model, on every group's test set
            evs = [ev(run.ckpt["flat"], r["result_version"], test) for r in rows]
            per[g] = {"loss": [x[0] for x in evs], "accuracy": [x[1] for x in evs]}
    elif kind == "tree":
        subs = [Node(g, data=v["dirs"], eval_data=v["test"]) for g, v in groups.items()]
        run = run_tree(Node("world", children=subs, extra=key), common, work)
        for g in groups:  # each group's own sub-federation model, as its coordinator evaluated it
            per[g] = {k: [r[f"test_{k}"] for r in run.rounds[g]] for k in ("loss", "accuracy")}
        last = run.rounds["world"][-1]["result_version"]
        rec["world"] = {
            g: dict(zip(("loss", "accuracy"), ev(run.ckpt["world"], last, t), strict=True))
            for g, t in tests.items()
        }
    else:  # each sub-federation alone (side by side, independent)
        run = run_tree(
            [Node(g, data=v["dirs"], eval_data=v["test"]) for g, v in groups.items()], common, work
        )
        for g in groups:
            per[g] = {k: [r[f"test_{k}"] for r in run.rounds[g]] for k in ("loss", "accuracy")}
    rec["per_round"] = per
    rec["seconds"] = run.seconds
    rec["key_weights"] = run.key_weights.get("world", [])
    rec["tiers"] = tiers(run)
    return rec


def topology(levels: int, dirs: dict[str, list[Path]]) -> Node:
    """Experiment C's trees over the same four workers (two per language)."""
    if levels == 1:
        return Node("flat", data=[d for v in dirs.values() for d in v])
    if levels == 2:
        return Node("world", children=[Node(g, data=v) for g, v in dirs.items()])
    regions = [
        Node(f"region-{g}", children=[Node(f"{g}-{c}", data=[d]) for c, d in zip("ab", v, strict=False)])
        for g, v in dirs.items()
    ]
    return Node("world", children=regions)


# ---------------------------------------------------------------------------------------------- experiments


def run_arms(
    exp: str,
    arms: list[Arm],
    data: dict[str, Any],
    common: dict[str, Any],
    ev: Evaluator,
    root: Path,
    bar: tqdm,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (name, kind, key) in enumerate(arms):
        bar.set_postfix_str(f"{exp}: {name}")
        try:
            rec = out[name] = run_arm(kind, key, data["groups"], common, ev, root / "runs" / f"{exp}-{i}")
            tqdm.write(f"{exp} {name}: {final_line(exp, rec)} ({rec['seconds']:.0f} s)")
        except Exception as exc:  # noqa: BLE001 - recorded and reported; the other arms still run
            out[name] = {"kind": kind, "settings": key, "error": f"{type(exc).__name__}: {exc}"}
            tqdm.write(f"{exp} {name}: FAILED: {out[name]['error']}")
        bar.update()
    return out


def final_line(exp: str, rec: dict[str, Any]) -> str:
    if exp == "A":
        return ", ".join(f"{g} accuracy {m['accuracy'][-1]:.4f}" for g, m in rec["per_round"].items())
    return ", ".join(f"{g} perplexity {math.exp(m['loss'][-1]):.1f}" for g, m in rec["per_round"].items())


def experiment_a(
    args: argparse.Namespace, data: dict[str, Any], model: Path, root: Path, bar: tqdm
) -> dict[str, Any]:
    common = common_settings(args, "A", model, "sequence-classification", data["labels"])
    ev = Evaluator(model, data["labels"], "sequence-classification", args.max_len_a)
    return describe(data, model, common) | {"arms": run_arms("A", a_arms(args), data, common, ev, root, bar)}


def experiment_b(args: argparse.Namespace, root: Path, bar: tqdm) -> dict[str, Any]:
    data = data_b(args, root)
    model = model_b(args, data, root)
    common = common_settings(args, "B", model, "causal-lm", [])
    ev = Evaluator(model, [], "causal-lm", args.max_len_b)
    arms = run_arms("B", b_arms(args), data, common, ev, root, bar)
    return describe(data, model, common) | {"gpt2": gpt2_size(args.gpt2), "arms": arms}


def experiment_c(
    args: argparse.Namespace, data: dict[str, Any], model: Path, root: Path, bar: tqdm
) -> dict[str, Any]:
    common = common_settings(args, "C", model, "sequence-classification", data["labels"])
    dirs = {g: v["dirs"][:2] for g, v in data["groups"].items()}
    meta = describe(data, model, common)
    out: dict[str, Any] = {
        "processes": not args.tiers_in_process,
        "settings": meta["settings"],
        "parameters": meta["parameters"],
        "levels": {},
    }
    for levels in (1, 2, 3):
        bar.set_postfix_str(f"C: {levels} level(s)")
        try:
            run = run_tree(
                topology(levels, dirs),
                common,
                root / "runs" / f"C-{levels}",
                processes=not args.tiers_in_process,
            )
            out["levels"][str(levels)] = dict(
                tiers=tiers(run),
                rss=run.rss,
                tier_of=run.tier,
                seconds=run.seconds,
                coordinators=len(run.tier),
            )
        except Exception as exc:  # noqa: BLE001 - recorded and reported
            out["levels"][str(levels)] = {"error": f"{type(exc).__name__}: {exc}"}
            tqdm.write(f"C {levels} level(s): FAILED: {out['levels'][str(levels)]['error']}")
        bar.update()
    return out


# ---------------------------------------------------------------------------------------------- main


def estimate(args: argparse.Namespace) -> float:
    """Seconds the run should take on 2 cores, from the probe's constants above."""
    total = 0.0
    if "A" in args.experiments:
        examples = 2 * args.a_workers * args.a_steps * args.batch
        per_round = examples * A_EXAMPLE_S + 2 * args.a_test * A_EVAL_S + ROUND_FIXED_S
        total += 7 * (args.rounds_a * per_round + ARM_FIXED_S)
    if "B" in args.experiments:
        per_round = (
            3 * args.b_workers * args.b_steps * B_STEP_S / 1.6
            + 3 * args.b_test * A_EVAL_S / 8
            + ROUND_FIXED_S / 2
        )
        total += 4 * (args.rounds_b * per_round + ARM_FIXED_S / 2)
    if "C" in args.experiments:
        per_round = 4 * args.a_steps * args.batch * A_EXAMPLE_S + ROUND_FIXED_S
        total += 3 * (
            args.rounds_c * per_round + (4 * ARM_FIXED_S if not args.tiers_in_process else ARM_FIXED_S)
        )
    return total


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.worldlm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny models, few examples, 1-2 rounds: the smoke test"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for worldlm.md/.png/.json")
    ap.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="re-render md and png from this JSON, run nothing; several JSON files from runs of different "
        "experiments are merged (each keeps its own arguments) and the merged JSON is written too",
    )
    ap.add_argument("--experiments", default="A,B,C")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet α of the label split inside a group")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--beta", type=float, default=0.5, help="β: the share of its own key blocks a sub-federation keeps"
    )
    ap.add_argument("--tau", type=float, default=1.0, help="τ of the attention over members")
    ap.add_argument("--round-timeout", type=float, default=1800)
    g = ap.add_argument_group("A: SST-2 English / Portuguese, MiniLM-L6")
    g.add_argument("--a-workers", type=int, default=4, help="workers per language")
    g.add_argument("--a-examples", type=int, default=48, help="examples per worker on average")
    g.add_argument("--a-steps", type=int, default=3, help="local steps per round")
    g.add_argument("--a-test", type=int, default=300, help="test rows per language (the first ones)")
    g.add_argument("--rounds-a", type=int, default=5)
    g.add_argument("--lr-a", type=float, default=2e-4)
    g.add_argument("--max-len-a", type=int, default=64)
    g = ap.add_argument_group("B: GPT-2 from scratch on news / forum / Portuguese")
    g.add_argument("--b-workers", type=int, default=2, help="workers per source")
    g.add_argument("--b-examples", type=int, default=384, help="texts per worker on average")
    g.add_argument("--b-steps", type=int, default=8)
    g.add_argument("--b-test", type=int, default=200, help="held-out texts per source")
    g.add_argument("--rounds-b", type=int, default=8)
    g.add_argument("--lr-b", type=float, default=2e-3)
    g.add_argument("--max-len-b", type=int, default=48)
    g.add_argument("--gpt2", default="layers=4,hidden=128,heads=4,vocab=8000")
    g.add_argument("--lm-local-blocks", default="top:1")
    g = ap.add_argument_group("C: bytes per tier and coordinator memory at 1, 2, 3 levels")
    g.add_argument("--rounds-c", type=int, default=2)
    g.add_argument(
        "--tiers-in-process",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="C's coordinators in this process, not as processes (no per-coordinator RSS; --quick's default)",
    )
    first, _ = ap.parse_known_args(argv)
    if first.quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args(argv)
    args.experiments = [e for e in args.experiments.upper().split(",") if e]
    if set(args.experiments) - {"A", "B", "C"}:
        ap.error("--experiments: a comma-separated subset of A,B,C")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        merged = merge([json.loads(p.read_text()) for p in args.from_json])
        if len(args.from_json) > 1:
            save_json(args.out / "worldlm.json", merged)
        render(merged, args.out)
        return 0
    started = time.monotonic()
    command = "python -m bench.worldlm" + (" " + shlex.join(sys.argv[1:] if argv is None else argv)).rstrip()
    est = estimate(args)
    print(
        (f"estimated {est / 60:.0f} min on 2 cores" if not args.quick else "--quick: about a minute")
        + f" ({', '.join(args.experiments)}); results in {args.out}",
        flush=True,
    )
    result: dict[str, Any] = dict(
        command=command, machine=machine(), quick=args.quick, estimate_s=est,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    )  # fmt: skip
    arms = 7 * ("A" in args.experiments) + 4 * ("B" in args.experiments) + 3 * ("C" in args.experiments)
    with (
        tempfile.TemporaryDirectory(prefix="strata-worldlm-") as tmp,
        tqdm(total=arms, desc="federations") as bar,
    ):
        root = Path(tmp)
        if "A" in args.experiments or "C" in args.experiments:
            da = data_a(args, root)
            ma = model_a(args, da, root)
        if "A" in args.experiments:
            result["A"] = experiment_a(args, da, ma, root, bar)
            save_json(args.out / "worldlm.json", result)
        if "B" in args.experiments:
            result["B"] = experiment_b(args, root, bar)
            save_json(args.out / "worldlm.json", result)
        if "C" in args.experiments:
            result["C"] = experiment_c(args, da, ma, root, bar)
    result["minutes"] = (time.monotonic() - started) / 60
    save_json(args.out / "worldlm.json", result)
    print(render(result, args.out))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    raise SystemExit(main())
