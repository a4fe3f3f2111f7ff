"""`strata export`: a federation's model version as folders that transformers and peft load as they are:
`model/` (the full model; a LoRA federation's adapters merged into its base) and, for a LoRA federation,
`adapter/` (a peft adapter folder: adapter_config.json and adapter_model.safetensors), with the tokenizer
in each and `export.json` saying what was exported. The folder appears whole or not at all."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from coordinator.settings import CoordinatorSettings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export",
        help="write a federation's model as transformers (and peft adapter) folders",
        description="Write a version of a federation's model as a transformers model folder (model/) and, for a "
        "LoRA federation, a peft adapter folder (adapter/). Reads the coordinator's settings: its --config file "
        "or STRATA_COORDINATOR_* variables, overridden by the flags below.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    p.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    p.add_argument("--config", metavar="FILE", help="the coordinator's TOML config file")
    p.add_argument("--federation", default=None, help="federation name")
    p.add_argument("--database-url", dest="database_url", default=None, help="the coordinator's database")
    p.add_argument("--data-dir", dest="data_dir", default=None, help="the coordinator's data folder")
    p.add_argument("--model", default=None, help="the base model folder the federation was created with")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("federation", "database_url", "data_dir", "model")}
    settings = CoordinatorSettings.load(overrides, args.config)
    try:
        info = export(settings, args.out, args.version)
    except (ValueError, FileNotFoundError, FileExistsError, LookupError) as exc:
        print(f"strata export: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1))
    return 0


def export(s: CoordinatorSettings, out: Path, version: int | None = None) -> dict[str, Any]:
    """Write version `version` (default: the latest recorded) of the federation to `out`; returns what
    `export.json` holds."""
    # imported here: `strata` loads every command's module to build its parser, and torch would slow them all
    from coordinator import checkpoint
    from coordinator.store import Store
    from strata import atomic
    from strata.adapters import LoraSpec, wrap
    from strata.base_model import checkpoint_hash
    from strata.modeling import global_tensors, load_model, load_tensors
    from strata.version import model_hash

    if out.exists():
        raise FileExistsError(f"{out} exists; give --out a folder that does not")
    if s.model is None:
        raise ValueError("model: the base model folder the federation was created with is needed (--model)")
    store = Store(s.database_url)
    fed = store.federation_by_name(s.federation)
    if fed is None:
        raise LookupError(f"no federation {s.federation!r} in {s.database_url.split('@')[-1]}")
    version = fed.model_version if version is None else version
    ckpt_dir = s.data_dir / "checkpoints" / s.federation
    if not checkpoint.exists(ckpt_dir, version):
        raise FileNotFoundError(f"version {version} of {s.federation} has no checkpoint in {ckpt_dir}")
    config = fed.config or {}
    labels = list(config.get("labels") or [])
    model, tokenizer = load_model(s.model, labels, task=fed.task_kind)
    design: dict[str, Any] = {
        k: config[k] for k in ("ffn_width", "local_attention_layers", "local_attention_window") if k in config
    }
    model = s.model_copy(update=design).apply_design(model)  # the federation's shapes and windows
    lora = config.get("lora")
    spec = None
    if lora:
        spec = LoraSpec.from_record(lora)
        found = checkpoint_hash(s.model, cache=s.data_dir / "base-hashes.json")
        if found != spec.base_hash:
            raise ValueError(
                f"model: {s.model} hashes to {found[:12]}, not the federation's base {spec.base_hash[:12]}; "
                "give --model the base model the federation was created with"
            )
        model = wrap(model, spec, fed.task_kind)  # type: ignore[assignment]
    load_tensors(model, checkpoint.load(ckpt_dir, version))
    h = model_hash(global_tensors(model))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if spec is not None:
        model.save_pretrained(tmp / "adapter")
        tokenizer.save_pretrained(tmp / "adapter")
        model = model.merge_and_unload()  # type: ignore[operator]
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    info = {
        "federation": s.federation,
        "version": version,
        "hash": h,
        "task": fed.task_kind,
        "base_model": str(s.model),
        "lora": lora or None,
    }
    atomic.write_bytes(tmp / "export.json", json.dumps(info, indent=1).encode())
    tmp.rename(out)
    atomic.fsync_dir(out.parent)
    return info
