"""`strata adapt`: write a model directory changed for federated fine-tuning, for the coordinator's --model.

    strata adapt SRC OUT [--ffn-width 2] [--local-attention-layers 2 --local-attention-window 8]
                         [--keep-layers 0,2,4 | --every-other-layer] [--albert] [--labels a,b,...]

--ffn-width widens every feed-forward layer by that factor without changing what the model computes
(Net2Net); --local-attention-* restricts attention in the first layers to a window of tokens (recorded in
the config, so every member applies it); --keep-layers / --every-other-layer make a shallower student
from a checkpoint the way DistilBERT was made from BERT; --albert converts a BERT to the ALBERT
architecture (for a study where no ALBERT checkpoint is at hand). The tokenizer is copied unchanged. See
docs/methods.md, "Divergence-aware design".
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from strata import adapt
from strata.attention_window import LocalAttention


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "adapt",
        help="write a wider, windowed or shallower copy of a model directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", type=Path, help="transformers model directory (config.json, weights, tokenizer)")
    p.add_argument("out", type=Path, help="where to write the adapted model (must not exist)")
    p.add_argument("--ffn-width", type=float, default=1.0, help="feed-forward width factor (≥ 1; default 1)")
    p.add_argument("--local-attention-layers", type=int, default=0, help="windowed early layers (0: none)")
    p.add_argument("--local-attention-window", type=int, default=0, help="tokens either side a token sees")
    p.add_argument("--keep-layers", default="", help="comma-separated layer indices to keep, in order")
    p.add_argument("--every-other-layer", action="store_true", help="keep layers 0, 2, 4, …")
    p.add_argument(
        "--albert",
        action="store_true",
        help="convert to the ALBERT architecture (one layer shared by every depth; its weights the mean of the layers)",
    )
    p.add_argument("--labels", default="", help="comma-separated class names (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="seeds the widening's split and a new head")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = check(args)
    except ValueError as exc:
        print(f"strata adapt: {exc}", file=sys.stderr)
        return 2
    from strata.modeling import load_model, read_labels_from_config

    labels = [x for x in args.labels.split(",") if x] or read_labels_from_config(args.src)
    if not labels:
        print("strata adapt: the model's config names no classes: pass --labels", file=sys.stderr)
        return 2
    try:
        model, tokenizer = load_model(args.src, labels, seed=args.seed)
        keep = adapt.every_other(model.config.num_hidden_layers) if args.every_other_layer else spec[0]
        if keep:
            adapt.keep_layers(model, keep)
        if args.ffn_width > 1:
            adapt.widen_ffn(model, args.ffn_width, seed=args.seed)
        if args.albert:
            model = adapt.to_albert(model)
        if spec[1] is not None:
            adapt.add_local_attention(model, spec[1].layers, spec[1].window)
    except (ValueError, FileNotFoundError) as exc:
        print(f"strata adapt: {exc}", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(args.out)  # all or nothing: a killed run leaves no half-written model under OUT
    print(
        f"wrote {args.out}: {model.config.num_hidden_layers} layers, feed-forward {model.config.intermediate_size}, "
        f"local attention {getattr(model.config, 'strata_local_attention', None) or 'none'}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    return 0


def check(args: argparse.Namespace) -> tuple[list[int], LocalAttention | None]:
    """The layers to keep and the windows asked for; ValueError on a contradiction (pure)."""
    if args.out.exists():
        raise ValueError(f"{args.out} exists: choose a new folder")
    if args.ffn_width < 1:
        raise ValueError(f"--ffn-width must be at least 1, got {args.ffn_width:g}")
    keep = [int(x) for x in args.keep_layers.split(",") if x.strip()] if args.keep_layers else []
    if keep and args.every_other_layer:
        raise ValueError("--keep-layers and --every-other-layer contradict each other: choose one")
    if args.albert and args.local_attention_layers:
        raise ValueError("ALBERT shares one layer across depths: it cannot window only the early ones")
    if bool(args.local_attention_layers) != bool(args.local_attention_window):
        raise ValueError("--local-attention-layers and --local-attention-window go together")
    windows = (
        LocalAttention(args.local_attention_layers, args.local_attention_window)
        if args.local_attention_layers
        else None
    )
    return keep, windows
