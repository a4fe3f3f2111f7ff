"""LoRA federations (docs/lora.md, docs/methods.md section 9): what LoRA r = 8 and r = 16 cost in accuracy
against full fine-tuning and what they save in bytes, time and memory; workers of mixed ranks aggregated
exactly (product) or by averaging the factors; instruction tuning of a small LLaMA-architecture model.

    python -m bench.lora [--studies sst2,ranks,instruct] [--rounds 8] [--out bench/results]
    python -m bench.lora --quick [--out DIR]     # every arm end to end on tiny models, in a minute or two
    python -m bench.lora --from-json bench/results/lora.json   # re-render the report, train nothing

Every federation is real (bench/lora_runs.py): a coordinator serves gRPC on 127.0.0.1 with its own SQLite
database, workers run the worker's code in threads of this process, every worker takes part in every round
(min_updates = workers) and trains exactly max_steps AdamW steps a round. All arms of a study run in the
same invocation on the same worker data with the same seeds, rounds, steps and batch size; only the
learning rate differs between full fine-tuning and LoRA (each at a rate suited to it). Divergence
measurement is off in every arm.

sst2: SST-2, --workers workers with a Dirichlet(α) label split, MiniLM-L6 (a fresh 2-class head). Arms: full
   fine-tuning (--full-lr), LoRA at each rank in --ranks (alpha = 2r, --lora-lr, the family's default
   targets query,value; the head trained whole), each worker holding the base model (worker base_model =
   the model folder); then the first LoRA arm again for --download-rounds rounds with workers that hold
   nothing and download the base from the coordinator. Per round: test accuracy (the coordinator's
   eval_data, the first --test rows of the GLUE dev set), bytes up and down (rounds rows), the workers'
   train_seconds (updates rows); per arm one worker's round of training alone in a child process for its
   peak RSS (VmHWM, reset after the model is loaded) and seconds per step.
ranks: the same data, workers at ranks --mixed-ranks in turn (worker setting lora_rank; the federation's
   rank is the largest), lora_aggregation product (exact) against factors (A and B averaged; a lower rank's
   factors are zero past its rank, RankMask). Per round: accuracy, the coordinator's lora_discarded (mean
   over blocks) and, for both arms, the new version's distance from the exact mean of the members' products.
instruct: a LLaMA-architecture causal LM from a config (--llama), first pretrained centrally on generic text
   (SST-2 training sentences, --pretrain-repeat of them as their first 8 words twice so that the model
   learns to copy; --pretrain-steps), then LoRA federations with task instruction on generated
   prompt/response pairs: six operation types (reverse, sort, repeat, count, first, last word), each worker
   sees --lm-ops of them, the held-out set has all. One arm per --lm-targets: the family's default
   (q_proj,v_proj), and q_proj,v_proj,lm_head (an adapter on the output head too: on this tiny base, q/v
   adapters alone lowered the response loss far less than full fine-tuning in a central check). Per
   round: held-out response perplexity (exp of the coordinator's test loss) and next-token accuracy on
   responses; round 0 is the pretrained base (a fresh adapter changes nothing).

Writes lora.md, lora.png and lora.json to --out (default bench/results); the JSON is written after each
study, so an interrupted run keeps what it finished. The estimate printed first comes from the probe
constants below (measured while the machine was shared): the defaults take about 34 min on 2 cores (sst2
14, ranks 7, instruct 12); an idle machine took about 25% less in probes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.common import RESULTS, SHARED_DATA, machine, save_json
from bench.lora_report import render
from bench.lora_runs import WORDS, eval_instruct, instruct_data, pretrain, probe_memory, run_fed, tiny_llama
from bench.privacy import data_accuracy
from bench.worldlm_data import describe, gpt2_size, model_a
from strata.base_model import served_files
from strata.data import read_examples

# seconds measured on the 2-core development machine (loaded by other jobs; an idle one is faster), only
# for the estimate: a MiniLM step alone (batch 16, 64 tokens) for full fine-tuning and for LoRA, a held-out
# row the coordinator evaluates, per round and per federation fixed (8 workers); of the default tiny LLaMA:
# a LoRA step, per round fixed, a central pretraining step (batch 32)
FULL_STEP_S, LORA_STEP_S, EVAL_ROW_S, ROUND_FIXED_S, ARM_FIXED_S = 0.7, 0.35, 0.01, 8.0, 30.0
LM_STEP_S, LM_ROUND_S, PRETRAIN_STEP_S = 0.1, 3.0, 0.5
QUICK = dict(
    workers=4, examples=16, steps=1, test=32, rounds=2, max_len=32, ranks_rounds=2, download_rounds=2,
    probe_steps=2, lm_workers=3, lm_examples=16, lm_test=24, lm_rounds=2, lm_steps=2, lm_batch=8,
    llama="layers=1,hidden=32,heads=2,vocab=600", pretrain_steps=4, pretrain_texts=200, batch=8,
    round_timeout=120,
)  # fmt: skip
STUDIES = ("sst2", "ranks", "instruct")


def common_settings(args: argparse.Namespace, model: Path, task: str, labels: list[str]) -> dict[str, Any]:
    lm = task == "instruction"
    return dict(
        model=model, task=task, labels=",".join(labels) if labels else None,
        rounds=args.lm_rounds if lm else args.rounds, round_timeout=args.round_timeout,
        worker_timeout=args.round_timeout, local_epochs=1000,  # the cap decides: exactly max_steps steps
        max_steps=args.lm_steps if lm else args.steps, batch_size=args.lm_batch if lm else args.batch,
        learning_rate=args.lm_lr if lm else args.lora_lr, max_seq_len=args.lm_max_len if lm else args.max_len,
        seed=args.seed, linger_seconds=0.5, grace_seconds=0.2, task_poll_seconds=2.0, divergence=False,
    )  # fmt: skip


def lora_extra(
    rank: int, lr: float, args: argparse.Namespace, aggregation: str = "product"
) -> dict[str, Any]:
    return dict(lora_rank=rank, lora_alpha=2.0 * rank, lora_dropout=args.lora_dropout,
                lora_targets=args.targets, lora_aggregation=aggregation, learning_rate=lr)  # fmt: skip


def arm(name: str, bar: tqdm, out: dict[str, Any], go: Any) -> None:
    """Run one arm (`go()` returns its record); a failure is recorded and the other arms still run."""
    bar.set_postfix_str(name)
    try:
        rec = out[name] = go()
        last = rec["rounds"][-1]
        acc, loss = last["test_accuracy"], last["test_loss"]
        tqdm.write(f"{name}: test accuracy {acc:.4f}, loss {loss:.4f} ({rec['seconds']:.0f} s)")
    except Exception as exc:  # noqa: BLE001 - recorded and reported
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        tqdm.write(f"{name}: FAILED: {out[name]['error']}")
    bar.update()


# ---------------------------------------------------------------------------------------------- studies


def sst2_data(args: argparse.Namespace, root: Path) -> tuple[dict[str, Any], Path]:
    """bench.privacy's SST-2 split (a seeded sample, Dirichlet over labels, the first test rows) and
    MiniLM (--quick: a tiny BERT), under bench.privacy's argument names."""
    ns = argparse.Namespace(
        a_workers=args.workers, a_examples=args.examples, a_test=args.test, seed=args.seed,
        alpha=args.alpha, batch=args.batch, quick=args.quick, max_len_a=args.max_len,
    )  # fmt: skip
    data = data_accuracy(ns, root)
    return data, model_a(ns, data, root)


