"""A byzantine worker (one of four) against the coordinator's defences, in real federations.

The same experiment as `python -m bench.byzantine`, one seed and the two attacks each defence is meant
for: a sign-flipped ×10 delta against the relative norm bound, a ×10 boosted delta against the
coordinate-wise median. Undefended, either attack holds the model near or well below what the honest
federation reaches (chance is 0.25); defended, it learns like the honest federation does (0.6–0.8 after
five rounds on this data).

The tests train at a learning rate of 2e-3 where the benchmark uses 3e-3: at 3e-3 the honest federation
sometimes swings from 0.54 down to 0.34 in one round. The workers run as threads of this process and take
turns to train (worker.trainer), so each one's dropout draws are its own; what still varies between runs
is the order in which the coordinator sums the updates. Over three runs at 2e-3 the late means were 0.61-0.62
honest, 0.24 sign-flipped and 0.36-0.48 boosted without a defence (a ×10 step of one worker's delta throws
the mean about), 0.61-0.62 behind the norm bound and 0.81 behind the median.
"""

from __future__ import annotations

import pytest
import torch

from bench.byzantine import DEFENCES, Setup, federation, make_setup
from coordinator.store import Store

ROUNDS = 5
LEARNING_RATE = 2e-3


def late_mean(accuracy: list[float]) -> float:
    """The mean of the last three rounds' accuracy: steadier than the last round alone."""
    return sum(accuracy[-3:]) / 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("byzantine"), seed=0)


def test_without_an_attacker_the_federation_learns(setup: Setup) -> None:
    accuracy, refused = federation(setup, None, DEFENCES["none (mean)"], ROUNDS, learning_rate=LEARNING_RATE)
    assert late_mean(accuracy) >= 0.5 and refused == 0, accuracy


@pytest.mark.parametrize(
    ("attack", "defence"), [("sign-flip", "norm bound (3x median)"), ("scale", "median")]
)
def test_a_byzantine_worker_ruins_the_mean_and_not_the_defended_federation(
    setup: Setup, attack: str, defence: str
) -> None:
    undefended, _ = federation(setup, attack, DEFENCES["none (mean)"], ROUNDS, learning_rate=LEARNING_RATE)
    defended, refused = federation(setup, attack, DEFENCES[defence], ROUNDS, learning_rate=LEARNING_RATE)
    # sign-flipped, the mean stays at chance; boosted, it is thrown about below what the honest
    # federation reaches (0.61-0.62): late means 0.36-0.48 over runs
    assert late_mean(undefended) <= (0.3 if attack == "sign-flip" else 0.55), undefended
    assert late_mean(defended) >= 0.5, defended
    assert late_mean(defended) - late_mean(undefended) >= 0.2
    if defence.startswith("norm bound"):  # every poisoned update refused, with the reason recorded
        assert refused == ROUNDS
        runs = sorted((setup.root).glob("tmp*/byz.db"), key=lambda p: p.stat().st_mtime)
        store = Store(f"sqlite:///{runs[-1]}")
        try:
            reasons = [
                u.reject_reason or ""
                for r in store.rounds(1)
                for u in store.updates(r.id)
                if u.status == "rejected"
            ]
        finally:
            store.close()
        assert len(reasons) == ROUNDS and all("x the round's median" in why for why in reasons), reasons


def test_the_attacks_are_what_they_claim() -> None:
    from bench.byzantine import poison

    delta = {"a": torch.randn(5, 3), "b": torch.randn(7)}
    flipped, boosted, noise = (poison(delta, a, 10.0, seed=1) for a in ("sign-flip", "scale", "noise"))
    for n, d in delta.items():
        assert torch.equal(flipped[n], -10 * d) and torch.equal(boosted[n], 10 * d)
        assert float(noise[n].norm()) == pytest.approx(10 * float(d.norm()), rel=1e-5)
        assert abs(float(torch.nn.functional.cosine_similarity(noise[n].view(-1), d.view(-1), dim=0))) < 0.9
    with pytest.raises(ValueError, match="unknown attack"):
        poison(delta, "bogus", 1.0, 0)
