"""Server optimizers over real gRPC: the aggregate is a pseudo-gradient, and with targeted layers only the
applied blocks step; a block not applied keeps its optimizer state for the next time it is. FedProx's μ
reaches the workers in every task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator import checkpoint
from strata import tensorfile
from strata.optimizers import unflatten_state
from tests.helpers import ServedCoordinator, coordinator_settings, run_recording

BETA = 0.5


def test_fedavgm_steps_only_the_applied_blocks_and_keeps_the_others_state(
    tmp_path: Path, db_url: str, three_layer_model: Path
) -> None:
    settings = coordinator_settings(
        tmp_path,
        db_url,
        three_layer_model,
        rounds=2,
        policy="agreement",
        blocks=1,
        probe_every=0,
        server_optimizer="fedavgm",
        server_momentum=BETA,
        prox_mu=0.01,
    )
    coord = ServedCoordinator(settings)
    sent = run_recording(coord.address, tmp_path)
    coord.wait()

    assert {t.config.prox_mu for items in sent.values() for t, _ in items} == {0.01}  # FedProx's μ travels
    ckpt = settings.data_dir / "checkpoints" / "test"
    v0, v1, v2 = (checkpoint.load(ckpt, v) for v in range(3))
    updates = [next(res for t, res in sent[name] if t.round == 2) for name in sorted(sent)]
    trained = set(updates[0].delta)
    assert trained and trained != set(v0), "round 2 should train a subset of the blocks"
    state = unflatten_state(tensorfile.load(checkpoint.optimizer_path(ckpt, 2)))
    total = sum(u.num_samples for u in updates)
    for name in v0:
        m1 = v1[name] - v0[name]  # round 1 (every block): m = Δ̄₁, θ += m
        if name in trained:
            mean = sum(u.delta[name].double() * u.num_samples for u in updates) / total
            want = BETA * m1.double() + mean  # m = β m + Δ̄₂
            torch.testing.assert_close((v2[name] - v1[name]).double(), want, atol=2e-6, rtol=0)
            torch.testing.assert_close(state[name]["m"].double(), want, atol=2e-6, rtol=0)
        else:
            assert torch.equal(v2[name], v1[name]), f"{name} was not applied but moved"
            torch.testing.assert_close(state[name]["m"], m1, atol=2e-6, rtol=0)  # its state kept


def test_settings_refuse_an_unknown_server_optimizer(
    tmp_path: Path, db_url: str, three_layer_model: Path
) -> None:
    from strata.settings import SettingsError

    with pytest.raises(SettingsError, match="server optimizer"):
        coordinator_settings(tmp_path, db_url, three_layer_model, server_optimizer="sgd")
    with pytest.raises(SettingsError, match="server_lr"):
        coordinator_settings(tmp_path, db_url, three_layer_model, server_lr=0)
