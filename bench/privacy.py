"""Differential privacy (docs/privacy.md, docs/methods.md section 6): what user-level DP-FedAvg costs in
accuracy at a few budgets ε, whether a tree of federations (WorldLM) stays stable under DP where a flat
federation does not, and the accountant against independent ones.

    python -m bench.privacy [--studies accuracy,worldlm,accountant] [--rounds 6] [--lm-rounds 8] [--out bench/results]
    python -m bench.privacy --quick [--out DIR]     # every arm end to end on tiny models, in a minute or two
    python -m bench.privacy --from-json bench/results/privacy.json   # re-render the report, train nothing

Every federation is real, as in bench.worldlm (bench/worldlm_run.py): coordinators serve gRPC on 127.0.0.1
with a SQLite database each, workers run the worker's code in threads of this process. All arms of a study
run in the same invocation on the same worker data, with the same seeds and local steps (max_steps, with
enough local epochs that the cap decides). The DP noise is drawn from a generator the coordinator seeds
from the operating system (by design), so DP arms differ from run to run. Divergence measurement is off
in every arm (DP turns it off; the others match).

accuracy: SST-2, MiniLM-L6, --workers workers with a Dirichlet(α) label split, --rounds rounds. Arms: no
   DP; user-level DP at each budget in --epsilons (z = the smallest noise multiplier whose rounds fit the
   budget, strata.privacy_cli.smallest_z; dp_target_epsilon = the budget), with a fixed clip and with
   adaptive clipping from the same first clip; these arms train the whole model. With --targeted, three
   arms more train the head and the smallest other block (the pooler) after a first round that trains
   every block (targeting cannot train the head alone, and pre-selected scheduling probes every block
   in round 1): no DP, and DP at the largest budget, fixed and adaptive. The fixed clip S (--clip 0) is
   the median update norm the matching no-DP arm measured (the targeted one: after its probe round).
worldlm: bench.worldlm's experiment B (a small GPT-2 from scratch; news, forum and Portuguese sources as
   sub-federations; perplexity per source) under DP over individual workers: in flat the one coordinator
   runs DP over all workers, in a tree each sub-federation over its own, with the same z, S, q and rounds,
   so every worker has the same guarantee; the tree's parent is not private (it only sees released
   sub-federation models). One arm more runs DP at the parent only: its unit is a whole sub-federation.
accountant: ε of strata.accountant (dp-accounting's RDP accountant) against Opacus's RDP and PRV
   accountants and dp-accounting's PLD accountant, for the studies' settings and two subsampled ones
   (bench/privacy_accountant.py).

Writes privacy.md, privacy.png and privacy.json to --out (default bench/results); the JSON is written after
each study, so an interrupted run keeps what it finished. The estimate printed first comes from
bench.worldlm's probe constants: the defaults take about 50 min for accuracy and 30 min for worldlm on
2 cores (the probe's machine was loaded; an idle one is faster).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bench.common import RESULTS, SHARED_DATA, machine, save_json
from bench.privacy_accountant import ACCOUNTANT_S, study_accountant
from bench.privacy_common import dp_values, failure, mechanism, median_norm, read_dp, read_norms
from bench.privacy_report import render
from bench.privacy_worldlm import study_worldlm
from bench.worldlm import A_EVAL_S, A_EXAMPLE_S, ARM_FIXED_S, B_STEP_S, ROUND_FIXED_S, common_settings
from bench.worldlm_data import describe, model_a, split_group
from bench.worldlm_run import Node, run_tree
from strata.data import read_examples, read_labels, write_examples
from strata.layers import block_map
from strata.modeling import load_model
from strata.privacy_cli import smallest_z

TARGETED_FACTOR = 0.5  # a guess, for the estimate only: a targeted round's training against a full one's
QUICK = dict(
    a_workers=4, a_examples=16, a_steps=1, a_test=32, rounds_a=2, max_len_a=32,
    b_workers=1, b_examples=16, b_steps=2, b_test=32, rounds_b=2, max_len_b=32,
    gpt2="layers=1,hidden=32,heads=2,vocab=1500", batch=8, round_timeout=120,
)  # fmt: skip
STUDIES = ("accuracy", "worldlm", "accountant")
#: a study-1 arm: (name, scope: full | targeted, budget ε or None, adaptive clipping)
AccArm = tuple[str, str, float | None, bool]


# ---------------------------------------------------------------------------------------------- accuracy


def data_accuracy(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """SST-2: a seeded permutation's first workers × examples training rows, split by Dirichlet(α) over
    the labels, and the first --test rows of the test set (GLUE dev)."""
    labels = read_labels(SHARED_DATA / "sst2")
    train = read_examples(SHARED_DATA / "sst2" / "train.jsonl.zst", labels)
    pool = args.a_workers * args.a_examples
    perm = np.random.default_rng(args.seed).permutation(len(train))
    rows = [train[int(i)] for i in perm[:pool]]
    dirs, counts = split_group("sst2", rows, args.a_workers, args, root / "acc", labels)
    held = read_examples(SHARED_DATA / "sst2" / "test.jsonl", labels)[: args.a_test]
    test = root / "acc" / "test.jsonl"
    write_examples(test, held)
    group = dict(dirs=dirs, counts=counts, test=test, positions=[0, pool])
    majority = max(Counter(e.label for e in held).values()) / len(held)
    return {"labels": labels, "groups": {"sst2": group}, "majority": majority}


def model_blocks(model: Path, labels: list[str]) -> dict[str, Any]:
    """The model's blocks and their sizes (elements), its head, and its smallest other block."""
    net, _ = load_model(model, labels, seed=0)
    bmap = block_map(net)
    body = [b.name for b in bmap.blocks if not b.is_head]
    head = [b.name for b in bmap.blocks if b.is_head]
    return dict(sizes=dict(bmap.sizes), head=head, smallest=min(body, key=lambda b: bmap.sizes[b]))