def study_sst2(
    args: argparse.Namespace, data: dict[str, Any], model: Path, root: Path, bar: tqdm
) -> dict[str, Any]:
    g = data["groups"]["sst2"]
    dirs, test, labels = g["dirs"], g["test"], data["labels"]
    common = common_settings(args, model, "sequence-classification", labels)
    held = [{"base_model": str(model)}] * len(dirs)
    base_bytes = sum(p.stat().st_size for p in served_files(model))
    out = describe(data, model, common) | dict(majority=data["majority"], base_bytes=base_bytes, arms={})
    probe_cfg = dict(steps=args.probe_steps, batch=args.batch, max_len=args.max_len, threads=2)
    arms: list[tuple[str, dict[str, Any], list[dict[str, Any]] | None, int]] = [
        ("full fine-tuning", dict(learning_rate=args.full_lr), None, args.rounds)
    ]
    arms += [(f"LoRA r={r}", lora_extra(r, args.lora_lr, args), held, args.rounds) for r in args.ranks]
    r0 = args.ranks[0]
    arms.append(
        (f"LoRA r={r0}, base downloaded", lora_extra(r0, args.lora_lr, args), None, args.download_rounds)
    )
    for i, (name, extra, per, rounds) in enumerate(arms):

        def go(
            name: str = name, extra: dict[str, Any] = extra, per: Any = per, rounds: int = rounds, i: int = i
        ) -> dict[str, Any]:
            work = root / "runs" / f"sst2-{i}"
            lora = "lora_rank" in extra
            rec = run_fed("sst2", dirs, test, common | dict(rounds=rounds), extra, work, per, capture=lora)
            rec |= dict(lr=extra["learning_rate"], holds_base=per is not None)
            if "downloaded" not in name:  # one worker's round alone: peak memory and seconds per step
                cfg = probe_cfg | dict(lr=extra["learning_rate"])
                rec["probe"] = probe_memory(
                    model, dirs[0], labels, "sequence-classification", rec["lora"], cfg
                )
            return rec

        arm(name, bar, out["arms"], go)
    return out


