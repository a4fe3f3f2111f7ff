"""Model surgery that keeps what a checkpoint has learnt: wider feed-forward layers (Net2Net), a student
with every other layer (as DistilBERT was made from BERT), and local attention windows in the early
layers (`strata.attention_window`). ``strata adapt`` applies them to a model directory; the coordinator
then serves the result like any other model.

Widening is function-preserving: the new hidden units of a feed-forward layer copy existing ones, and
each original unit's outgoing weights are split among its copies in random proportions that sum to one,
so the wider model computes exactly what the narrower one did, and its copies (whose gradients differ
through those proportions) drift apart in training instead of staying twins. A wider layer takes
smaller steps per unit for the same change of its function, the "lazier" updates of the
divergence-aware design (docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from strata import attention_window

WIDEN_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra")


def _encoder_layers(model: Any, what: str) -> Any:
    family = getattr(model.config, "model_type", "")
    if family not in WIDEN_FAMILIES:
        raise ValueError(f"{what} supports the {', '.join(WIDEN_FAMILIES)} families, not {family!r}")
    base = getattr(model, "base_model", model)
    layers: Any = base.encoder.layer
    return layers


def widen_plan(width: int, new_width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, share) of a layer widened from `width` to `new_width` units (pure; seeded).

    Unit j of the wide layer copies unit source[j] (the first `width` are the originals); its outgoing
    weights are scaled by share[j], and the shares of every original's copies sum to one.
    """
    if new_width < width:
        raise ValueError(f"cannot widen {width} units to {new_width}")
    gen = torch.Generator().manual_seed(seed)
    extra = torch.randint(0, width, (new_width - width,), generator=gen)
    source = torch.cat([torch.arange(width), extra])
    raw = 0.5 + torch.rand(new_width, generator=gen, dtype=torch.float64)  # in [0.5, 1.5)
    totals = torch.zeros(width, dtype=torch.float64).index_add_(0, source, raw)
    return source, (raw / totals[source]).to(torch.float32)


def widen_ffn(model: Any, factor: float, seed: int = 0) -> int:
    """Widen every feed-forward layer by `factor` (≥ 1), keeping the model's function. Returns the new
    intermediate size and records it in the config."""
    if factor < 1:
        raise ValueError(f"the feed-forward width factor must be at least 1, got {factor:g}")
    layers = _encoder_layers(model, "widening")
    width = int(model.config.intermediate_size)
    new_width = round(width * factor)
    for i, layer in enumerate(layers):
        up: torch.nn.Linear = layer.intermediate.dense
        down: torch.nn.Linear = layer.output.dense
        source, share = widen_plan(width, new_width, seed + i)
        wide_up = torch.nn.Linear(up.in_features, new_width, dtype=up.weight.dtype)
        wide_down = torch.nn.Linear(new_width, down.out_features, dtype=down.weight.dtype)
        with torch.no_grad():
            wide_up.weight.copy_(up.weight[source])
            wide_up.bias.copy_(up.bias[source])
            wide_down.weight.copy_(down.weight[:, source] * share.to(down.weight.dtype))
            wide_down.bias.copy_(down.bias)
        layer.intermediate.dense, layer.output.dense = wide_up, wide_down
    model.config.intermediate_size = new_width
    return new_width


def keep_layers(model: Any, keep: Sequence[int]) -> None:
    """Keep only the transformer layers `keep` (in that order), e.g. 0, 2, 4: the student initialisation
    DistilBERT used (one layer of two from its teacher). Records the depth in the config."""
    layers = _encoder_layers(model, "dropping layers")
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < len(layers) for i in keep):
        raise ValueError(f"layers to keep must be distinct indices in 0..{len(layers) - 1}, got {list(keep)}")
    base = getattr(model, "base_model", model)
    base.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(base.encoder.layer):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.config.num_hidden_layers = len(keep)


def every_other(depth: int) -> list[int]:
    """0, 2, 4, …: the layers a DistilBERT-style student keeps of a `depth`-layer teacher."""
    return list(range(0, depth, 2))


def add_local_attention(model: Any, layers: int, window: int) -> None:
    attention_window.apply(model, attention_window.LocalAttention(layers, window))


def to_albert(model: Any) -> Any:
    """An ALBERT-architecture classifier (one transformer layer shared by every depth) made from a BERT
    classifier: embeddings, pooler and head copied, the embedding projection the identity
    (embedding size = hidden size), and the shared layer the element-wise mean of the BERT layers.

    This is how to get an ALBERT with pretrained parts where no ALBERT checkpoint is at hand; the mean
    of the layers is not a pretrained layer, so the result starts below the BERT it came from.
    """
    from transformers import AlbertConfig, AlbertForSequenceClassification

    layers = _encoder_layers(model, "ALBERT conversion")
    c = model.config
    config = AlbertConfig(  # type: ignore[call-arg]
        vocab_size=c.vocab_size,
        embedding_size=c.hidden_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_hidden_groups=1,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        inner_group_num=1,
        hidden_act=c.hidden_act,
        hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps,
        classifier_dropout_prob=c.hidden_dropout_prob,
        pad_token_id=c.pad_token_id,
        num_labels=c.num_labels,
        id2label=c.id2label,
        label2id=c.label2id,
    )
    albert = AlbertForSequenceClassification(config)
    src = model.state_dict()
    mean = {
        part: torch.stack([layer.state_dict()[part] for layer in layers]).mean(0)
        for part in layers[0].state_dict()
    }
    prefix = "albert.encoder.albert_layer_groups.0.albert_layers.0."
    shared = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.dense": "attention.output.dense",
        "attention.LayerNorm": "attention.output.LayerNorm",
        "ffn": "intermediate.dense",
        "ffn_output": "output.dense",
        "full_layer_layer_norm": "output.LayerNorm",
    }
    base = model.base_model_prefix
    target: dict[str, torch.Tensor] = {}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        for kind in ("weight", "bias"):
            key = f"{base}.embeddings.{name}.{kind}"
            if key in src:
                target[f"albert.embeddings.{name}.{kind}"] = src[key]
    for ours, theirs in shared.items():
        for kind in ("weight", "bias"):
            target[f"{prefix}{ours}.{kind}"] = mean[f"{theirs}.{kind}"]
    target["albert.encoder.embedding_hidden_mapping_in.weight"] = torch.eye(c.hidden_size)
    target["albert.encoder.embedding_hidden_mapping_in.bias"] = torch.zeros(c.hidden_size)
    for kind in ("weight", "bias"):
        target[f"albert.pooler.{kind}"] = src[f"{base}.pooler.dense.{kind}"]
        target[f"classifier.{kind}"] = src[f"classifier.{kind}"]
    missing = set(albert.state_dict()) - set(target) - {"albert.embeddings.position_ids"}
    if missing:
        raise ValueError(f"ALBERT conversion left {sorted(missing)} unset")
    albert.load_state_dict(target, strict=False)
    albert.config.architectures = [type(albert).__name__]
    albert.eval()
    return albert