def accuracy_arms(args: argparse.Namespace, targeted: str) -> list[AccArm]:
    """The no-DP arms first: the fixed clip of the DP arms comes from their update norms."""
    arms: list[AccArm] = [("full, no DP", "full", None, False)]
    if args.targeted:
        arms.append((f"{targeted}, no DP", "targeted", None, False))
    for e in args.epsilons:
        arms += [(f"full, ε {e:g}, fixed", "full", e, False), (f"full, ε {e:g}, adaptive", "full", e, True)]
    if args.targeted:
        e = max(args.epsilons)
        arms += [(f"{targeted}, ε {e:g}, {c}", "targeted", e, c == "adaptive") for c in ("fixed", "adaptive")]
    return arms


def study_accuracy(args: argparse.Namespace, root: Path, bar: tqdm) -> dict[str, Any]:
    data = data_accuracy(args, root)
    model = model_a(args, data, root)
    blocks = model_blocks(model, data["labels"])
    small, sizes, rounds = blocks["smallest"], blocks["sizes"], args.rounds_a
    common = common_settings(args, "A", model, "sequence-classification", data["labels"]) | dict(
        divergence=False
    )
    scopes = {
        "full": dict(blocks=list(sizes), elements=sum(sizes.values()), extra={}),
        "targeted": dict(
            blocks=[small, *blocks["head"]],
            elements=sizes[small] + sum(sizes[h] for h in blocks["head"]),
            # only `small` fits the byte budget; no refresh, and round 1 the only probe
            extra=dict(
                policy="random", block_budget=4 * sizes[small], refresh_every=rounds + 1, probe_every=0
            ),
        ),
    }
    z = {e: smallest_z(e, rounds, args.sampling_rate, args.delta) for e in args.epsilons}
    clip: dict[str, float | None] = {s: args.clip or None for s in scopes}
    out = describe(data, model, common) | dict(
        majority=data["majority"], blocks=blocks, scopes=scopes,
        z={f"{e:g}": v for e, v in z.items()}, clip=clip, clip_source="--clip" if args.clip else "the median norm of the updates of the no-DP arm of the same scope; targeted: after its probe round", arms={},
    )  # fmt: skip
    for i, (name, scope, eps, adaptive) in enumerate(accuracy_arms(args, f"head+{small}")):
        bar.set_postfix_str(f"accuracy: {name}")
        rec: dict[str, Any] = dict(scope=scope, epsilon=eps, adaptive=adaptive)
        try:
            extra = dict(scopes[scope]["extra"])
            if eps is not None:
                s = clip[scope] or 1.0
                if not clip[scope]:
                    out["clip_source"] += f" (no measurement for {scope}: 1.0)"
                    clip[scope] = s
                m, z_update = mechanism(z[eps], args.sampling_rate, args.a_workers, adaptive)
                rec["dp"] = dict(
                    z=z[eps], z_update=z_update, clip=s, m=m, q=args.sampling_rate, delta=args.delta
                )
                extra |= dp_values(eps, z[eps], s, adaptive, args)
            work = root / "runs" / f"acc-{i}"
            node = Node(
                "flat",
                data=data["groups"]["sst2"]["dirs"],
                eval_data=data["groups"]["sst2"]["test"],
                extra=extra,
            )
            run = run_tree(node, common, work)
            rows = run.rounds["flat"]
            rec |= dict(
                per_round={k: [r[f"test_{k}"] for r in rows] for k in ("accuracy", "loss")},
                rounds=read_dp(work / "flat", "flat"),
                norms=read_norms(work / "flat", "flat"),
                seconds=run.seconds,
            )
            if eps is None and clip[scope] is None:
                clip[scope] = median_norm(rec["norms"], skip_first=scope == "targeted")
            last = rec["rounds"][-1]["epsilon"]
            tqdm.write(f"accuracy {name}: accuracy {rec['per_round']['accuracy'][-1]:.4f}"
                       + (f", ε spent {last:.3g}" if last is not None else "") + f" ({run.seconds:.0f} s)")  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - recorded and reported; the other arms still run
            rec["error"] = failure(exc)
            tqdm.write(f"accuracy {name}: FAILED: {rec['error']}")
        out["arms"][name] = rec
        bar.update()
    return out