def study_ranks(
    args: argparse.Namespace, data: dict[str, Any], model: Path, root: Path, bar: tqdm
) -> dict[str, Any]:
    g = data["groups"]["sst2"]
    dirs = g["dirs"]
    common = common_settings(args, model, "sequence-classification", data["labels"]) | dict(
        rounds=args.ranks_rounds
    )
    ranks = [args.mixed_ranks[k % len(args.mixed_ranks)] for k in range(len(dirs))]
    per = [{"base_model": str(model), "lora_rank": r} for r in ranks]
    top = max(args.mixed_ranks)
    out: dict[str, Any] = dict(
        settings=describe(data, model, common)["settings"],
        federation_rank=top,
        worker_ranks=dict(zip([d.name for d in dirs], ranks, strict=True)),
        arms={},
    )
    for i, agg in enumerate(("product", "factors")):

        def go(agg: str = agg, i: int = i) -> dict[str, Any]:
            extra = lora_extra(top, args.lora_lr, args, agg)
            rec = run_fed(
                "ranks", dirs, g["test"], common, extra, root / "runs" / f"ranks-{i}", per, capture=True
            )
            return rec | dict(lr=args.lora_lr, aggregation=agg)

        arm(agg, bar, out["arms"], go)
    return out


def study_instruct(args: argparse.Namespace, root: Path, bar: tqdm) -> dict[str, Any]:
    import random

    folder = root / "instruct"
    a = args
    data = instruct_data(folder / "data", a.lm_workers, a.lm_ops, a.lm_examples, a.lm_test, a.seed)
    sst = read_examples(SHARED_DATA / "sst2" / "train.jsonl.zst", require_labels=False)
    texts = [e.text for e in random.Random(a.seed + 7).sample(sst, a.pretrain_texts)]
    every = round(1 / a.pretrain_repeat) if a.pretrain_repeat > 0 else 0  # generic copying: "s ; s"
    generic = [f"{cut(t)} ; {cut(t)}" if every and i % every == 0 else t for i, t in enumerate(texts)]
    size = gpt2_size(a.llama)
    scratch = tiny_llama(folder, texts, data["pairs"], size, a.lm_max_len, a.seed)
    model = folder / "pretrained"
    batch = 8 if a.quick else 32
    pre = pretrain(scratch, model, generic, a.pretrain_steps, batch, a.pretrain_lr, a.lm_max_len, a.seed)
    keys = ("loss", "accuracy")
    before = dict(zip(keys, eval_instruct(model, data["test"], a.lm_max_len), strict=True))
    untrained = dict(zip(keys, eval_instruct(scratch, data["test"], a.lm_max_len), strict=True))
    common = common_settings(a, model, "instruction", [])
    meta = describe({"groups": {}}, model, common)
    out: dict[str, Any] = dict(
        settings=meta["settings"], parameters=meta["parameters"], llama=size, pretrain=pre,
        pretrain_source=f"{len(texts)} SST-2 training sentences (a seeded sample), "
        + (f"one in {every} as its first 8 words twice ('w1 … w8 ; w1 … w8', to learn copying)" if every
           else "as they are"), round0=before,
        scratch=untrained, ops={d.name: o for d, o in zip(data["dirs"], data["ops"], strict=True)},
        examples=a.lm_examples, test_rows=a.lm_test, words=len(WORDS), arms={},
    )  # fmt: skip
    per = [{"base_model": str(model)}] * len(data["dirs"])
    for i, targets in enumerate(a.lm_targets):
        name = f"LoRA r={a.lm_rank}, " + (f"targets {targets}" if targets else "the default targets")

        def go(targets: str = targets, i: int = i) -> dict[str, Any]:
            extra = lora_extra(a.lm_rank, a.lm_lr, a) | dict(lora_targets=targets)
            work = root / "runs" / f"instruct-{i}"
            rec = run_fed("instruct", data["dirs"], data["test"], common, extra, work, per)
            return rec | dict(lr=a.lm_lr)

        arm(name, bar, out["arms"], go)
    return out


