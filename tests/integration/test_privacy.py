"""User-level differential privacy over real gRPC (docs/methods.md section 6): what a private round
releases is the clipped sum plus calibrated noise over m; ε per round is the library's; the federation
stops at its budget; nothing per member that the noise does not cover is recorded or served."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from coordinator import checkpoint
from dashboard_api.app import create_app
from strata import accountant
from strata.settings import SettingsError
from strata.storage.models import Evaluation, Federation, Round, RoundTensor, Update, UpdateAlignment
from tests.helpers import ServedCoordinator, coordinator_settings, run_recording
from worker.local_dp import Ledger

Z, CLIP = 0.5, 0.02


def _rows(db_url: str, model: type) -> list:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(model)))
    finally:
        engine.dispose()


def test_a_private_round_releases_the_clipped_sum_plus_calibrated_noise(
    tmp_path: Path, db_url: str, three_layer_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="strata.coordinator")
    settings = coordinator_settings(
        tmp_path,
        db_url,
        three_layer_model,
        rounds=2,
        min_updates=1,
        dp=True,
        dp_noise_multiplier=Z,
        dp_clip=CLIP,
        dp_target_epsilon=100.0,
        eval_data=None,
    )
    coord = ServedCoordinator(settings)
    sent = run_recording(coord.address, tmp_path)
    coord.wait()

    ckpt = settings.data_dir / "checkpoints" / "test"
    v0, v1 = checkpoint.load(ckpt, 0), checkpoint.load(ckpt, 1)
    updates = [next(res for t, res in sent[name] if t.round == 1) for name in sorted(sent)]
    norms = [math.sqrt(sum(float(d.double().pow(2).sum()) for d in u.delta.values())) for u in updates]
    assert min(norms) > CLIP, "the test wants every update clipped"
    m = 3.0  # q = 1, three members online: the fixed denominator
    noise = []
    for name in v0:
        clipped = sum(u.delta[name].double() * (CLIP / n) for u, n in zip(updates, norms, strict=True))
        noise.append((m * (v1[name] - v0[name]).double() - clipped).view(-1))
    x = torch.cat(noise)
    sigma = Z * CLIP
    assert x.numel() > 20_000
    assert float(x.mean()) == pytest.approx(0.0, abs=5 * sigma / math.sqrt(x.numel()))
    assert float(x.std()) == pytest.approx(sigma, rel=0.03), "noise std must be z·S on the sum"
    assert float((x**4).mean()) / sigma**4 == pytest.approx(3.0, rel=0.1)  # Gaussian, not anything else

    rounds = sorted(_rows(db_url, Round), key=lambda r: r.number)
    assert [r.state for r in rounds] == ["completed", "completed"]
    for k, r in enumerate(rounds, start=1):
        direct = rdp.RdpAccountant()
        direct.compose(dp_accounting.GaussianDpEvent(Z), k)
        assert r.private and r.dp_epsilon == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
        assert (r.dp_clip, r.dp_expected, r.dp_noise_multiplier) == (CLIP, m, Z)
        assert r.train_loss is None and r.train_accuracy is None and r.num_samples == 0
    # nothing per member that the noise does not cover
    ups = _rows(db_url, Update)
    assert ups and all(u.update_norm is None and u.train_loss is None and u.num_samples == 0 for u in ups)
    assert _rows(db_url, UpdateAlignment) == [] and _rows(db_url, RoundTensor) == []
    assert _rows(db_url, Evaluation) == []
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("strata.coordinator"))
    assert "round 2 done" in logged and "ε = " in logged
    assert "samples" not in logged and "norm" not in logged and "loss" not in logged

    with TestClient(create_app(db_url)) as client:
        status = client.get("/api/v1/federations/test").json()
        assert status["privacy"] | {"epsilon": None} == {
            "enabled": True,
            "target_epsilon": 100.0,
            "delta": 1e-5,
            "epsilon": None,
            "noise_multiplier": Z,
            "sampling_rate": 1.0,
            "adaptive_clip": False,
        }
        assert status["privacy"]["epsilon"] == pytest.approx(rounds[-1].dp_epsilon)
        page = client.get("/api/v1/federations/test/rounds").json()["items"]
        assert [r["private"] for r in page] == [True, True]
        assert page[1]["dp_epsilon"] == pytest.approx(rounds[1].dp_epsilon)
        workers = client.get("/api/v1/federations/test/workers").json()
        assert {w["num_samples"] for w in workers} == {0}


def test_the_federation_completes_when_its_budget_is_spent(
    tmp_path: Path, db_url: str, three_layer_model: Path
) -> None:
    z = 2.0
    budget = (accountant.epsilon([(1.0, z)] * 2, 1e-5) + accountant.epsilon([(1.0, z)] * 3, 1e-5)) / 2
    settings = coordinator_settings(
        tmp_path,
        db_url,
        three_layer_model,
        rounds=6,
        min_updates=1,
        dp=True,
        dp_noise_multiplier=z,
        dp_target_epsilon=budget,
        dp_adaptive_clip=True,
        eval_data=None,
    )
    coord = ServedCoordinator(settings)
    run_recording(coord.address, tmp_path)
    coord.wait()
    rounds = sorted(_rows(db_url, Round), key=lambda r: r.number)
    assert [r.state for r in rounds] == ["completed", "completed"], "round 3 would pass the budget"
    assert rounds[-1].dp_epsilon <= budget
    # adaptive clipping: a noised count and the next round's clip, from the first round's S
    assert rounds[0].dp_clip == 1.0 and rounds[1].dp_clip == pytest.approx(rounds[0].dp_next_clip)
    assert rounds[0].dp_unclipped is not None
    (fed,) = _rows(db_url, Federation)
    assert fed.state == "completed"
    assert "privacy budget" in fed.reason and "round 3" in fed.reason


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(dp_noise_multiplier=0), "dp_noise_multiplier"),
        (dict(dp_noise_multiplier=-1), "dp_noise_multiplier"),
        (dict(dp_clip=0), "dp_clip"),
        (dict(dp_delta=0), "dp_delta"),
        (dict(dp_delta=1), "dp_delta"),
        (dict(dp_target_epsilon=0.01), "dp_target_epsilon: one round"),
        (dict(dp_target_epsilon=0), "dp_target_epsilon: dp needs a budget"),
        (dict(aggregation="median"), "aggregation 'median'"),
        (dict(max_norm_ratio=3.0), "max_norm_ratio"),
        (dict(workers_per_round=2, min_updates=1), "workers_per_round"),
        (dict(min_updates=3), "min_updates"),
        (dict(policy="agreement", blocks=1), "policy agreement"),
        (dict(local_blocks="top:1"), "key_aggregation attention"),
        (dict(dp_adaptive_clip=True, dp_count_noise=0.4), "dp_count_noise"),
    ],
)
def test_bad_privacy_settings_are_refused_naming_the_setting(
    tmp_path: Path, db_url: str, three_layer_model: Path, overrides: dict, match: str
) -> None:
    values = dict(dp=True, dp_target_epsilon=50.0, min_updates=1) | overrides
    with pytest.raises(SettingsError, match=match):
        coordinator_settings(tmp_path, db_url, three_layer_model, **values)


def test_divergence_is_off_in_a_private_federation(
    tmp_path: Path, db_url: str, three_layer_model: Path
) -> None:
    s = coordinator_settings(
        tmp_path, db_url, three_layer_model, dp=True, dp_target_epsilon=50.0, min_updates=1, divergence=True
    )
    assert s.divergence is False and s.record()["divergence"] is False


def test_workers_with_local_dp_sgd_report_their_records_epsilon(
    tmp_path: Path, db_url: str, three_layer_model: Path
) -> None:
    from tests.helpers import make_worker_data, make_workers, run_to_done

    settings = coordinator_settings(tmp_path, db_url, three_layer_model, rounds=2, eval_data=None)
    coord = ServedCoordinator(settings)
    extra = dict(local_dp=True, local_dp_noise_multiplier=1.2, local_dp_max_grad_norm=1.0)
    workers = make_workers(coord.address, make_worker_data(tmp_path / "data", 3), tmp_path, extra=extra)
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    coord.wait()
    with TestClient(create_app(db_url)) as client:
        got = {w["name"]: w for w in client.get("/api/v1/federations/test/workers").json()}
    for w in workers:
        ledger = w.local_dp().ledger  # what the worker spent, from its own ledger: two rounds of 4 steps
        eps = accountant.epsilon([(q, s) for q, s, n in Ledger(ledger).rounds for _ in range(n)], 1e-5)
        assert len(Ledger(ledger).rounds) == 2
        assert got[w.s.name]["local_epsilon"] == pytest.approx(eps) and got[w.s.name]["local_delta"] == 1e-5


def test_dp_at_both_tiers_of_a_tree(tmp_path: Path, db_url: str, tiny_model: Path) -> None:
    """Each sub-federation runs DP over its own workers with its own budget, and the parent over its member
    federations: each tier records its own ε, and the parent publishes nothing per member federation."""
    from tests.tree_federation import SUBS, build_tree

    private = dict(dp=True, dp_noise_multiplier=3.0, dp_target_epsilon=30.0, min_updates=1)
    tree = build_tree(
        tmp_path,
        db_url,
        tiny_model,
        parent_extra=private | dict(key_aggregation="mean"),
        sub_extra=private | dict(dp_target_epsilon=25.0, dp_clip=0.5),
    )
    want = [accountant.epsilon([(1.0, 3.0)] * k, 1e-5) for k in (1, 2)]
    for url, name in [(tree.parent_url, "world"), *((tree.sub_urls[s], s) for s in SUBS)]:
        engine = create_engine(url)
        with engine.connect() as conn:
            (fed_id,) = conn.execute(select(Federation.id).where(Federation.name == name)).one()
            rounds = list(
                conn.execute(select(Round).where(Round.federation_id == fed_id).order_by(Round.number))
            )
        engine.dispose()
        assert [r.state for r in rounds] == ["completed", "completed"], name
        assert all(r.private for r in rounds)
        assert [r.dp_epsilon for r in rounds] == pytest.approx(want), name
        assert rounds[0].dp_clip == (1.0 if name == "world" else 0.5)
    world = [r for r in _rows(tree.parent_url, Round) if r.number and r.dp_clip == 1.0]
    assert world and all(r.num_samples == 0 and r.train_loss is None for r in world)
    from strata.storage.models import KeyWeight

    assert _rows(tree.parent_url, KeyWeight) == [], "no per-member key-block weights at a private parent"
    with TestClient(create_app(tree.parent_url)) as client:
        members = client.get("/api/v1/federations/world/workers").json()
    assert sorted(m["name"] for m in members) == sorted(SUBS)
    assert all(m["kind"] == "federation" and m["reported"] is None and m["num_samples"] == 0 for m in members)


def test_a_private_round_resumes_after_kill_9_with_its_mechanism_and_counts_once(
    tmp_path: Path, tiny_model: Path
) -> None:
    """SIGKILL once round 2 has recorded an accepted update: the restart reopens round 2 with the clip and
    m it was opened with, reloads the update clipped, and ε counts three rounds, not four."""
    import signal
    import threading

    from strata.storage.db import migrate
    from tests.helpers import coordinator_values, make_worker_data, make_workers, service_env
    from tests.integration.test_crash import _run, start_coordinator, wait_for_port

    db = f"sqlite:///{tmp_path / 'crash.db'}"
    migrate(db)

    def env(listen: str, failpoint: str | None) -> dict[str, str]:
        values = coordinator_values(
            tmp_path, db, tiny_model, listen=listen, port_file=tmp_path / "port", rounds=3, min_updates=1,
            round_timeout=120, linger_seconds=3.0, task_poll_seconds=1.0, dp=True, dp_noise_multiplier=2.0,
            dp_target_epsilon=50.0, dp_adaptive_clip=True,
        )  # fmt: skip
        return service_env("COORDINATOR", values, **({"STRATA_FAILPOINTS": failpoint} if failpoint else {}))

    first = start_coordinator(
        tmp_path, env("127.0.0.1:0", "coordinator.push.recorded@5"), "coordinator-1.log"
    )
    port = wait_for_port(tmp_path, first)
    workers = make_workers(
        f"127.0.0.1:{port}", make_worker_data(tmp_path / "data", 3), tmp_path,
        extra=dict(max_backoff=0.5, connect_timeout=120),
    )  # fmt: skip
    errors: list[BaseException] = []
    runner = threading.Thread(target=lambda: _run(workers, errors))
    runner.start()
    second = None
    try:
        assert first.wait(180) == -signal.SIGKILL, (tmp_path / "coordinator-1.log").read_text()[-3000:]
        opened = {r.number: (r.dp_clip, r.dp_expected) for r in _rows(db, Round)}
        round_ids = {r.id: r.number for r in _rows(db, Round)}
        # what the database held at the kill: the failpoint fires on the 5th record, but a third update
        # of round 2 may commit on another RPC thread before the process dies
        held = sum(1 for u in _rows(db, Update) if u.status == "accepted" and round_ids[u.round_id] == 2)
        second = start_coordinator(tmp_path, env(f"127.0.0.1:{port}", None), "coordinator-2.log")
        assert second.wait(240) == 0, (tmp_path / "coordinator-2.log").read_text()[-3000:]
        runner.join(60)
        assert not runner.is_alive() and not errors, errors
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        runner.join(5)
        for w in workers:
            w.close()
    log2 = (tmp_path / "coordinator-2.log").read_text()
    assert held >= 2 and f"round 2 reopened after a restart with the {held} update(s)" in log2, log2[-3000:]
    rounds = sorted(_rows(db, Round), key=lambda r: r.number)
    assert [(r.number, r.state) for r in rounds] == [(1, "completed"), (2, "completed"), (3, "completed")]
    assert (rounds[1].dp_clip, rounds[1].dp_expected) == opened[2], "reopened with the same mechanism"
    assert rounds[2].dp_clip == pytest.approx(rounds[1].dp_next_clip)
    assert [r.dp_epsilon for r in rounds] == pytest.approx(
        [accountant.epsilon([(1.0, 2.0)] * k, 1e-5) for k in (1, 2, 3)]
    )
    accepted = [u for u in _rows(db, Update) if u.status == "accepted"]
    assert len(accepted) == 9 and all(u.update_norm is None for u in accepted)
