"""Federations of federations over real gRPC: a sub-federation's coordinator is one member of its parent
(docs/methods.md section 5), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from coordinator import checkpoint
from coordinator.store import Store
from strata.member.replica import TrainResult
from strata.serde import RoundTask
from strata.storage.models import ParentRound, Worker
from tests.helpers import ServedCoordinator, coordinator_settings, make_worker_data, make_workers, run_to_done

SUB_TOKENS = ["token-sub-a-11111111", "token-sub-b-22222222"]


def sub_db(db_url: str, tmp_path: Path, name: str) -> str:
    """A sub-federation keeps its own database: its own SQLite file, or the same PostgreSQL database
    under its own federation name (two SQLite writers in one file would only test locking)."""
    return f"sqlite:///{tmp_path / f'{name}.db'}" if db_url.startswith("sqlite") else db_url


def test_a_sub_federation_trains_inner_rounds_and_sends_up_one_update_per_parent_round(
    tmp_path: Path, db_url: str, tiny_model: Path
) -> None:
    parent_s = coordinator_settings(
        tmp_path / "world",
        db_url,
        tiny_model,
        federation="world",
        rounds=2,
        min_workers=1,
        min_updates=1,
        worker_tokens=SUB_TOKENS,
    )
    parent = ServedCoordinator(parent_s)
    sub_s = coordinator_settings(
        tmp_path / "sub",
        sub_db(db_url, tmp_path, "sub-a"),
        tiny_model,
        federation="sub-a",
        model=None,  # taken from the parent
        labels=None,
        parent=parent.address,
        parent_token=SUB_TOKENS[0],
        inner_rounds=2,
        min_workers=2,
        min_updates=2,
    )
    sub = ServedCoordinator(sub_s)
    sent: dict[str, list[tuple[RoundTask, TrainResult]]] = {"org-1": [], "org-2": []}
    workers = make_workers(
        sub.address,
        make_worker_data(tmp_path / "data", 2),
        tmp_path / "workers",
        lambda name, task, res: sent[name].append((task, res)),
    )
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    sub.wait()
    parent.wait()

    world, inner = Store(db_url), Store(sub_s.database_url)
    try:
        wid = world.get_or_create_federation("world").id
        sid = inner.get_or_create_federation("sub-a").id
        parent_rounds = world.rounds(wid)
        assert [r.state for r in parent_rounds] == ["completed", "completed"]
        samples = {name: res[0][1].num_samples for name, res in sent.items()}
        for r in parent_rounds:
            (u,) = world.updates(r.id)
            assert u.status == "accepted" and u.num_samples == sum(samples.values())
        with world.sessions() as s:
            member = s.scalar(select(Worker).where(Worker.federation_id == wid))
            assert member is not None and (member.name, member.members, member.inner_rounds) == ("sub-a", 2, 2)
        assert [r.state for r in inner.rounds(sid)] == ["completed"] * 4
        for name in sent:  # each worker trained in each inner round, once
            assert [task.round for task, _ in sent[name]] == [1, 2, 3, 4]
        with inner.sessions() as s:
            served = list(s.scalars(select(ParentRound).order_by(ParentRound.parent_round)))
        assert [(p.parent_round, p.state, p.num_samples) for p in served] == [
            (1, "delivered", sum(samples.values())),
            (2, "delivered", sum(samples.values())),
        ]
        # one member: the parent's version after each round is the sub-federation's model after its
        # inner rounds (θ_P + (θ_c − θ_P)), and the sub-federation took each parent version as its own
        pck, sck = parent_s.data_dir / "checkpoints" / "world", sub_s.data_dir / "checkpoints" / "sub-a"
        sub_versions = [p.start_version for p in served]
        assert sub_versions == [1, 4]  # v0 joined, v1 synchronised, v2-v3 inner, v4 synchronised, v5-v6
        for parent_v, sub_v in ((1, 3), (2, 6)):
            got, want = checkpoint.load(pck, parent_v), checkpoint.load(sck, sub_v)
            for n in want:
                torch.testing.assert_close(got[n], want[n], rtol=0, atol=2e-6)
        p1, synced = checkpoint.load(pck, 1), checkpoint.load(sck, 4)
        for n in p1:
            torch.testing.assert_close(synced[n], p1[n], rtol=0, atol=2e-6)
    finally:
        world.close()
        inner.close()


@pytest.mark.parametrize("bad", [{"parent": "nowhere"}, {"parent": "127.0.0.1:9"}])
def test_a_sub_federation_needs_a_parent_address_and_token(bad: dict[str, str], tmp_path: Path) -> None:
    from coordinator.settings import CoordinatorSettings
    from strata.settings import SettingsError

    with pytest.raises(SettingsError, match="parent"):
        CoordinatorSettings.load(bad)
