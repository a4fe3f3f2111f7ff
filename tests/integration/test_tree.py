"""Federations of federations over real gRPC: a sub-federation's coordinator is one member of its parent
(docs/methods.md section 5), on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from coordinator import checkpoint
from coordinator.store import Store
from strata.member.replica import TrainResult
from strata.serde import RoundTask
from strata.storage.models import KeyWeight, ParentRound, Worker
from tests.helpers import ServedCoordinator, coordinator_settings, make_worker_data, make_workers, run_to_done
from tests.tree_federation import SUB_TOKENS, sub_db


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
            assert member is not None and (member.name, member.members, member.inner_rounds) == (
                "sub-a",
                2,
                2,
            )
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


def test_key_blocks_are_aggregated_attentively_and_kept_partly_local(
    tmp_path: Path, db_url: str, tiny_model: Path
) -> None:
    """Two sub-federations with different data under a parent with key blocks top:1, attention τ = 2 and
    β = 0.5: the parent's key blocks move by Σ α_c Δ_c with α_c ∝ n_c·exp(τ·cos(Δ_c, Δ̄)), its backbone by
    the sample-weighted mean, and each sub-federation's next version keeps half of its own deviation in
    the key blocks."""
    tau, beta = 2.0, 0.5
    parent_s = coordinator_settings(
        tmp_path / "world",
        db_url,
        tiny_model,
        federation="world",
        rounds=2,
        min_workers=2,
        min_updates=2,
        worker_tokens=SUB_TOKENS,
        local_blocks="top:1",
        key_aggregation="attention",
        attention_temperature=tau,
        residual_keep=beta,
    )
    parent = ServedCoordinator(parent_s)
    subs, workers = [], []
    for k, name in enumerate(("sub-a", "sub-b")):
        s = coordinator_settings(
            tmp_path / name,
            sub_db(db_url, tmp_path, name),
            tiny_model,
            federation=name,
            model=None,
            labels=None,
            parent=parent.address,
            parent_token=SUB_TOKENS[k],
            inner_rounds=1,
            min_workers=2,
            min_updates=2,
        )
        subs.append((s, ServedCoordinator(s)))
        data = make_worker_data(tmp_path / f"data-{name}", 2, seed=10 + 7 * k)
        workers += make_workers(subs[-1][1].address, data, tmp_path / f"workers-{name}")
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    for _, c in subs:
        c.wait()
    parent.wait()

    world = Store(db_url)
    try:
        wid = world.get_or_create_federation("world").id
        r1 = world.rounds(wid)[0]
        updates = {world_name(world, u.worker_id): u for u in world.updates(r1.id)}
        with world.sessions() as s:
            rows = list(s.scalars(select(KeyWeight).where(KeyWeight.round_id == r1.id)))
    finally:
        world.close()
    pck = parent_s.data_dir / "checkpoints" / "world"
    p0, p1 = checkpoint.load(pck, 0), checkpoint.load(pck, 1)
    names = sorted(updates)
    n = {c: float(updates[c].num_samples) for c in names}
    # the update each sub-federation sent: its model after inner round 1 (its version 2) minus P0
    delta = {
        c: {t: checkpoint.load(s.data_dir / "checkpoints" / c, 2)[t] - p0[t] for t in p0}
        for c, (s, _) in zip(names, subs, strict=True)
    }
    from strata.hierarchy import key_blocks
    from strata.layers import block_map
    from strata.modeling import load_model

    model, _ = load_model(tiny_model, ["a", "b", "c", "d"], seed=0)
    bmap = block_map(model)
    key = key_blocks("top:1", bmap)  # the head and the highest layer (tests/unit/test_hierarchy.py)
    key_tensors = {t for b in key for t in bmap[b].tensors}
    assert {r.block for r in rows} == set(key) and len(rows) == 2 * len(key)
    for block in key:
        ts = bmap[block].tensors
        flat = {c: torch.cat([delta[c][t].reshape(-1).double() for t in ts]) for c in names}
        mean = sum(n[c] * flat[c] for c in names) / sum(n.values())
        cos = {c: float(torch.nn.functional.cosine_similarity(flat[c], mean, dim=0)) for c in names}
        z = sum(n[c] * math.exp(tau * cos[c]) for c in names)
        alpha = {c: n[c] * math.exp(tau * cos[c]) / z for c in names}
        got = {world_update_name(updates, r.update_id): r for r in rows if r.block == block}
        assert abs(alpha[names[0]] - n[names[0]] / sum(n.values())) > 1e-3  # attention moved the weights
        for c in names:
            assert got[c].cosine == pytest.approx(cos[c], abs=1e-5)
            assert got[c].weight == pytest.approx(alpha[c], abs=1e-5)
        for t in ts:
            want = p0[t] + sum(alpha[c] * delta[c][t] for c in names)
            torch.testing.assert_close(p1[t], want, rtol=0, atol=2e-6)
    for t in p0:
        if t not in key_tensors:  # the backbone: the sample-weighted mean
            want = p0[t] + sum(n[c] * delta[c][t] for c in names) / sum(n.values())
            torch.testing.assert_close(p1[t], want, rtol=0, atol=2e-6)
    for c, (s, _) in zip(
        names, subs, strict=True
    ):  # round 2 starts from P1, key blocks keeping β of their own
        own, synced = (
            checkpoint.load(s.data_dir / "checkpoints" / c, 2),
            checkpoint.load(s.data_dir / "checkpoints" / c, 3),
        )
        for t in p1:
            want = p1[t] + beta * (own[t] - p1[t]) if t in key_tensors else p1[t]
            torch.testing.assert_close(synced[t], want, rtol=0, atol=2e-6)


def world_name(store: Store, worker_id: int) -> str:
    with store.sessions() as s:
        w = s.get(Worker, worker_id)
        assert w is not None
        return w.name


def world_update_name(updates: dict[str, object], update_id: int) -> str:
    return next(name for name, u in updates.items() if u.id == update_id)


def test_a_member_federation_joins_with_its_dashboard_address_and_a_bad_one_is_refused(
    db_url: str, tmp_path: Path, tiny_model: Path
) -> None:
    """Join validates dashboard_url (untrusted: the parent's dashboard renders it as a link) and stores
    nothing on a refusal; a rejoin replaces it, and one without it clears it."""
    import grpc

    from strata.proto.v1 import coordinator_pb2 as pb
    from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc

    world = ServedCoordinator(coordinator_settings(tmp_path, db_url, tiny_model, worker_tokens=SUB_TOKENS))
    meta = (("authorization", f"Bearer {SUB_TOKENS[0]}"),)

    def join(**fields: object) -> str:
        with grpc.insecure_channel(world.address) as ch:
            req = pb.JoinRequest(name="org-a", num_samples=5, **fields)  # type: ignore[arg-type]
            return str(pb_grpc.CoordinatorStub(ch).Join(req, metadata=meta, timeout=30).worker_id)

    def stored() -> list[tuple[str, str | None]]:
        return [(w.name, w.dashboard_url) for w in world.server.store.workers(world.server.runner.fed_id)]

    try:
        for fields, why in [
            (dict(members=2, dashboard_url="javascript:alert(1)"), "not an absolute http:// or https://"),
            (dict(members=2, dashboard_url="https://a.example/" + "x" * 600), "at most 512"),
            (dict(members=2, dashboard_url="https://a .example/"), "spaces or control characters"),
            (dict(dashboard_url="https://a.example/"), "only a member federation"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                join(**fields)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("dashboard_url: ") and why in err.value.details()
            assert stored() == []
        page = "https://dash.org-a.example/?federation=org-a"
        uid = join(members=2, inner_rounds=1, dashboard_url=page)
        assert stored() == [("org-a", page)]
        assert join(members=2, inner_rounds=1, dashboard_url=page + "&round=1") == uid
        assert stored() == [("org-a", page + "&round=1")]
        join(members=2, inner_rounds=1)
        assert stored() == [("org-a", None)]
    finally:
        world.stop()
