"""Unit tests for strata.version: content hashes of model versions."""

from __future__ import annotations

import re

import pytest
import torch

from strata.version import model_hash, tensor_bytes


def _model(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(6, 4, generator=gen),
        "layer.0.weight": torch.randn(4, 4, generator=gen),
        "layer.0.bias": torch.randn(4, generator=gen),
        "scale": torch.randn((), generator=gen),
    }


def test_hash_is_sha256_hex() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", model_hash(_model()))


def test_hash_is_deterministic_and_content_based() -> None:
    assert model_hash(_model(0)) == model_hash(_model(0))
    assert model_hash(_model(0)) == model_hash({n: t.clone() for n, t in _model(0).items()})
    assert model_hash(_model(0)) != model_hash(_model(1))


def test_hash_stable_across_dict_order() -> None:
    model = _model()
    reversed_model = dict(reversed(list(model.items())))
    assert list(reversed_model) != list(model)
    assert model_hash(reversed_model) == model_hash(model)


@pytest.mark.parametrize("name", ["embed.weight", "layer.0.weight", "layer.0.bias", "scale"])
def test_hash_changes_when_one_element_moves_one_ulp(name: str) -> None:
    model = _model()
    before = model_hash(model)
    t = model[name].clone()
    flat = t.view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf")))
    assert not torch.equal(t, model[name])
    assert model_hash({**model, name: t}) != before


def test_hash_changes_when_a_name_changes() -> None:
    model = _model()
    renamed = dict(model)
    renamed["layer.0.bias_"] = renamed.pop("layer.0.bias")
    assert model_hash(renamed) != model_hash(model)


def test_hash_changes_when_dtype_changes_with_equal_values() -> None:
    values = torch.tensor([0.5, 1.0, -2.0, 0.25])
    as32 = {"w": values}
    as16 = {"w": values.to(torch.float16)}
    assert torch.equal(as16["w"].to(torch.float32), values)
    assert model_hash(as16) != model_hash(as32)
    assert model_hash({"w": values.to(torch.bfloat16)}) not in {model_hash(as16), model_hash(as32)}


@pytest.mark.parametrize("new_shape", [(2, 2), (4, 1), (1, 4)], ids=str)
def test_hash_changes_when_shape_changes(new_shape: tuple[int, ...]) -> None:
    values = torch.arange(4, dtype=torch.float32)
    reshaped = values.reshape(new_shape)
    assert bytes(tensor_bytes(reshaped)) == bytes(tensor_bytes(values))
    assert model_hash({"w": reshaped}) != model_hash({"w": values})


def test_hash_of_bfloat16_tensors() -> None:
    model = {n: t.to(torch.bfloat16) for n, t in _model().items()}
    h = model_hash(model)
    assert h == model_hash({n: t.clone() for n, t in model.items()})
    bits = model["layer.0.bias"].view(torch.int16).clone()
    bits[0] += 1  # one bfloat16 ulp
    bumped = bits.view(torch.bfloat16)
    assert not torch.equal(bumped, model["layer.0.bias"])
    assert model_hash({**model, "layer.0.bias": bumped}) != h


def test_tensor_bytes_bfloat16_are_the_raw_bits() -> None:
    t = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    assert bytes(tensor_bytes(t)) == t.view(torch.int16).numpy().tobytes()
    assert len(tensor_bytes(t)) == 4


def test_hash_ignores_layout_and_requires_grad() -> None:
    base = torch.randn(3, 5, generator=torch.Generator().manual_seed(7))
    transposed_back = base.t().contiguous().t()
    assert not transposed_back.is_contiguous()
    param = torch.nn.Parameter(base.clone())
    assert model_hash({"w": transposed_back}) == model_hash({"w": base}) == model_hash({"w": param})


def test_hash_of_empty_model_and_scalar() -> None:
    assert model_hash({}) == model_hash({})
    assert model_hash({"s": torch.tensor(1.0)}) != model_hash({"s": torch.tensor([1.0])})


def test_hash_of_one_dim_empty_tensor() -> None:
    assert model_hash({"w": torch.zeros(0)}) != model_hash({})


def test_hash_of_multi_dim_empty_tensor() -> None:
    assert model_hash({"w": torch.zeros(4, 0)}) != model_hash({"w": torch.zeros(0, 4)})
