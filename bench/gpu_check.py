"""GPU check: a real LoRA federation on a 1B-parameter LLaMA on one NVIDIA GPU, against a plain peft loop.

    bench/gpu_check.sh                  # on the GPU machine: python -m bench.gpu_check, report into $OUT
    python -m bench.gpu_check           # on a CUDA GPU; report: bench/results/gpu_check.md
    python -m bench.gpu_check --smoke   # a tiny LLaMA on the CPU, 1 round; report: a temp file (or --out)

One run, nothing downloaded: a LLaMA of 1.1B parameters (TinyLlama's shape) is built from a config with
random weights and a tokenizer trained on generated text, saved as bf16 safetensors, with text for 2
workers; then, on the same device, with the same adapter (LoRA r=16 on q_proj,v_proj), batch, sequence
length and steps, and bf16 autocast on CUDA:
1. the baseline: a plain peft training loop in this process, with the base in bf16 and in 4-bit (NF4);
2. Strata: a `strata coordinator` process (SQLite) and 2 `strata worker` processes sharing the GPU, each
   holding the base itself (`base_model`), for `--rounds` rounds of `--steps` steps; again with
   `quantize_base=4bit`. 4-bit runs need bitsandbytes; they are reported skipped without it or on a CPU.
Exit status: 0 when every run that was not skipped worked, 1 otherwise (the report says why), 2 without
a CUDA GPU (without --smoke), 3 when this Python lacks a package Strata needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.common import RESULTS, ROOT

if TYPE_CHECKING:  # imported once the packages it needs are known to be there (missing_packages)
    from bench.gpu_check_runs import Workload

FULL = dict(batch=16, seq_len=256, steps=30, rounds=2, warmup=3, timeout=150.0)
SMOKE = dict(batch=4, seq_len=32, steps=3, rounds=1, warmup=1, timeout=120.0)
NEEDED = (
    "transformers", "peft", "tokenizers", "safetensors", "grpc", "grpc_health", "grpc_reflection",
    "google.protobuf", "sqlalchemy", "alembic", "pydantic", "pydantic_settings", "zstandard",
    "dp_accounting", "tqdm", "numpy", "prometheus_client",
)  # fmt: skip
QUANTS = ("", "4bit")
GOAL = 0.9
Results = dict[tuple[str, str], dict[str, Any]]
METHOD = """\
- Plain peft loop: in this process, the base loaded as a worker loads it (bf16; 4-bit: NF4, double
  quantization, bf16 compute, prepare_model_for_kbit_training) with the same LoRA config; `warmup` untimed
  steps, then `steps` steps timed between two torch.cuda.synchronize() calls; each batch is tokenized in the
  loop and its loss read every step, as a worker does; tokens = the sum of the batches' attention masks.
- Strata, one worker in one round: num_steps × batch × seq_len / train_seconds, both from the coordinator's
  updates table (train_seconds: the worker's train() from its start to the delta; loading the base,
  evaluation, encoding and upload are outside it). Every text is longer than seq_len, so every step holds
  batch × seq_len non-padding tokens, as the baseline counts them.
- Strata, both workers: their tokens in the round over the span from the first start to the last end of
  training (end = received_at − upload_seconds, start = end − train_seconds: approximate by a worker's
  encoding time). The workers share one GPU, each getting part of it while both train; round 1 also carries
  the first steps' warm-up (CUDA kernels, allocator, optimizer state), later rounds do not.
- Goal: Strata's tokens/s at least 0.9× the plain loop's with the same base, in the last round.
- Memory: workers report none, so nvidia-smi --query-compute-apps=pid,used_memory is polled every 0.2 s for
  each worker process (on a CPU: /proc VmHWM, the peak RSS); the GPU's memory.used, peak minus before the
  run, covers both workers where nvidia-smi lists no pids (containers). The coordinator uses no GPU.
- Bytes: the coordinator's rounds table: bytes_up/bytes_down as sent (encoded, zstd-compressed), raw_* before
  encoding (fp32). Only the adapters travel: every worker holds the base (base_model), checked by its hash.
