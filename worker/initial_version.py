"""Version 0 of a full fine-tuning federation built on the worker from its own copy of the pretrained
checkpoint (`--base-model`), so round 1 downloads nothing: the checkpoint is loaded exactly as the
coordinator loaded it (torch seeded with the federation's seed, which draws the new head), and the build
is used only if its tensors hash to the federation's version 0 and its config and tokenizer files to the
coordinator's. Anything else (another checkpoint, another transformers version that initialises the head
differently) falls back to downloading version 0, with a warning saying why."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from strata.layers import block_map
from strata.member.replica import Replica
from strata.modeling import global_tensors, load_model, save_assets, write_assets
from strata.proto.v1 import coordinator_pb2 as pb
from strata.version import assets_hash, model_hash
from worker import base_download

log = logging.getLogger("strata.worker")


def build(reply: pb.JoinReply, base_model: str, assets: Path, device: str) -> Replica | None:
    """The replica at version 0 built from `base_model` (a folder or hf:ORG/NAME), its assets written to
    `assets`; None (logged) when it is not bit-identical to the federation's version 0."""
    if not reply.initial_hash:
        log.warning(
            "the coordinator does not announce its version 0 (a LoRA federation or an older coordinator)"
        )
        return None
    folder = base_download.local_folder(base_model)
    model, tokenizer = load_model(
        folder, list(reply.labels), seed=reply.init_seed, task=reply.task_kind or "sequence-classification"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = save_assets(model, tokenizer, tmp)
    if assets_hash(files) != reply.assets_hash:
        log.warning(
            "base_model: %s's config or tokenizer files differ from the federation's; downloading version 0",
            folder,
        )
        return None
    found = model_hash(global_tensors(model))
    if found != reply.initial_hash:
        log.warning(
            "base_model: %s builds a version 0 hashing to %s, not the federation's %s (another checkpoint, or "
            "a head drawn differently); downloading version 0",
            folder,
            found[:12],
            reply.initial_hash[:12],
        )
        return None
    write_assets(files, assets)  # the files just checked, not a second save_pretrained
    model.to(device)  # type: ignore[arg-type]
    log.info("built version 0 from %s (hash %s): round 1 downloads nothing", folder, found[:12])
    return Replica(model, tokenizer, block_map(model), device)
