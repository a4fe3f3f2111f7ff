"""Norm bounds against poisoned updates: an absolute bound refuses an update as it completes; a bound
relative to the round's median takes an accepted outlier back out of the sums from its spool file. Either
way the refusal is recorded with its reason and the model is the mean of the others."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
import torch

from coordinator import checkpoint
from coordinator.store import Store
from strata import synthetic
from strata.member.upload import update_chunks
from strata.modeling import global_tensors, load_model
from strata.serde import task_from_proto
from tests.helpers import TOKENS, ServedCoordinator, coordinator_settings
from tests.integration.test_bad_input import Client, result


def filled(tiny_model: Path, value: float) -> dict[str, torch.Tensor]:
    model, _ = load_model(tiny_model, synthetic.LABELS)
    return {n: torch.full_like(t, value) for n, t in global_tensors(model).items()}


def test_an_update_over_the_absolute_bound_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    db = f"sqlite:///{tmp_path / 'abs.db'}"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, rounds=1, min_workers=1, min_updates=1, max_update_norm=1.0
    )
    coord = ServedCoordinator(settings)
    try:
        c = Client(coord.address, TOKENS[0], "org-a")
        task = task_from_proto(c.task())
        with pytest.raises(grpc.RpcError) as err:
            c.push(update_chunks(c.id, task, result(filled(tiny_model, 0.01))))  # norm ≈ 0.01·√n > 1
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exceeds the federation's bound 1" in (err.value.details() or "")
        assert c.push(update_chunks(c.id, task, result(filled(tiny_model, 1e-5)))).accepted
        coord.wait(60)
        store = Store(db)
        (r,) = store.rounds(1)
        statuses = sorted((u.status, u.reject_reason or "") for u in store.updates(r.id))
        assert statuses[0][0] == "accepted" and statuses[1][0] == "rejected" and "bound" in statuses[1][1]
        v0, v1 = (checkpoint.load(settings.data_dir / "checkpoints" / "test", v) for v in (0, 1))
        assert all(torch.allclose(v1[n], v0[n] + 1e-5, atol=1e-7) for n in v0)  # only the small one applied
    finally:
        coord.stop()


def test_an_outlier_against_the_rounds_median_is_taken_back_out(tmp_path: Path, tiny_model: Path) -> None:
    db = f"sqlite:///{tmp_path / 'rel.db'}"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, rounds=1, min_workers=3, min_updates=2, max_norm_ratio=3.0
    )
    coord = ServedCoordinator(settings)
    try:
        clients = [Client(coord.address, TOKENS[k], f"org-{k}") for k in range(3)]
        values = [0.01, 0.02, -1.0]  # org-2 sends a scaled, sign-flipped update
        replies: list[bool] = []

        def go(c: Client, v: float) -> None:
            task = task_from_proto(c.task())
            replies.append(c.push(update_chunks(c.id, task, result(filled(tiny_model, v)))).accepted)

        threads = [threading.Thread(target=go, args=(c, v)) for c, v in zip(clients, values, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert replies == [True, True, True]  # each is accepted as it arrives; the median needs them all
        coord.wait(60)
        store = Store(db)
        (r,) = store.rounds(1)
        assert r.state == "completed" and r.num_updates == 2
        refused = [u for u in store.updates(r.id) if u.status == "rejected"]
        assert len(refused) == 1 and "x the round's median" in (refused[0].reject_reason or "")
        v0, v1 = (checkpoint.load(settings.data_dir / "checkpoints" / "test", v) for v in (0, 1))
        for n in v0:  # the mean of the two honest updates (equal sample counts): 0.015
            torch.testing.assert_close(v1[n], v0[n] + 0.015, atol=2e-6, rtol=0)
    finally:
        coord.stop()


@pytest.mark.parametrize(("aggregation", "trim"), [("median", 0.1), ("trimmed-mean", 0.34)])
def test_robust_aggregation_ignores_a_sign_flipped_scaled_update(
    tmp_path: Path, tiny_model: Path, aggregation: str, trim: float
) -> None:
    db = f"sqlite:///{tmp_path / 'robust.db'}"
    settings = coordinator_settings(
        tmp_path,
        db,
        tiny_model,
        rounds=1,
        min_workers=3,
        min_updates=3,
        aggregation=aggregation,
        trim_fraction=trim,
    )
    coord = ServedCoordinator(settings)
    try:
        clients = [Client(coord.address, TOKENS[k], f"org-{k}") for k in range(3)]

        def go(c: Client, v: float) -> None:
            task = task_from_proto(c.task())
            assert c.push(update_chunks(c.id, task, result(filled(tiny_model, v)))).accepted

        threads = [
            threading.Thread(target=go, args=(c, v)) for c, v in zip(clients, [0.01, 0.02, -5.0], strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        coord.wait(60)
        v0, v1 = (checkpoint.load(settings.data_dir / "checkpoints" / "test", v) for v in (0, 1))
        for (
            n
        ) in v0:  # per coordinate: median of (-5, 0.01, 0.02) = 0.01; trimming one at each end leaves 0.01
            torch.testing.assert_close(v1[n], v0[n] + 0.01, atol=2e-6, rtol=0)
    finally:
        coord.stop()