# ---------------------------------------------------------------------------------------------- main


def estimate(args: argparse.Namespace) -> dict[str, float]:
    """Seconds each study should take on 2 cores, from bench.worldlm's probe constants."""
    out: dict[str, float] = {}
    if "accuracy" in args.studies:
        train = args.a_workers * args.a_steps * args.batch * A_EXAMPLE_S
        fixed = args.a_test * A_EVAL_S + ROUND_FIXED_S
        out["accuracy"] = (1 + 2 * len(args.epsilons)) * (args.rounds_a * (train + fixed) + ARM_FIXED_S)
        if args.targeted:
            probe_then_targeted = train + fixed + (args.rounds_a - 1) * (train * TARGETED_FACTOR + fixed)
            out["accuracy"] += 3 * (probe_then_targeted + ARM_FIXED_S)
    if "worldlm" in args.studies:
        per_round = (
            3 * args.b_workers * args.b_steps * B_STEP_S / 1.6
            + 3 * args.b_test * A_EVAL_S / 8
            + ROUND_FIXED_S / 2
        )
        out["worldlm"] = 7 * (args.rounds_b * per_round + ARM_FIXED_S / 2)
    if "accountant" in args.studies:
        out["accountant"] = ACCOUNTANT_S
    return out


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.privacy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny models, few examples, 2 rounds: the smoke test"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for privacy.md/.png/.json")
    ap.add_argument("--from-json", type=Path, help="re-render md and png from this JSON, run nothing")
    ap.add_argument(
        "--studies", default=",".join(STUDIES), help="a comma-separated subset of " + ",".join(STUDIES)
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet α of the label split")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--delta", type=float, default=1e-5, help="δ of every DP arm")
    ap.add_argument(
        "--sampling-rate", type=float, default=1.0, help="q of every DP arm (1: every member every round)"
    )
    ap.add_argument(
        "--round-timeout", type=float, default=900, help="seconds; a round here takes about one minute"
    )
    g = ap.add_argument_group("accuracy: SST-2, MiniLM-L6")
    g.add_argument("--workers", dest="a_workers", metavar="WORKERS", type=int, default=8)
    g.add_argument(
        "--examples",
        dest="a_examples",
        metavar="EXAMPLES",
        type=int,
        default=160,
        help="examples per worker on average",
    )
    g.add_argument(
        "--steps", dest="a_steps", metavar="STEPS", type=int, default=2, help="local steps per round"
    )
    g.add_argument(
        "--test",
        dest="a_test",
        metavar="TEST",
        type=int,
        default=400,
        help="test rows (the first ones, of 872)",
    )
    g.add_argument("--rounds", dest="rounds_a", metavar="ROUNDS", type=int, default=6)
    g.add_argument("--lr", dest="lr_a", metavar="LR", type=float, default=2e-4)
    g.add_argument("--max-len", dest="max_len_a", metavar="MAX_LEN", type=int, default=64)
    g.add_argument("--epsilons", default="2,8,32", help="the budgets ε of the DP arms")
    g.add_argument(
        "--clip", type=float, default=0.0, help="the DP arms' (first) clip S (0: the no-DP arm's median norm)"
    )
    g.add_argument("--targeted", action=argparse.BooleanOptionalAction, default=True,
                   help="the head + smallest-block arms (no DP, and DP at the largest ε)")  # fmt: skip
    g = ap.add_argument_group("worldlm: GPT-2 from scratch on news / forum / Portuguese (bench.worldlm B)")
    g.add_argument(
        "--lm-workers", dest="b_workers", metavar="LM_WORKERS", type=int, default=4, help="workers per source"
    )
    g.add_argument(
        "--lm-examples",
        dest="b_examples",
        metavar="LM_EXAMPLES",
        type=int,
        default=256,
        help="texts per worker on average",
    )
    g.add_argument("--lm-steps", dest="b_steps", metavar="LM_STEPS", type=int, default=8)
    g.add_argument(
        "--lm-test", dest="b_test", metavar="LM_TEST", type=int, default=200, help="held-out texts per source"
    )
    g.add_argument("--lm-rounds", dest="rounds_b", metavar="LM_ROUNDS", type=int, default=8)
    g.add_argument("--lm-lr", dest="lr_b", metavar="LM_LR", type=float, default=2e-3)
    g.add_argument("--lm-max-len", dest="max_len_b", metavar="LM_MAX_LEN", type=int, default=48)
    g.add_argument("--gpt2", default="layers=4,hidden=128,heads=4,vocab=8000")
    g.add_argument("--lm-local-blocks", default="top:1")
    g.add_argument(
        "--beta", type=float, default=0.5, help="β: the share of its key blocks a sub-federation keeps"
    )
    g.add_argument("--tau", type=float, default=1.0, help="τ of the attention over members")
    g.add_argument("--lm-epsilon", type=float, default=8.0, help="the budget ε of every DP tier")
    g.add_argument(
        "--lm-clip",
        type=float,
        default=0.0,
        help="S of DP over workers (0: the flat no-DP arm's median norm)",
    )
    g.add_argument("--lm-parent-clip", type=float, default=0.0,
                   help="S of DP at the parent (0: the median norm of the tree's sub-federation updates)")  # fmt: skip
    first, _ = ap.parse_known_args(argv)
    if first.quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args(argv)
    args.studies = [s for s in args.studies.lower().split(",") if s]
    if set(args.studies) - set(STUDIES):
        ap.error("--studies: a comma-separated subset of " + ",".join(STUDIES))
    args.epsilons = sorted({float(e) for e in args.epsilons.split(",") if e})
    if not args.epsilons or min(args.epsilons) <= 0:
        ap.error("--epsilons: positive budgets, e.g. 2,8,32")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        render(json.loads(args.from_json.read_text()), args.out)
        return 0
    started = time.monotonic()
    command = "python -m bench.privacy" + (" " + shlex.join(sys.argv[1:] if argv is None else argv)).rstrip()
    est = estimate(args)
    per = ", ".join(f"{k} {v / 60:.0f} min" for k, v in est.items())
    head = (
        "--quick: a minute or two"
        if args.quick
        else f"estimated {sum(est.values()) / 60:.0f} min on 2 cores ({per})"
    )
    print(f"{head}; results in {args.out}", flush=True)
    result: dict[str, Any] = dict(
        command=command, machine=machine(), quick=args.quick, estimate_s=est,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    )  # fmt: skip
    arms = (len(accuracy_arms(args, "")) if "accuracy" in args.studies else 0) + 7 * (
        "worldlm" in args.studies
    )
    with (
        tempfile.TemporaryDirectory(prefix="strata-privacy-") as tmp,
        tqdm(total=arms, desc="federations") as bar,
    ):
        root = Path(tmp)
        if "accountant" in args.studies:
            result["accountant"] = study_accountant(args)
            save_json(args.out / "privacy.json", result)
        if "accuracy" in args.studies:
            result["accuracy"] = study_accuracy(args, root, bar)
            save_json(args.out / "privacy.json", result)
        if "worldlm" in args.studies:
            result["worldlm"] = study_worldlm(args, root, bar)
    result["minutes"] = (time.monotonic() - started) / 60
    save_json(args.out / "privacy.json", result)
    print(render(result, args.out))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    raise SystemExit(main())