"""
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny LLaMA, 1 round, on the CPU unless --device")
    p.add_argument("--device", help="cuda (default) or cuda:N; cpu only with --smoke")
    p.add_argument(
        "--out", type=Path, help="the report (default bench/results/gpu_check.md; smoke: a temp file)"
    )
    for flag in ("batch", "seq_len", "steps", "rounds", "warmup"):
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int, help=f"default {FULL[flag]}")
    p.add_argument("--timeout", type=float, help="seconds each federation may take (default 150)")
    p.add_argument("--no-4bit", action="store_true", help="skip the 4-bit runs")
    return p.parse_args(argv)


def missing_packages() -> list[str]:
    """What this Python lacks of what the bench, the coordinator and the workers import."""
    out = []
    for name in NEEDED:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except ModuleNotFoundError:
            out.append(name)
    if out:
        return out
    from strata.cli import commands

    if not {"coordinator", "worker"} <= set(commands()):
        out.append("the `strata` commands (no strata_fl metadata here: bench/gpu_check.sh writes it)")
    return out


def bitsandbytes() -> str:
    """bitsandbytes' version, or why it cannot be used ("not installed", an import error)."""
    try:
        import bitsandbytes as bnb
    except ModuleNotFoundError:
        return "not installed"
    except Exception as exc:  # noqa: BLE001 - a broken CUDA setup raises anything
        return f"fails to import ({type(exc).__name__}: {exc})".replace("\n", " ")
    return str(bnb.__version__)


