"""The math of federations of federations (`docs/methods.md` section 5): which blocks a parent keeps as
key blocks, the attention weights that combine its members' key-block deltas, the combination itself,
and the residual a member keeps of its own key blocks after a synchronisation. Pure functions: the
caller supplies the per-member cosines the divergence pass already measures (section 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from strata.layers import BlockMap


def key_blocks(spec: str | Sequence[str], bmap: BlockMap) -> tuple[str, ...]:
    """Resolve a parent's `--local-blocks` setting into block names, in model order, without duplicates.

    `spec` is a list of block names or a comma-separated string of them (each must be a block of `bmap`),
    or `"top:N"`: the task-head block(s) (kind "head") plus the N highest-index blocks of kind "layer".
    An empty string or list gives (). With GPT-2's tied LM head, the output matrix is the embeddings'
    `wte` and belongs to the "embeddings" block: the "head" block holds only what is left (GPT-2's final
    layer norm), so top:N takes that and the N highest layers, not the output matrix (name
    "embeddings" to include it). A map with no "head" block at all gives just the N highest layers.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    if not items:
        return ()
    tops = [s for s in items if s.startswith("top:")]
    if tops:
        if len(items) > 1:
            raise ValueError(f"top:N cannot be combined with other block names, got {', '.join(items)}")
        raw = tops[0][len("top:") :].strip()
        if not raw.isdigit():
            raise ValueError(f"top:N needs a whole number N >= 0, got {tops[0]!r}")
        n = int(raw)
        layers = sorted((b for b in bmap.blocks if b.kind == "layer"), key=lambda b: b.index)
        if n > len(layers):
            raise ValueError(f"top:{n} asks for {n} layers, but this model has {len(layers)} layer blocks")
        wanted = {b.name for b in bmap.blocks if b.kind == "head"}
        wanted.update(b.name for b in layers[len(layers) - n :])
    else:
        valid = bmap.names
        unknown = [s for s in items if s not in valid]
        if unknown:
            raise ValueError(
                f"no block(s) {', '.join(unknown)} in this model; its blocks are {', '.join(valid)}"
            )
        wanted = set(items)
    return tuple(name for name in bmap.names if name in wanted)


def attention_weights(
    samples: Sequence[float], cosines: Sequence[float | None], temperature: float
) -> list[float]:
    """α_c = n_c·exp(τ·cos_c) / Σ_j n_j·exp(τ·cos_j) for one key block.

    A cosine of None (the member's update of the block is zero, so its cosine is undefined) counts as 0.
    The largest exponent among members with n_c > 0 is subtracted before exp, so a large τ cannot
    overflow; τ = 0 gives exactly n_c / Σ n.
    """
    if len(samples) != len(cosines):
        raise ValueError(f"{len(samples)} sample counts but {len(cosines)} cosines")
    if any(not math.isfinite(n) or n < 0 for n in samples):
        raise ValueError(f"sample counts must be finite and >= 0, got {list(samples)}")
    total = math.fsum(samples)
    if total <= 0:
        raise ValueError("sample counts must have a positive sum")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature}")
    cos = [0.0 if c is None else float(c) for c in cosines]
    if any(not math.isfinite(c) for c in cos):
        raise ValueError(f"cosines must be finite or None, got {list(cosines)}")
    if temperature == 0:
        return [n / total for n in samples]
    logits = [temperature * c for c in cos]
    top = max(z for z, n in zip(logits, samples, strict=True) if n > 0)
    raw = [n * math.exp(z - top) if n > 0 else 0.0 for z, n in zip(logits, samples, strict=True)]
    norm = math.fsum(raw)  # >= 1·min positive n: the member at `top` contributes n·exp(0)
    return [w / norm for w in raw]


def mix_residual(local: torch.Tensor, shared: torch.Tensor, keep: float) -> torch.Tensor:
    """K ← κ' + β·(K − κ'): the member keeps the share β = `keep` of its deviation from the shared copy.

    Computed in float64 and cast to `shared.dtype`. The endpoints are exact: β = 0 returns a copy of
    `shared`, β = 1 a copy of `local` (in `shared.dtype`).
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"the residual share β must be in [0, 1], got {keep}")
    if local.shape != shared.shape:
        raise ValueError(f"local shape {tuple(local.shape)} differs from shared {tuple(shared.shape)}")
    if keep == 0.0:
        return shared.detach().clone()
    if keep == 1.0:
        return local.detach().to(dtype=shared.dtype, copy=True)
    s = shared.detach().to(torch.float64)
    mixed = s + keep * (local.detach().to(device=s.device, dtype=torch.float64) - s)
    return mixed.to(shared.dtype)


def weighted_combination(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ_c w_c·Δ_c, accumulated in float64 and returned in the dtype of the first delta (κ ← κ + Σ α_c Δ_c
    takes the attention weights as `weights`)."""
    if not deltas:
        raise ValueError("no deltas to combine")
    if len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} deltas but {len(weights)} weights")
    if any(not math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite, got {list(weights)}")
    first = deltas[0]
    acc = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
    for d, w in zip(deltas, weights, strict=True):
        if d.shape != first.shape:
            raise ValueError(f"delta shapes differ: {tuple(d.shape)} and {tuple(first.shape)}")
        acc += float(w) * d.detach().to(device=first.device, dtype=torch.float64)
    return acc.to(first.dtype)
