"""Tiny models of each family built from configs, and the LoRA helpers the adapter tests share
(tests/unit/test_adapters.py, tests/unit/test_rank_mask.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from strata.adapters import LoraSpec, head_modules, pairs, resolve_targets, wrap
from strata.layers import block_map

TINY: dict[str, Any] = dict(
    vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32
)
SEQ_CLS, CAUSAL = "sequence-classification", "causal-lm"
PREFIX = "base_model.model."


def bert() -> torch.nn.Module:
    return BertForSequenceClassification(BertConfig(num_hidden_layers=2, num_labels=3, **TINY))


def distilbert() -> torch.nn.Module:
    config = DistilBertConfig(
        vocab_size=64, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32, num_labels=2
    )
    return DistilBertForSequenceClassification(config)


def albert() -> torch.nn.Module:
    return AlbertForSequenceClassification(
        AlbertConfig(num_hidden_layers=2, embedding_size=8, num_labels=2, **TINY)
    )


def gpt2() -> torch.nn.Module:
    config = GPT2Config(
        vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def llama() -> torch.nn.Module:
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **TINY))


# family, builder, task, its default targets, adapted modules with those defaults
FAMILIES: list[tuple[str, Callable[[], torch.nn.Module], str, tuple[str, ...], int]] = [
    ("bert", bert, SEQ_CLS, ("query", "value"), 4),
    ("distilbert", distilbert, SEQ_CLS, ("q_lin", "v_lin"), 4),
    ("albert", albert, SEQ_CLS, ("query", "value"), 2),  # two layers share one group's weights
    ("gpt2", gpt2, CAUSAL, ("c_attn",), 2),
    ("llama", llama, CAUSAL, ("q_proj", "v_proj"), 4),
]


def spec_for(model: torch.nn.Module, task: str, rank: int = 4, alpha: float = 8.0) -> LoraSpec:
    """The spec a coordinator makes for this unwrapped model: default targets, a classifier's head whole."""
    head = block_map(model)["head"].tensors if task == SEQ_CLS else ()
    return LoraSpec(rank, alpha, 0.0, resolve_targets(model, []), head_modules(model, head), "h" * 64)


def randomize_factors(model: torch.nn.Module, seed: int = 1) -> None:
    """Fill every lora_A / lora_B with random values (peft starts B at zero, which would hide the tail)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def factor_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def tail(name: str, value: torch.Tensor, rank: int) -> torch.Tensor:
    """The entries of a factor past `rank`: rows of A, columns of B."""
    return value[rank:] if ".lora_A." in name else value[:, rank:]


def lead(name: str, value: torch.Tensor, rank: int) -> torch.Tensor:
    """The entries of a factor up to `rank`."""
    return value[:rank] if ".lora_A." in name else value[:, :rank]


def inputs(seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (2, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def merged_by_hand(
    base: torch.nn.Module, wrapped: torch.nn.Module, spec: LoraSpec, rank: int
) -> torch.nn.Module:
    """A copy of the unwrapped `base` with each adapted Linear's weight += scale * B[:, :rank] @ A[:rank]."""
    ref = copy.deepcopy(base)
    tensors = dict(wrapped.named_parameters())
    with torch.no_grad():
        for module, (a_name, b_name) in pairs(sorted(tensors)).items():
            a, b = tensors[a_name], tensors[b_name]
            linear = ref.get_submodule(module.removeprefix(PREFIX))
            assert isinstance(linear, torch.nn.Linear)
            linear.weight += spec.scale * (b[:, :rank] @ a[:rank])
    return ref.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).logits


def wrapped_with_reference(
    builder: Callable[[], torch.nn.Module], task: str, rank: int = 4
) -> tuple[torch.nn.Module, torch.nn.Module, LoraSpec]:
    """(the wrapped model with random factors, in eval mode; a copy of its base; its spec)."""
    torch.manual_seed(0)
    model = builder().eval()
    spec = spec_for(model, task, rank=rank)
    base = copy.deepcopy(model)
    wrapped = wrap(model, spec, task).eval()
    randomize_factors(wrapped)
    return wrapped, base, spec
