"""The layer map on a tiny config of every family, LoRA adapters, and the fallback rule."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AlbertConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
)

from strata.layers import block_map, classify

TINY = dict(
    vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32
)


def _check_partition(model: torch.nn.Module, bm) -> None:  # type: ignore[no-untyped-def]
    names = [n for n, _ in model.named_parameters()]
    covered = [t for b in bm.blocks for t in b.tensors]
    assert sorted(covered) == sorted(set(covered)), "a tensor in two blocks"
    assert set(covered) == set(bm.block_of)
    assert set(covered) <= set(names)


@pytest.mark.parametrize(
    ("family", "model", "expected"),
    [
        (
            "bert",
            lambda: AutoModelForSequenceClassification.from_config(
                BertConfig(num_hidden_layers=3, num_labels=2, **TINY)
            ),
            ["embeddings", "layer.0", "layer.1", "layer.2", "pooler", "head"],
        ),
        (
            "distilbert",
            lambda: AutoModelForSequenceClassification.from_config(
                DistilBertConfig(
                    vocab_size=64,
                    dim=16,
                    n_layers=2,
                    n_heads=2,
                    hidden_dim=32,
                    max_position_embeddings=32,
                    num_labels=2,
                )
            ),
            ["embeddings", "layer.0", "layer.1", "head"],
        ),
        (
            "albert",
            lambda: AutoModelForSequenceClassification.from_config(
                AlbertConfig(num_hidden_layers=4, embedding_size=8, num_labels=2, **TINY)
            ),
            ["embeddings", "layer.0", "pooler", "head"],
        ),  # four layers, one shared group: one block
        (
            "gpt2",
            lambda: AutoModelForCausalLM.from_config(
                GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
            ),
            ["embeddings", "layer.0", "layer.1", "head"],
        ),
        (
            "llama",
            lambda: AutoModelForCausalLM.from_config(
                LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **TINY)
            ),
            ["embeddings", "layer.0", "layer.1", "head"],
        ),
    ],
)
def test_every_family_maps_to_its_blocks(family: str, model, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    m = model()
    bm = block_map(m)
    assert bm.names == expected
    assert not bm.fallback and bm.family == family
    _check_partition(m, bm)
    assert sum(bm.sizes.values()) == sum(p.numel() for p in m.parameters())


def test_albert_shared_layers_are_one_block_however_deep() -> None:
    m = AutoModelForSequenceClassification.from_config(
        AlbertConfig(num_hidden_layers=12, embedding_size=8, num_labels=2, **TINY)
    )
    assert (
        block_map(m).names.count("layer.0") == 1
        and len([b for b in block_map(m).blocks if b.kind == "layer"]) == 1
    )


def test_lora_adapters_form_one_block_per_adapted_layer() -> None:
    peft = pytest.importorskip("peft")
    base = AutoModelForSequenceClassification.from_config(
        BertConfig(num_hidden_layers=3, num_labels=2, **TINY)
    )
    cfg = peft.LoraConfig(
        r=2, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS"
    )
    m = peft.get_peft_model(base, cfg)
    bm = block_map(m)
    assert bm.family == "bert+lora"
    assert bm.names == ["layer.0", "layer.1", "layer.2", "head"]
    assert all("lora_" in t for b in bm.blocks if b.kind == "layer" for t in b.tensors)
    assert all(
        p.requires_grad for n, p in m.named_parameters() if n in bm.block_of
    )  # frozen weights never travel
    _check_partition(m, bm)


def test_unknown_architecture_falls_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
            self.out = torch.nn.Linear(4, 2)

    with caplog.at_level("WARNING"):
        bm = block_map(Tiny())
    assert bm.fallback and "fallback" in bm.note and "fallback" in caplog.text
    assert bm.names == ["embeddings", "layer.0", "layer.1", "head"]


@pytest.mark.parametrize(
    ("name", "family", "expected"),
    [
        ("bert.embeddings.LayerNorm.weight", "encoder", ("embeddings", 0)),
        ("bert.encoder.layer.11.output.dense.bias", "encoder", ("layer", 11)),
        ("bert.pooler.dense.weight", "encoder", ("pooler", 0)),
        ("classifier.weight", "encoder", ("head", 0)),
        ("distilbert.transformer.layer.5.ffn.lin1.weight", "encoder", ("layer", 5)),
        ("pre_classifier.weight", "encoder", ("head", 0)),
        ("albert.encoder.embedding_hidden_mapping_in.weight", "albert", ("embeddings", 0)),
        ("albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight", "albert", ("layer", 0)),
        ("transformer.wte.weight", "causal", ("embeddings", 0)),
        ("transformer.h.3.attn.c_attn.weight", "causal", ("layer", 3)),
        ("transformer.ln_f.weight", "causal", ("head", 0)),
        ("model.layers.7.self_attn.q_proj.weight", "causal", ("layer", 7)),
        ("model.norm.weight", "causal", ("head", 0)),
        ("lm_head.weight", "causal", ("head", 0)),
        (
            "base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.default.weight",
            "encoder",
            ("layer", 2),
        ),
    ],
)
def test_classify(name: str, family: str, expected: tuple[str, int]) -> None:
    assert classify(name, family) == expected


def test_lookups() -> None:
    m = AutoModelForSequenceClassification.from_config(BertConfig(num_hidden_layers=2, num_labels=2, **TINY))
    bm = block_map(m)
    assert bm["head"].is_head and "classifier.weight" in bm.tensors_of(["head"])
    with pytest.raises(KeyError, match="no block 'layer.9'"):
        bm["layer.9"]


def test_frozen_blocks_get_no_gradient_no_optimizer_state_and_do_not_travel(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from strata import synthetic
    from strata.layers import set_trainable
    from strata.modeling import load_model, make_tiny_model_dir
    from strata.serde import TrainingConfig
    from worker import trainer

    train_set, _ = synthetic.generate_splits(64, 4, seed=0)
    path = make_tiny_model_dir(
        tmp_path, [e.text for e in train_set], synthetic.LABELS, hidden_size=16, num_layers=3, vocab_size=300
    )
    model, tok = load_model(path, synthetic.LABELS)
    bm = block_map(model)
    optimised: list[set[int]] = []
    grads: list[set[str]] = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            optimised.append({id(p) for g in self.param_groups for p in g["params"]})
            grads.append({n for n, p in model.named_parameters() if p.grad is not None})
            return super().step(closure)

    monkeypatch.setattr(trainer.torch.optim, "AdamW", Recording)
    count = set_trainable(model, bm, ["layer.1", "head"])
    wanted = bm.tensors_of(["layer.1", "head"])
    assert count == sum(p.numel() for n, p in model.named_parameters() if n in wanted)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = trainer.train(
        model, tok, train_set, TrainingConfig(max_steps=2, batch_size=8, max_seq_len=24), 1, progress=False
    )
    params = dict(model.named_parameters())
    assert optimised and all(ids == {id(params[n]) for n in wanted} for ids in optimised)
    assert grads and all(g == wanted for g in grads)
    assert set(res.delta) == wanted and any(float(d.abs().max()) > 0 for d in res.delta.values())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # handed back unchanged
    with pytest.raises(ValueError, match="its blocks are embeddings, layer.0"):
        set_trainable(model, bm, ["layer.9"])
    set_trainable(model, bm, [])
    assert all(p.requires_grad for p in model.parameters())
