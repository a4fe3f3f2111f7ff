"""LoRA adapters (strata.adapters) on tiny models built from configs: default targets per family, wrapping
with peft (what trains, what travels, the layer map), the factor pairs, the head's modules; and a worker's
load options for a quantized base (worker.large_models). The rank mask: tests/unit/test_rank_mask.py."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

import pytest
import torch

from strata.adapters import (
    ALL_LINEAR,
    DEFAULT_TARGETS,
    LoraSpec,
    head_modules,
    is_adapted,
    linear_names,
    pairs,
    resolve_targets,
    travels,
    wrap,
)
from strata.layers import block_map
from strata.modeling import global_tensors
from tests.adapter_models import (
    CAUSAL,
    FAMILIES,
    PREFIX,
    SEQ_CLS,
    albert,
    bert,
    distilbert,
    factor_tensors,
    llama,
    spec_for,
)
from worker.errors import WorkerError
from worker.large_models import load_options

# ---------------------------------------------------------------------------------------- resolve_targets


@pytest.mark.parametrize(
    ("family", "builder", "defaults"), [(f[0], f[1], f[3]) for f in FAMILIES], ids=[f[0] for f in FAMILIES]
)
def test_default_targets_name_linear_modules_of_each_family(
    family: str, builder: Callable[[], torch.nn.Module], defaults: tuple[str, ...]
) -> None:
    model = builder()
    assert getattr(model.config, "model_type", None) == family
    assert resolve_targets(model, []) == defaults == DEFAULT_TARGETS[family]
    linear = linear_names(model)
    modules = [n for n, _ in model.named_modules()]
    for target in defaults:
        assert target in linear, f"{target} is not a linear module of {family}: {linear}"
        assert any(n.rsplit(".", 1)[-1] == target for n in modules)
    # naming the defaults explicitly is accepted as they are
    assert resolve_targets(model, list(defaults)) == defaults


@pytest.mark.parametrize(
    ("builder", "task", "adapted"), [(f[1], f[2], f[4]) for f in FAMILIES], ids=[f[0] for f in FAMILIES]
)
def test_wrapping_with_the_default_targets_adapts_every_layer(
    builder: Callable[[], torch.nn.Module], task: str, adapted: int
) -> None:
    model = builder()
    assert not is_adapted(model)
    wrapped = wrap(model, spec_for(model, task), task)
    assert is_adapted(wrapped)
    names = [n for n, _ in wrapped.named_parameters()]
    assert len(pairs(names)) == adapted


@pytest.mark.parametrize(
    ("requested", "missing"),
    [
        (["nope"], "nope"),
        (["query", "nope"], "nope"),
        (["uery"], "uery"),  # a suffix must be a whole name component
        (["Query"], "Query"),
        (["lm_head"], "lm_head"),  # a module of other families
    ],
)
def test_an_unknown_target_is_refused_naming_the_setting_and_the_linear_modules(
    requested: list[str], missing: str
) -> None:
    model = bert()
    with pytest.raises(ValueError) as info:
        resolve_targets(model, requested)
    message = str(info.value)
    assert "lora_targets" in message
    assert f"{missing} names no module" in message
    for name in ("query", "key", "value", "dense", "classifier"):
        assert name in message
    assert ALL_LINEAR in message


@pytest.mark.parametrize(
    "requested", [["query"], ["attention.self.query", "value"], ["intermediate.dense"], ["classifier"]]
)
def test_a_target_naming_a_module_suffix_is_accepted(requested: list[str]) -> None:
    assert resolve_targets(bert(), requested) == tuple(requested)


class _NoConfig(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(4, 8)
        self.proj_out = torch.nn.Linear(8, 2)


class _OtherFamily(_NoConfig):
    def __init__(self) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(model_type="mamba")


@pytest.mark.parametrize(
    ("builder", "model_type"), [(_NoConfig, "unknown"), (_OtherFamily, "mamba")], ids=["no-config", "mamba"]
)
def test_a_family_without_defaults_needs_targets(builder: type[torch.nn.Module], model_type: str) -> None:
    model = builder()
    with pytest.raises(ValueError) as info:
        resolve_targets(model, [])
    message = str(info.value)
    assert "lora_targets" in message
    assert repr(model_type) in message
    assert "proj_in" in message and "proj_out" in message
    assert ALL_LINEAR in message
    # named targets that exist, or all-linear, are fine
    assert resolve_targets(model, ["proj_in"]) == ("proj_in",)
    assert resolve_targets(model, [ALL_LINEAR]) == (ALL_LINEAR,)


@pytest.mark.parametrize("builder", [bert, llama, _NoConfig], ids=["bert", "llama", "no-config"])
def test_all_linear_passes_through(builder: Callable[[], torch.nn.Module]) -> None:
    assert resolve_targets(builder(), [ALL_LINEAR]) == (ALL_LINEAR,)
    assert resolve_targets(builder(), (ALL_LINEAR,)) == (ALL_LINEAR,)


def test_all_linear_among_other_targets_is_checked_as_a_module_name() -> None:
    with pytest.raises(ValueError, match="all-linear names no module"):
        resolve_targets(bert(), ["query", ALL_LINEAR])


# ------------------------------------------------------------------------------------------------ wrap


@pytest.mark.parametrize(
    ("builder", "task", "blocks", "head"),
    [
        (bert, SEQ_CLS, ["layer.0", "layer.1", "head"], ("classifier",)),
        (llama, CAUSAL, ["layer.0", "layer.1"], ()),
    ],
    ids=["bert", "llama"],
)
def test_only_travelling_tensors_train_and_they_make_the_version_and_the_blocks(
    builder: Callable[[], torch.nn.Module], task: str, blocks: list[str], head: tuple[str, ...]
) -> None:
    model = builder()
    spec = spec_for(model, task)
    assert spec.modules_to_save == head
    wrapped = wrap(model, spec, task)
    params = dict(wrapped.named_parameters())
    trains = {n for n, p in params.items() if p.requires_grad}
    travelling = {n for n in params if travels(n)}
    assert trains == travelling
    factors = {n for n in params if ".lora_A." in n or ".lora_B." in n}
    saved = {n for n in params if ".modules_to_save." in n}
    assert len(factors) == 2 * 2 * len(spec.targets)  # two layers, A and B per target
    assert {n.split(".modules_to_save.")[0].removeprefix(PREFIX) for n in saved} == set(head)
    assert travelling == factors | saved
    # the version: exactly the adapters and the head copies, no base weight
    version = global_tensors(wrapped)
    assert set(version) == factors | saved
    assert not any(".base_layer." in n or ".original_module." in n for n in version)
    # the layer map: one block per adapted layer (and the head), covering exactly what travels
    bmap = block_map(wrapped)
    assert bmap.names == blocks
    assert {t for b in bmap.blocks for t in b.tensors} == travelling
    assert set(bmap.block_of) == travelling
    for i in (0, 1):
        assert all(f".{i}." in t for t in bmap[f"layer.{i}"].tensors)
    if head:
        assert set(bmap["head"].tensors) == saved


@pytest.mark.parametrize(("rank", "ok"), [(None, True), (1, True), (4, True), (5, False), (64, False)])
def test_a_worker_rank_above_the_federations_is_refused(rank: int | None, ok: bool) -> None:
    model = llama()
    spec = spec_for(model, CAUSAL, rank=4, alpha=8.0)
    if not ok:
        with pytest.raises(ValueError, match="lora_rank") as info:
            wrap(model, spec, CAUSAL, rank=rank)
        assert f"{rank}" in str(info.value) and "rank 4" in str(info.value)
        return
    wrapped = wrap(model, spec, CAUSAL, rank=rank)
    # whatever the worker's rank, the factors have the federation's rank and scale alpha / spec.rank
    for name, p in factor_tensors(wrapped).items():
        assert (p.shape[0] if ".lora_A." in name else p.shape[1]) == 4
    q: Any = wrapped.get_submodule(PREFIX + "model.layers.0.self_attn.q_proj")
    assert q.scaling["default"] == pytest.approx(spec.scale) == 2.0


def test_wrap_with_all_linear_adapts_every_linear_but_the_output_head() -> None:
    model = llama()
    spec = dataclasses.replace(spec_for(model, CAUSAL), targets=(ALL_LINEAR,))
    wrapped = wrap(model, spec, CAUSAL)
    adapted = {m.rsplit(".", 1)[-1] for m in pairs([n for n, _ in wrapped.named_parameters()])}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


# ----------------------------------------------------------------------------------------------- pairs

A, B = ".lora_A.default.weight", ".lora_B.default.weight"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], {}),
        (["m.q" + A, "m.q" + B], {"m.q": ("m.q" + A, "m.q" + B)}),
        (["m.q" + B, "m.q" + A], {"m.q": ("m.q" + A, "m.q" + B)}),  # order does not matter
        (["m.q" + A], {}),  # no partner
        (["m.q" + B], {}),
        (["m.q" + A, "m.v" + B], {}),  # partners of other modules
        (
            ["l.0.q" + A, "l.0.q" + B, "l.0.v" + A, "l.0.v" + B, "l.0.q.base_layer.weight", "head.weight"],
            {"l.0.q": ("l.0.q" + A, "l.0.q" + B), "l.0.v": ("l.0.v" + A, "l.0.v" + B)},
        ),
        (["c.modules_to_save.default.weight", "x.lora_embedding_A.default"], {}),
    ],
)
def test_pairs_maps_each_adapted_module_to_its_factors(
    names: list[str], expected: dict[str, tuple[str, str]]
) -> None:
    assert pairs(names) == expected


def test_pairs_of_a_wrapped_model_cover_every_adapted_module() -> None:
    wrapped = wrap(bert(), spec_for(bert(), SEQ_CLS), SEQ_CLS)
    names = [n for n, _ in wrapped.named_parameters()]
    found = pairs(names)
    expected = {
        f"{PREFIX}bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")
    }
    assert set(found) == expected
    for module, (a, b) in found.items():
        assert a == module + A and b == module + B
    assert {x for ab in found.values() for x in ab} == set(factor_tensors(wrapped))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("base_model.model.l.0.q.lora_A.default.weight", True),
        ("base_model.model.l.0.q.lora_B.default.weight", True),
        ("base_model.model.e.lora_embedding_A.default", True),
        ("base_model.model.l.0.q.lora_magnitude_vector.default.weight", True),
        ("base_model.model.classifier.modules_to_save.default.weight", True),
        ("base_model.model.classifier.original_module.weight", False),
        ("base_model.model.l.0.q.base_layer.weight", False),
        ("bert.encoder.layer.0.attention.self.query.weight", False),
        ("lora_A.default.weight", True),  # at the top level too
        ("my_lora_A.weight", False),
    ],
)
def test_travels(name: str, expected: bool) -> None:
    assert travels(name) is expected


def test_spec_from_record_round_trips_asdict() -> None:
    spec = LoraSpec(8, 16.0, 0.1, ("query", "value"), ("classifier",), "ab" * 32, "factors")
    record = dataclasses.asdict(spec)
    record["targets"], record["modules_to_save"] = list(spec.targets), list(spec.modules_to_save)
    assert LoraSpec.from_record(record) == spec
    assert spec.scale == 2.0


# ------------------------------------------------------------------------------------------ head_modules


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ((), ()),
        (("classifier.weight", "classifier.bias"), ("classifier",)),
        (
            ("pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"),
            ("classifier", "pre_classifier"),
        ),
        (("score.weight",), ("score",)),
        (
            ("classifier.out_proj.weight", "classifier.dense.bias"),
            ("classifier.dense", "classifier.out_proj"),
        ),
        (("bias", "classifier.weight"), ("classifier",)),  # a tensor outside any module is skipped
    ],
)
def test_head_modules(tensors: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert head_modules(torch.nn.Identity(), tensors) == expected


@pytest.mark.parametrize(
    ("builder", "expected"),
    [(bert, ("classifier",)), (distilbert, ("classifier", "pre_classifier")), (albert, ("classifier",))],
    ids=["bert", "distilbert", "albert"],
)
def test_head_modules_of_classifiers_name_their_modules(
    builder: Callable[[], torch.nn.Module], expected: tuple[str, ...]
) -> None:
    model = builder()
    found = head_modules(model, block_map(model)["head"].tensors)
    assert found == expected
    modules = dict(model.named_modules())
    assert all(isinstance(modules[m], torch.nn.Linear) for m in found)


# ----------------------------------------------------------------------------- worker.large_models


@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_a_quantized_base_on_a_cpu_is_refused(device: str, quantize: str) -> None:
    with pytest.raises(WorkerError) as info:
        load_options(device, quantize)
    message = str(info.value)
    assert f"quantize_base {quantize}" in message
    assert "CUDA GPU" in message
    assert device in message


def test_a_plain_base_on_a_cpu_loads_with_no_options() -> None:
    assert load_options("cpu", "") == {}
