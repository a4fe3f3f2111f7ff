"""The layer map: a transformers model's parameters grouped into blocks, the unit of layer selection and
of per-layer reporting (embeddings, each transformer layer, pooler, task head).

Known families (model_type): BERT-like encoders (bert, roberta, xlm-roberta, electra), DistilBERT,
ALBERT (whose layers share weights: one block per shared layer group), GPT-2 and LLaMA-style causal
LMs (llama, mistral, qwen2, gemma), and LoRA adapters made with peft (one block per adapted layer).

Fallback rule, for any other architecture (the map says so in `fallback` and `note`): a tensor whose
name contains `.<container>.<i>.`, with container one of layer, layers, h, block, blocks, belongs to
layer i; a name containing "embed" or "wte"/"wpe" to the embeddings; "pooler" to the pooler;
everything else to the head.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from strata.adapters import travels

log = logging.getLogger("strata")

KNOWN = {
    "bert": "encoder",
    "roberta": "encoder",
    "xlm-roberta": "encoder",
    "electra": "encoder",
    "distilbert": "encoder",
    "albert": "albert",
    "gpt2": "causal",
    "llama": "causal",
    "mistral": "causal",
    "qwen2": "causal",
    "gemma": "causal",
}
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_ALBERT_GROUP = re.compile(r"\.albert_layer_groups\.(\d+)\.")
_LORA = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.")
_EMBED = ("embed", ".wte.", ".wpe.", "embedding_hidden_mapping_in")

ORDER = {"embeddings": 0, "layer": 1, "pooler": 2, "head": 3}


@dataclass(frozen=True, slots=True)
class Block:
    """A unit of selection: `name` is "embeddings", "layer.<i>", "pooler" or "head"."""

    name: str
    kind: str
    index: int
    tensors: tuple[str, ...]

    @property
    def is_head(self) -> bool:
        return self.kind == "head"


@dataclass(frozen=True)
class BlockMap:
    """Blocks in model order, and the block of every tensor."""

    family: str
    blocks: tuple[Block, ...]
    block_of: Mapping[str, str]
    fallback: bool = False
    note: str = ""
    sizes: Mapping[str, int] = field(default_factory=dict)  # block -> number of elements

    def __getitem__(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r}; blocks are {', '.join(b.name for b in self.blocks)}")

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def tensors_of(self, blocks: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for name in blocks:
            out.update(self[name].tensors)
        return out


def classify(name: str, family: str) -> tuple[str, int]:
    """(kind, index) of one parameter name under a family's rule (pure; table-tested)."""
    padded = "." + name
    if family == "albert" and (m := _ALBERT_GROUP.search(padded)):
        return "layer", int(m.group(1))
    if m := _LAYER.search(padded):
        return "layer", int(m.group(1))
    if any(e in padded for e in _EMBED):
        return "embeddings", 0
    if "pooler" in name:
        return "pooler", 0
    return "head", 0


def block_map(model: torch.nn.Module, trainable_only: bool = False) -> BlockMap:
    """Group the model's parameters (tied weights once) into blocks.

    With LoRA adapters (peft), only adapter tensors and the modules trained whole form blocks (frozen base
    weights never travel; strata.adapters.travels). `trainable_only` likewise keeps only tensors that require grad.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "") or ""
    params = list(model.named_parameters())
    lora = any(_LORA.search("." + n) for n, _ in params)
    if lora:  # the adapters and the modules trained whole: what travels, whatever trains this round
        params = [(n, p) for n, p in params if travels(n)]
    elif trainable_only:
        params = [(n, p) for n, p in params if p.requires_grad]
    family = KNOWN.get(model_type, "")
    fallback = not family
    note = ""
    if fallback:
        note = (
            f"model type {model_type or 'unknown'!r} has no layer map of its own: blocks follow the fallback "
            "rule (layer index from '.layer(s)/h/block(s).<i>.', embeddings, pooler, the rest in the head)"
        )
        log.warning(note)
    grouped: dict[tuple[str, int], list[str]] = {}
    sizes: dict[str, int] = {}
    for name, _ in params:
        kind, index = classify(name, family)
        grouped.setdefault((kind, index), []).append(name)
    blocks = []
    block_of: dict[str, str] = {}
    numel = {n: p.numel() for n, p in params}
    for (kind, index), names in sorted(grouped.items(), key=lambda kv: (ORDER[kv[0][0]], kv[0][1])):
        bname = f"layer.{index}" if kind == "layer" else kind
        blocks.append(Block(bname, kind, index, tuple(names)))
        sizes[bname] = sum(numel[n] for n in names)
        for n in names:
            block_of[n] = bname
    label = f"{model_type or 'unknown'}{'+lora' if lora else ''}"
    return BlockMap(label, tuple(blocks), block_of, fallback, note, sizes)


def set_trainable(model: torch.nn.Module, bmap: BlockMap, blocks: Iterable[str]) -> int:
    """Train exactly `blocks` (empty: every block): requires_grad is set True on their tensors and False on
    every other tensor of the map, so frozen ones get no gradient and no optimizer state. Tensors outside
    the map (a LoRA model's frozen base) are left alone. Returns the number of trainable elements."""
    wanted = set(blocks)
    unknown = wanted - set(bmap.names)
    if unknown:
        raise ValueError(
            f"no block(s) {', '.join(sorted(unknown))} in this model; its blocks are {', '.join(bmap.names)}"
        )
    wanted = wanted or set(bmap.names)
    count = 0
    for name, p in model.named_parameters():
        block = bmap.block_of.get(name)
        if block is not None:
            p.requires_grad_(block in wanted)
            count += p.numel() if block in wanted else 0
    return count