# ---------------------------------------------------------------------------------------------- main


def estimate(args: argparse.Namespace) -> dict[str, float]:
    """Seconds each study should take on 2 cores, from the probe constants above."""
    scale = args.batch * args.max_len / (16 * 64)
    ev = args.test * EVAL_ROW_S + ROUND_FIXED_S

    def fed(step_s: float, rounds: int) -> float:
        return rounds * (args.workers * args.steps * step_s * scale + ev) + ARM_FIXED_S

    # each probe: a fresh process that imports torch and loads the model, then its steps
    probe = (
        15 * (1 + len(args.ranks)) + args.probe_steps * (FULL_STEP_S + LORA_STEP_S * len(args.ranks)) * scale
    )
    out: dict[str, float] = {}
    if "sst2" in args.studies:
        out["sst2"] = fed(FULL_STEP_S, args.rounds) + len(args.ranks) * fed(LORA_STEP_S, args.rounds) + probe
        out["sst2"] += fed(LORA_STEP_S, args.download_rounds) + 20  # + the base downloads
    if "ranks" in args.studies:
        out["ranks"] = 2 * fed(LORA_STEP_S, args.ranks_rounds)
    if "instruct" in args.studies:
        lm = args.lm_workers * args.lm_steps * LM_STEP_S + args.lm_test * EVAL_ROW_S / 4 + LM_ROUND_S
        arms = len(args.lm_targets) * (args.lm_rounds * lm + ARM_FIXED_S)
        out["instruct"] = args.pretrain_steps * PRETRAIN_STEP_S + arms
    return out


