"""Server optimizers (docs/methods.md section 7): each rule against values computed by hand, two rounds
deep, and the validation of their settings."""

from __future__ import annotations

import math

import pytest
import torch

from strata.optimizers import ServerOptimizer, flatten_state, step, unflatten_state

D1, D2 = 0.2, -0.1  # the aggregate Δ̄ of one coordinate in rounds 1 and 2
B, B1, B2, TAU, LR = 0.9, 0.9, 0.99, 1e-3, 0.5


def by_hand(name: str) -> tuple[float, float]:
    """The two steps η·u of round 1 and round 2 for one coordinate, written out."""
    if name == "fedavg":
        return LR * D1, LR * D2
    if name == "fedavgm":
        m1 = D1
        m2 = B * m1 + D2
        return LR * m1, LR * m2
    m1 = (1 - B1) * D1
    m2 = B1 * m1 + (1 - B1) * D2
    if name == "fedadagrad":
        v1 = D1**2
        v2 = v1 + D2**2
    elif name == "fedyogi":
        v1 = 0 - (1 - B2) * D1**2 * math.copysign(1, 0 - D1**2)
        v2 = v1 - (1 - B2) * D2**2 * (1 if v1 - D2**2 > 0 else -1)
    else:
        v1 = (1 - B2) * D1**2
        v2 = B2 * v1 + (1 - B2) * D2**2
    return LR * m1 / (math.sqrt(v1) + TAU), LR * m2 / (math.sqrt(v2) + TAU)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadagrad", "fedyogi", "fedadam"])
def test_two_rounds_match_the_formulas(name: str) -> None:
    opt = ServerOptimizer(name, lr=LR, momentum=B, beta1=B1, beta2=B2, tau=TAU)
    s1, state = step(opt, torch.tensor([D1]), None)
    s2, state2 = step(opt, torch.tensor([D2]), state)
    want1, want2 = by_hand(name)
    assert float(s1) == pytest.approx(want1, rel=1e-5)
    assert float(s2) == pytest.approx(want2, rel=1e-5)
    assert set(state2) == {"fedavg": set(), "fedavgm": {"m"}}.get(name, {"m", "v"})
    if state:  # the step is pure: the previous state was not changed in place
        assert float(state["m"]) == pytest.approx(
            by_hand("fedavgm")[0] / LR if name == "fedavgm" else (1 - B1) * D1
        )


def test_fedavg_with_unit_rate_is_the_aggregate_itself() -> None:
    d = torch.randn(5, 3)
    u, state = step(ServerOptimizer(), d, None)
    assert torch.equal(u, d) and state == {}
    assert not ServerOptimizer().stateful and ServerOptimizer("fedadam").stateful


def test_adaptive_steps_are_bounded_by_the_learning_rate() -> None:
    """Adam's first step is about η·sign(Δ̄) (√(1−β2)/(1−β1) ≈ 1 with the defaults), however large Δ̄ is."""
    opt = ServerOptimizer("fedadam", lr=0.01)
    u, _ = step(opt, torch.tensor([1e3, -1e-1, 5.0]), None)
    assert torch.all(u.abs() <= 0.01 * (1 - 0.9) / math.sqrt(1 - 0.99) + 1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "sgd"}, "choose one of fedavg"),
        ({"lr": 0.0}, "positive"),
        ({"lr": float("nan")}, "positive"),
        ({"momentum": 1.0}, r"\[0, 1\)"),
        ({"beta2": -0.1}, r"\[0, 1\)"),
        ({"tau": 0.0}, "tau"),
    ],
)
def test_bad_settings_are_refused_when_built(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServerOptimizer(**kwargs)  # type: ignore[arg-type]


def test_state_round_trips_through_a_flat_mapping() -> None:
    state = {"a.weight": {"m": torch.ones(2), "v": torch.zeros(2)}, "b::odd": {"m": torch.ones(1)}}
    assert unflatten_state(flatten_state(state)).keys() == state.keys()
    with pytest.raises(ValueError, match="tensor::m"):
        unflatten_state({"a.weight": torch.ones(1)})
