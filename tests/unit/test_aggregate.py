"""Unit tests for strata.aggregate: FedAvg weights, weighted means, streaming accumulation, applying deltas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from strata.aggregate import FedAvgAccumulator, apply_delta, fedavg_weights, l2_norm, weighted_mean

SHAPES = {"embed.weight": (10, 4), "layer.0.weight": (4, 4), "layer.0.bias": (4,), "scale": ()}


def _random_deltas(counts: list[int], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{name: torch.randn(shape, generator=gen) for name, shape in SHAPES.items()} for _ in counts]


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([1], [1.0]),
        ([5, 5], [0.5, 0.5]),
        ([1, 3], [0.25, 0.75]),
        ([10, 20, 70], [0.1, 0.2, 0.7]),
        ([0, 4], [0.0, 1.0]),
        ([2, 0, 2], [0.5, 0.0, 0.5]),
    ],
)
def test_fedavg_weights(counts: list[int], expected: list[float]) -> None:
    got = fedavg_weights(counts)
    assert got == pytest.approx(expected)
    assert math.isclose(sum(got), 1.0)


@pytest.mark.parametrize(
    ("counts", "fragment"),
    [([], "no updates"), ([-1, 3], "non-negative"), ([0], "no samples"), ([0, 0, 0], "no samples")],
)
def test_fedavg_weights_errors(counts: list[int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        fedavg_weights(counts)


@pytest.mark.parametrize("counts", [[1, 1, 1], [3, 50, 7], [100, 1, 1000]])
def test_weighted_mean_matches_numpy(counts: list[int]) -> None:
    deltas = _random_deltas(counts, seed=sum(counts))
    got = weighted_mean(deltas, counts)
    assert set(got) == set(SHAPES)
    total = sum(counts)
    for name, shape in SHAPES.items():
        want = (
            sum(n * d[name].numpy().astype(np.float64) for d, n in zip(deltas, counts, strict=True)) / total
        )
        assert got[name].dtype == torch.float32
        assert tuple(got[name].shape) == shape
        np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-6, atol=1e-6)


def test_weighted_mean_of_identical_deltas_is_that_delta() -> None:
    delta = _random_deltas([1])[0]
    got = weighted_mean([delta, delta, delta], [1, 2, 3])
    for name in SHAPES:
        torch.testing.assert_close(got[name], delta[name], rtol=1e-6, atol=1e-6)


def test_weighted_mean_refuses_an_update_without_samples() -> None:
    deltas = _random_deltas([1, 1])
    with pytest.raises(ValueError, match="at least one sample"):
        weighted_mean(deltas, [0, 5])


@pytest.mark.parametrize(
    ("deltas", "counts", "fragment"),
    [
        ([{"a": torch.zeros(2)}], [1, 2], "one sample count per delta"),
        ([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}], [1, 1], "different tensors"),
        ([{"a": torch.zeros(2)}, {"a": torch.zeros(2), "b": torch.zeros(1)}], [1, 1], "different tensors"),
        ([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}], [1, 1], "does not match"),
        ([], [], "no updates"),
        ([{"a": torch.zeros(2)}], [-1], "non-negative"),
    ],
)
def test_weighted_mean_errors(
    deltas: list[dict[str, torch.Tensor]], counts: list[int], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        weighted_mean(deltas, counts)


def test_accumulator_streaming_equals_weighted_mean() -> None:
    counts = [7, 13, 2]
    deltas = _random_deltas(counts, seed=42)
    acc = FedAvgAccumulator()
    for d, n in zip(deltas, counts, strict=True):
        acc.accept(d, n)
    assert acc.total_samples == sum(counts)
    assert acc.num_updates == len(counts)
    streamed = acc.mean()
    batch = weighted_mean(deltas, counts)
    assert set(streamed) == set(batch)
    for name in batch:
        assert torch.equal(streamed[name], batch[name])


def test_accumulator_accepts_bf16_and_returns_fp32() -> None:
    acc = FedAvgAccumulator()
    acc.accept({"w": torch.full((3,), 1.0, dtype=torch.bfloat16)}, 1)
    acc.accept({"w": torch.full((3,), 4.0, dtype=torch.bfloat16)}, 2)
    out = acc.mean()["w"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((3,), 3.0))


def test_accumulator_averages_each_tensor_over_the_updates_that_carried_it() -> None:
    acc = FedAvgAccumulator()
    acc.accept({"a": torch.tensor([1.0]), "b": torch.tensor([10.0])}, 1)
    acc.accept({"a": torch.tensor([4.0])}, 3)
    out = acc.mean()
    torch.testing.assert_close(out["a"], torch.tensor([3.25]))
    torch.testing.assert_close(out["b"], torch.tensor([10.0]))


def test_accumulator_shape_mismatch() -> None:
    acc = FedAvgAccumulator()
    acc.accept({"w": torch.zeros(2, 3)}, 1)
    with pytest.raises(ValueError, match=r"w: shape \(3, 2\) does not match \(2, 3\)"):
        acc.accept({"w": torch.zeros(3, 2)}, 1)


@pytest.mark.parametrize("n", [0, -3])
def test_accumulator_refuses_non_positive_samples(n: int) -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        FedAvgAccumulator().accept({"w": torch.zeros(1)}, n)


def test_accumulator_mean_without_updates() -> None:
    with pytest.raises(ValueError, match="no updates"):
        FedAvgAccumulator().mean()


@pytest.mark.parametrize("lr", [1.0, 0.5, 0.0, -1.0])
def test_apply_delta(lr: float) -> None:
    params = {"w": torch.tensor([1.0, 2.0, 3.0]), "frozen": torch.tensor([9.0])}
    delta = {"w": torch.tensor([0.5, -1.0, 2.0])}
    out = apply_delta(params, delta, lr=lr)
    torch.testing.assert_close(out["w"], params["w"] + lr * delta["w"])
    assert out["frozen"] is params["frozen"]
    assert torch.equal(params["w"], torch.tensor([1.0, 2.0, 3.0])), "apply_delta must not modify its input"


def test_apply_delta_default_lr_is_one() -> None:
    out = apply_delta({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    torch.testing.assert_close(out["w"], torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_apply_delta_preserves_dtype(dtype: torch.dtype) -> None:
    params = {"w": torch.ones(4, dtype=dtype)}
    out = apply_delta(params, {"w": torch.full((4,), 0.5)}, lr=1.0)
    assert out["w"].dtype == dtype
    torch.testing.assert_close(out["w"], torch.full((4,), 1.5, dtype=dtype))


def test_apply_delta_unknown_name() -> None:
    with pytest.raises(KeyError, match="ghost"):
        apply_delta({"w": torch.zeros(1)}, {"ghost": torch.zeros(1)})


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ({}, 0.0),
        ({"a": torch.tensor([3.0, 4.0])}, 5.0),
        ({"a": torch.tensor([3.0]), "b": torch.tensor([[4.0]])}, 5.0),
        ({"a": torch.ones(4, dtype=torch.bfloat16)}, 2.0),
        ({"a": torch.tensor(-2.0)}, 2.0),
        ({"a": torch.zeros(0)}, 0.0),
    ],
)
def test_l2_norm(tensors: dict[str, torch.Tensor], expected: float) -> None:
    assert l2_norm(tensors) == pytest.approx(expected)


def test_l2_norm_matches_numpy() -> None:
    delta = _random_deltas([1], seed=3)[0]
    flat = np.concatenate([t.numpy().astype(np.float64).ravel() for t in delta.values()])
    assert l2_norm(delta) == pytest.approx(float(np.linalg.norm(flat)), rel=1e-12)