def cut(text: str, words: int = 8) -> str:
    return " ".join(text.split()[:words])


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def target_sets(text: str) -> list[str]:
    return ["" if t.strip() == "default" else t.strip() for t in text.split(";") if t.strip()]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.lora", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--quick", action="store_true", help="tiny models, few examples, 2 rounds: the smoke test"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for lora.md/.png/.json")
    ap.add_argument("--from-json", type=Path, help="re-render md and png from this JSON, run nothing")
    ap.add_argument(
        "--studies", default=",".join(STUDIES), help="a comma-separated subset of " + ",".join(STUDIES)
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--round-timeout", type=float, default=900, help="seconds")
    ap.add_argument("--lora-dropout", type=float, default=0.05, help="every LoRA arm's adapter dropout")
    g = ap.add_argument_group("sst2 and ranks: SST-2, MiniLM-L6")
    g.add_argument("--workers", type=int, default=8)
    g.add_argument("--examples", type=int, default=160, help="examples per worker on average")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet α of the label split")
    g.add_argument("--steps", type=int, default=4, help="local steps per round")
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--test", type=int, default=400, help="test rows (the first ones, of 872)")
    g.add_argument("--rounds", type=int, default=8)
    g.add_argument("--max-len", type=int, default=64)
    g.add_argument("--full-lr", type=float, default=1e-4, help="full fine-tuning's AdamW learning rate")
    g.add_argument("--lora-lr", type=float, default=1e-3, help="every SST-2 LoRA arm's learning rate")
    g.add_argument("--ranks", type=ints, default=[8, 16], help="the LoRA arms' ranks (alpha = 2r)")
    g.add_argument("--targets", default="", help="lora_targets (empty: the family's default, query,value)")
    g.add_argument("--download-rounds", type=int, default=2, help="rounds of the arm that downloads the base")
    g.add_argument("--probe-steps", type=int, default=6, help="steps of each arm's memory probe")
    g.add_argument("--mixed-ranks", type=ints, default=[4, 8, 16], help="ranks study: worker ranks, in turn")
    g.add_argument("--ranks-rounds", type=int, default=8)
    g = ap.add_argument_group("instruct: a small LLaMA, instruction tuning with LoRA")
    g.add_argument("--llama", default="layers=4,hidden=128,heads=4,vocab=3000")
    g.add_argument("--lm-workers", type=int, default=6)
    g.add_argument("--lm-ops", type=int, default=2, help="operation types each worker sees (of 6)")
    g.add_argument("--lm-examples", type=int, default=200, help="pairs per worker")
    g.add_argument("--lm-test", type=int, default=240, help="held-out pairs (every type in turn)")
    g.add_argument("--lm-rounds", type=int, default=20)
    g.add_argument("--lm-steps", type=int, default=10)
    g.add_argument("--lm-batch", type=int, default=16)
    g.add_argument("--lm-lr", type=float, default=3e-3)
    g.add_argument("--lm-rank", type=int, default=8)
    g.add_argument(
        "--lm-targets",
        type=target_sets,
        default=["", "q_proj,v_proj,lm_head"],
        help="one arm per lora_targets value, ';'-separated ('default': the family's, q_proj,v_proj)",
    )
    g.add_argument("--lm-max-len", type=int, default=48)
    g.add_argument("--pretrain-steps", type=int, default=600, help="central pretraining steps (batch 32)")
    g.add_argument("--pretrain-texts", type=int, default=8000, help="SST-2 sentences to pretrain on")
    g.add_argument("--pretrain-lr", type=float, default=3e-3)
    g.add_argument(
        "--pretrain-repeat",
        type=float,
        default=0.5,
        help="share of the pretraining texts written as their first 8 words twice (0: none)",
    )
    first, _ = ap.parse_known_args(argv)
    if first.quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args(argv)
    args.studies = [s for s in args.studies.lower().split(",") if s]
    if set(args.studies) - set(STUDIES):
        ap.error("--studies: a comma-separated subset of " + ",".join(STUDIES))
    if not args.ranks or not args.mixed_ranks or min(args.ranks + args.mixed_ranks) < 1:
        ap.error("--ranks and --mixed-ranks: positive ranks, e.g. 8,16")
    if args.rounds < 2 or args.download_rounds < 2:
        ap.error("--rounds and --download-rounds: at least 2 (round 1 is reported apart from the others)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        render(json.loads(args.from_json.read_text()), args.out)
        return 0
    started = time.monotonic()
    command = "python -m bench.lora" + (" " + shlex.join(sys.argv[1:] if argv is None else argv)).rstrip()
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
    total = (len(args.ranks) + 2) * ("sst2" in args.studies) + 2 * ("ranks" in args.studies)
    total += len(args.lm_targets) * ("instruct" in args.studies)
    with (
        tempfile.TemporaryDirectory(prefix="strata-lora-") as tmp,
        tqdm(total=total, desc="federations") as bar,
    ):
        root = Path(tmp)
        if {"sst2", "ranks"} & set(args.studies):
            data, model = sst2_data(args, root)
        if "sst2" in args.studies:
            result["sst2"] = study_sst2(args, data, model, root, bar)
            save_json(args.out / "lora.json", result)
        if "ranks" in args.studies:
            result["ranks"] = study_ranks(args, data, model, root, bar)
            save_json(args.out / "lora.json", result)
        if "instruct" in args.studies:
            result["instruct"] = study_instruct(args, root, bar)
    result["minutes"] = (time.monotonic() - started) / 60
    save_json(args.out / "lora.json", result)
    print(render(result, args.out))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    raise SystemExit(main())
