"""Local attention windows in a model's early layers (the divergence-aware design of docs/methods.md,
section "Divergence-aware design").

In the first `layers` transformer layers a token attends only to the tokens at most `window` positions
away; later layers attend to the whole sequence as before. The setting lives in the model's config
(``strata_local_attention = {"layers": n, "window": w}``), so it travels with the assets the coordinator
sends, and every load through `strata.modeling` (coordinator, worker, export) applies it the same way:
a federation cannot have one member with windows and another without.

It is a mask, not a new architecture: the weights are the same tensors, so a pretrained checkpoint can
be given windows (``strata model adapt``) and fine-tuned with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

CONFIG_KEY = "strata_local_attention"
#: families whose layer i self-attention is ``<base>.encoder.layer[i].attention.self``
FAMILIES = ("bert", "roberta", "xlm-roberta", "electra")
_HOOKED = "_strata_local_attention_hook"


@dataclass(frozen=True, slots=True)
class LocalAttention:
    layers: int  # the first `layers` transformer layers are windowed
    window: int  # a token attends to positions i − window … i + window

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"local attention needs at least one layer, got {self.layers}")
        if self.window < 1:
            raise ValueError(f"the attention window must be at least 1 token, got {self.window}")

    def as_config(self) -> dict[str, int]:
        return {"layers": self.layers, "window": self.window}


def from_config(config: Any) -> LocalAttention | None:
    """The windows a model config asks for, or None (the key absent or null)."""
    raw = getattr(config, CONFIG_KEY, None)
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != {"layers", "window"}:
        raise ValueError(f"config {CONFIG_KEY} must be {{'layers': n, 'window': w}}, got {raw!r}")
    return LocalAttention(int(raw["layers"]), int(raw["window"]))


def band(length: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, length) bool: True where |i − j| ≤ window (pure)."""
    pos = torch.arange(length, device=device)
    return (pos[:, None] - pos[None, :]).abs() <= window


def windowed_mask(mask: torch.Tensor | None, length: int, window: int, dtype: torch.dtype) -> torch.Tensor:
    """The layer's attention mask with everything outside the window masked too.

    `mask` is what transformers hands a self-attention layer: None (attend everywhere), a boolean mask
    (True: attend) or an additive float mask (0: attend, a large negative number: do not), broadcastable
    to (batch, heads, query, key). The result has the same kind; for None an additive mask of `dtype`
    (which both the eager and the sdpa attention take). A position always keeps itself, so a
    padding query (whose keys are all masked) still has one finite score and no row turns NaN.
    """
    device = mask.device if mask is not None else None
    local = band(length, window, device)
    eye = torch.eye(length, dtype=torch.bool, device=device)
    if mask is not None and mask.dtype == torch.bool:
        return (mask & local) | eye
    kind = mask.dtype if mask is not None else dtype
    lowest = torch.finfo(kind).min
    allowed = (local if mask is None else (mask > lowest / 2) & local) | eye
    return torch.where(allowed, torch.zeros((), dtype=kind), torch.tensor(lowest, dtype=kind))[
        (None, None) if mask is None else ()
    ]


def _layers(model: Any) -> list[torch.nn.Module]:
    family = getattr(model.config, "model_type", "")
    if family not in FAMILIES:
        raise ValueError(
            f"local attention windows support the {', '.join(FAMILIES)} families, not {family!r}"
            + (" (its layers share one set of weights)" if family == "albert" else "")
        )
    base = getattr(model, "base_model", model)
    return [layer.attention.self for layer in base.encoder.layer]


def apply(model: Any, spec: LocalAttention | None = None) -> LocalAttention | None:
    """Window the early layers of `model` as `spec` (default: its config's) says; idempotent.

    Records the spec in the config (so saved assets carry it). Returns the spec applied, or None.
    """
    spec = spec if spec is not None else from_config(model.config)
    if spec is None:
        return None
    if model.config._attn_implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"local attention windows need the eager or sdpa attention, not {model.config._attn_implementation!r}"
        )
    layers = _layers(model)
    if spec.layers > len(layers):
        raise ValueError(f"local attention in {spec.layers} layers, but the model has {len(layers)}")
    for i, attn in enumerate(layers):
        old = getattr(attn, _HOOKED, None)
        if old is not None:
            old.remove()
            delattr(attn, _HOOKED)
        if i < spec.layers:
            setattr(attn, _HOOKED, attn.register_forward_pre_hook(_hook(spec.window), with_kwargs=True))
    setattr(model.config, CONFIG_KEY, spec.as_config())
    return spec


def _hook(window: int) -> Any:
    def pre_hook(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = args[0] if args else kwargs["hidden_states"]
        length = hidden.shape[1]
        if len(args) > 1:
            mask = windowed_mask(args[1], length, window, hidden.dtype)
            return (args[0], mask, *args[2:]), kwargs
        kwargs["attention_mask"] = windowed_mask(kwargs.get("attention_mask"), length, window, hidden.dtype)
        return args, kwargs

    return pre_hook
