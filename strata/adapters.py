"""LoRA adapters (peft) for a federation: the adapter a federation trains, wrapping a base model with it,
and which tensors travel (the adapters, plus the task head a classifier trains whole).

A LoRA federation fixes its adapter when it is created (`LoraSpec`): rank r, alpha (the scale is
alpha / r), dropout, the modules that get an adapter (a default per model family) and the modules trained
whole (a classifier's head). The frozen base model never travels in a round: workers hold it and check it
by the content hash of its checkpoint (`strata.base_model`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from strata.lora_spec import DEFAULT_TARGETS, LoraSpec
from strata.names import ALL_LINEAR, LORA_AGGREGATIONS

AGGREGATIONS = LORA_AGGREGATIONS
_TRAVELS = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.|\.modules_to_save\.")
_LORA_A = ".lora_A."
_LORA_B = ".lora_B."


def travels(name: str) -> bool:
    """Whether a tensor of a LoRA model travels: an adapter factor or a module trained whole."""
    return bool(_TRAVELS.search("." + name))


def is_adapted(model: torch.nn.Module) -> bool:
    """Whether the model carries LoRA adapters (peft)."""
    return any(_LORA_A in "." + n for n, _ in model.named_parameters())


def pairs(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{adapted module: (its lora_A tensor, its lora_B tensor)} among `names` (pure)."""
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        if _LORA_A in name:
            module = name.split(_LORA_A)[0]
            partner = name.replace(_LORA_A, _LORA_B)
            if partner in names:
                out[module] = (name, partner)
    return out


def linear_names(model: torch.nn.Module) -> list[str]:
    """The distinct last components of the model's linear (and GPT-2 Conv1D) modules' names."""
    out: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            out.add(name.rsplit(".", 1)[-1])
    return sorted(out)


def resolve_targets(model: torch.nn.Module, requested: Sequence[str]) -> tuple[str, ...]:
    """The target modules: `requested`, checked to name a module of the model, or the family's default.

    ValueError naming the setting and the model's linear modules when a target matches nothing or the
    family has no default."""
    model_type = getattr(getattr(model, "config", None), "model_type", "") or "unknown"
    linear = linear_names(model)
    if not requested:
        if model_type not in DEFAULT_TARGETS:
            raise ValueError(
                f"lora_targets: model type {model_type!r} has no default adapter targets; name the modules "
                f"(its linear modules are {', '.join(linear)}) or use {ALL_LINEAR}"
            )
        return DEFAULT_TARGETS[model_type]
    if tuple(requested) == (ALL_LINEAR,):
        return (ALL_LINEAR,)
    names = {n for n, _ in model.named_modules()}
    missing = [t for t in requested if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"lora_targets: {', '.join(missing)} names no module of this {model_type} model; its linear "
            f"modules are {', '.join(linear)} (or use {ALL_LINEAR})"
        )
    return tuple(requested)


def head_modules(model: torch.nn.Module, head_tensors: Sequence[str]) -> tuple[str, ...]:
    """The modules holding a classifier's head tensors (the "head" block), trained and sent whole."""
    return tuple(sorted({t.rsplit(".", 1)[0] for t in head_tensors if "." in t}))


def wrap(model: torch.nn.Module, spec: LoraSpec, task: str, rank: int | None = None) -> torch.nn.Module:
    """The model with the federation's adapter (peft), at `rank` (a worker's own, ≤ the federation's) or
    the federation's. Every base weight is frozen; the adapters and `modules_to_save` train. The scale is
    alpha / spec.rank whatever the rank, so a lower-rank adapter is a truncation of the federation's."""
    import peft

    r = rank or spec.rank
    if r > spec.rank:
        raise ValueError(
            f"lora_rank: {r} is above the federation's rank {spec.rank}; use at most {spec.rank}"
        )
    targets: str | list[str] = ALL_LINEAR if spec.targets == (ALL_LINEAR,) else list(spec.targets)
    config = peft.LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft takes a float too
        lora_dropout=spec.dropout,
        target_modules=targets,
        modules_to_save=list(spec.modules_to_save) or None,
        bias="none",
        task_type=peft.TaskType.CAUSAL_LM if task != "sequence-classification" else peft.TaskType.SEQ_CLS,
    )
    wrapped = peft.get_peft_model(model, config)  # type: ignore[arg-type]
    return wrapped


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA model that travel, by name, detached."""
    return {n: p.detach() for n, p in model.named_parameters() if travels(n)}


class RankMask:
    """Train the federation's adapter as one of a lower rank: inside the block, the factors past `rank`
    (columns of B, rows of A) are zero and their gradients zeroed on every step, so the model computes
    exactly a rank-`rank` adapter; on leaving, they get back the values they had, so the delta of a
    truncated factor is zero past the rank (the coordinator reads the update at the worker's rank)."""

    def __init__(self, model: torch.nn.Module, rank: int) -> None:
        self.model, self.rank = model, rank
        self.saved: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> RankMask:
        for name, p in self.model.named_parameters():
            a, b = _LORA_A in "." + name, _LORA_B in "." + name
            if not (a or b) or (p.shape[0] if a else p.shape[1]) <= self.rank:
                continue
            # frozen factors too (blocks this round does not train): the whole model is rank `rank`
            tail = p.detach()[self.rank :] if a else p.detach()[:, self.rank :]
            self.saved.append((p, tail.clone(), a))
            with torch.no_grad():
                tail.zero_()
            if p.requires_grad:
                mask = torch.ones_like(p)
                (mask[self.rank :] if a else mask[:, self.rank :]).zero_()
                self.hooks.append(p.register_hook(lambda g, m=mask: g * m))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.hooks:
            h.remove()
        with torch.no_grad():
            for p, tail, a in self.saved:
                (p[self.rank :] if a else p[:, self.rank :]).copy_(tail)
        self.hooks.clear()
        self.saved.clear()