def attempt(what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn(*args), or {"error": ...} (the traceback on stderr): one failed run does not stop the others."""
    say(what)
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported, and the other runs go on
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}
    say(f"{what}: done")
    return result


def label(q: str, wl: Workload) -> str:
    return "4-bit" if q else ("bf16" if wl.cuda else "fp32")


def num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if x is None or math.isnan(x) else fmt.format(x)


def why(r: dict[str, Any]) -> str:
    """A skipped, failed or missing run's cell."""
    if not r:
        return "not run"
    text = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error'].splitlines()[0][:150]}"
    return text.replace("|", "/")


def tokens_rows(res: Results, wl: Workload) -> tuple[list[str], list[str]]:
    """The tokens-per-second table's rows, and a line per base on the goal."""
    rows, goals, per_step = [], [], wl.batch * wl.seq_len

    def row(run: str, base: str, n: object, steps: int, sec: float, rate: float, ref: float | None) -> str:
        ratio = rate / ref if ref else None
        met = "–" if ratio is None or run == "plain peft loop" else ("yes" if ratio >= GOAL else "no")
        cells = [run, base, n, steps, f"{sec:.2f}", num(rate), num(ratio, "{:.2f}"), met]
        return "| " + " | ".join(map(str, cells)) + " |"

    for q in QUANTS:
        b, s, base = res.get(("baseline", q), {}), res.get(("strata", q), {}), label(q, wl)
        ref = b.get("rate")
        if ref is None:
            rows.append(f"| plain peft loop | {base} | – | – | – | {why(b)} | – | – | |")
        else:
            rows.append(row("plain peft loop", base, "–", b["steps"], b["seconds"], ref, ref) + " |")
        if not s.get("updates"):
            rows.append(f"| strata | {base} | – | – | – | {why(s)} | – | – | |")
            continue
        numbers, last = sorted({u["round"] for u in s["updates"]}), []
        for n in numbers:
            us = [u for u in s["updates"] if u["round"] == n]
            for u in us:
                rate = u["steps"] * per_step / u["seconds"]
                rows.append(row(f"strata {u['worker']}", base, n, u["steps"], u["seconds"], rate, ref) + " |")
                last += [rate / ref] if n == numbers[-1] and ref else []
            start, end = min(u["end"] - u["seconds"] for u in us), max(u["end"] for u in us)
            together = max(0.0, min(u["end"] for u in us) - max(u["end"] - u["seconds"] for u in us))
            steps = sum(u["steps"] for u in us)
            both = steps * per_step / (end - start)
            note = f" {together / (end - start):.0%} of the span with every worker training |"
            rows.append(row("strata, both workers", base, n, steps, end - start, both, ref) + note)
        if last and ref:
            ratios = ", ".join(f"{x:.2f}×" for x in last)
            goals.append(
                f"- {base}: in the last round each worker ran at {ratios} the plain loop's tokens/s: goal "
                f"≥ {GOAL}× {'met' if min(last) >= GOAL else 'not met'}; both workers together (one "
                f"{wl.device}): {both / ref:.2f}×"
            )
    return rows, goals


def memory_rows(res: Results, wl: Workload) -> list[str]:
    rows = []
    for q in QUANTS:
        b, s, base = res.get(("baseline", q), {}), res.get(("strata", q), {}), label(q, wl)
        if "rate" not in b:
            rows.append(f"| plain peft loop | {base} | – | {why(b)} |")
        elif wl.cuda:
            rows.append(
                f"| plain peft loop | {base} | {num(b['allocated'])} | torch.cuda.max_memory_allocated "
                f"(max_memory_reserved {num(b['reserved'])}) |"
            )
            how = "nvidia-smi used_memory of this process" if b["smi"] else "nvidia-smi: pid not listed"
            rows.append(f"| plain peft loop | {base} | {num(b['smi'])} | {how} |")
        else:
            rows.append(f"| plain peft loop | {base} | – | not measured on a CPU (in this process) |")
        if not s.get("updates"):
            rows.append(f"| strata | {base} | – | {why(s)} |")
            continue
        how = "nvidia-smi used_memory of the worker process" if wl.cuda else "VmHWM of the worker process"
        for worker in sorted({u["worker"] for u in s["updates"]}):
            mib = s["memory"].get(worker)
            rows.append(f"| strata {worker} | {base} | {num(mib)} | {how if mib else 'pid not listed'} |")
        if wl.cuda:
            device = num(s["device"])
            rows.append(
                f"| strata, both workers | {base} | {device} | the GPU's memory.used, peak − before |"
            )
    return rows


def environment(wl: Workload) -> list[str]:
    import peft
    import transformers

    from bench.gpu_check_runs import smi

    if wl.cuda:
        props = torch.cuda.get_device_properties(torch.device(wl.device))
        driver = next(iter(smi("--query-gpu=driver_version")), ["?"])[0]
        where = (
            f"{props.name}, {props.total_memory / 2**30:.1f} GiB, driver {driver}, CUDA {torch.version.cuda}"
        )
    else:
        where = f"CPU ({platform.processor() or platform.machine()})"
    return [
        f"- device: {where}; {os.cpu_count()} CPU cores",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"bitsandbytes {bitsandbytes()}, Python {platform.python_version()}",
    ]


def render(res: Results, facts: dict[str, Any], wl: Workload, command: str) -> str:
    params = facts.get("params", 0)
    size = f"a {params / 1e9:.2f}B-parameter LLaMA" if params > 1e8 else "a tiny LLaMA (smoke)"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"# GPU check: a LoRA federation on {size}", "", f"`{command}`, {when}", "", *environment(wl)]
    if "params" in facts:
        f = facts
        lines += [
            f"- model: LLaMA from a config, random weights, {f['params']:,} parameters ({f['shape']}), "
            f"{f['size'] / 1e6:,.1f} MB of safetensors, tokenizer of {f['vocab']} tokens (build_tokenizer on "
            f"generated text); built and saved in {f['build_s']:.0f} s, content-hashed once in "
            f"{f['hash_s']:.1f} s (every process is given that hash cache)",
            f"- workload: LoRA r={wl.rank}, alpha {wl.alpha:g}, dropout {wl.dropout:g} on "
            f"{','.join(wl.targets)}; batch {wl.batch} × {wl.seq_len} tokens (each text has at least "
            f"{f['shortest']} tokens, so every step trains on {wl.batch * wl.seq_len} non-padding tokens); "
            f"AdamW lr {wl.lr:g}; {wl.steps} steps per round, {wl.rounds} round(s), 2 workers on one "
            f"{wl.device}; {'bf16 autocast' if wl.cuda else 'fp32'}",
        ]
    tokens, goals = tokens_rows(res, wl)
    head = "| run | base | round | steps | seconds | tokens/s | × plain loop | ≥ 0.9× | note |"
    lines += ["", "## Tokens per second", "", head, "|---" * 9 + "|", *tokens, "", *goals]
    lines += [
        "",
        "## Peak memory",
        "",
        "| run | base | MiB | measured as |",
        "|---" * 4 + "|",
        *memory_rows(res, wl),
    ]
    head = "| base | round | state | bytes up | bytes down | raw up | raw down | round seconds |"
    lines += ["", "## Bytes per round", "", head, "|---" * 8 + "|"]
    for q in QUANTS:
        for r in res.get(("strata", q), {}).get("rounds", []):
            cells = [f"{r[k]:,}" for k in ("up", "down", "raw_up", "raw_down")]
            seconds = num(r["seconds"], "{:.1f}")
            lines.append(
                f"| {label(q, wl)} | {r['number']} | {r['state']} | {' | '.join(cells)} | {seconds} |"
            )
    lines += ["", "## How each number is measured", "", METHOD.rstrip()]
    for (run, q), r in res.items():
        if "error" in r:
            lines += ["", f"## Error: {run} {label(q, wl)}", "", "```", r["error"][-4000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    default = Path(tempfile.gettempdir()) / "gpu_check_smoke.md" if args.smoke else RESULTS / "gpu_check.md"
    out: Path = args.out or default
    if args.smoke and out.resolve() == (RESULTS / "gpu_check.md").resolve():
        print(
            "bench.gpu_check: --smoke never writes bench/results/gpu_check.md; give another --out",
            file=sys.stderr,
        )
        return 2
    cuda = device.startswith("cuda")
    if (not args.smoke and not cuda) or (cuda and not torch.cuda.is_available()):
        print(
            f"bench.gpu_check needs a CUDA GPU (device {device}; torch {torch.__version__} sees "
            f"{torch.cuda.device_count()} CUDA devices). On a CPU run `python -m bench.gpu_check --smoke`.",
            file=sys.stderr,
        )
        return 2
    if missing := missing_packages():
        print(f"bench.gpu_check: this Python lacks {', '.join(missing)}", file=sys.stderr)
        return 3
    from bench.gpu_check_runs import Workload, baseline, build_model, federation, make_data

    given = {k: getattr(args, k) for k in FULL if getattr(args, k) is not None}
    wl = Workload(device, **((SMOKE if args.smoke else FULL) | given))
    # the coordinator and worker processes import this checkout and find its `strata` commands
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    bnb = bitsandbytes()
    no_4bit = (
        "--no-4bit" if args.no_4bit
        else "a CPU cannot quantize (QLoRA needs CUDA)" if not wl.cuda
        else "" if bnb[:1].isdigit() else f"bitsandbytes {bnb}"
    )  # fmt: skip
    res: Results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work, started = Path(tmp), time.monotonic()
        data, texts = make_data(work, wl)
        model, hashes = work / "model", work / "base-hashes.json"
        facts = attempt("building the model", build_model, model, texts, wl, args.smoke)
        if "error" in facts:
            res[("model", "")] = facts
        else:
            from strata.base_model import checkpoint_hash

            facts["build_s"], started = time.monotonic() - started, time.monotonic()
            checkpoint_hash(model, cache=hashes)
            facts["hash_s"] = time.monotonic() - started
            say(f"model: {facts['params']:,} parameters, {facts['size'] / 1e6:,.1f} MB, hashed")
            rows = (data[0] / "train.jsonl").read_text().splitlines()
            train = [json.loads(line)["text"] for line in rows]
            for q in QUANTS:
                if q and no_4bit:
                    res[("baseline", q)] = res[("strata", q)] = {"skipped": no_4bit}
                    continue
                what = f"plain peft loop, {label(q, wl)} base"
                res[("baseline", q)] = attempt(what, baseline, model, train, wl, q)
            for q in QUANTS:
                if ("strata", q) not in res:
                    name = f"gpu-check-{label(q, wl)}"
                    args_ = (name, work, model, data, wl, q, hashes)
                    res[("strata", q)] = attempt(f"federation {name}", federation, *args_)
    text = render(res, facts, wl, "python -m bench.gpu_check " + shlex.join(argv))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    say(f"report written to {out}")
    return 1 if any("error" in r for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
