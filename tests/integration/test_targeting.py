"""Targeted layer updates over real gRPC: workers train and send only the round's blocks, the coordinator
applies the chosen ones, refuses anything else, records every block's outcome and serves them over REST."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from fastapi.testclient import TestClient

from coordinator import checkpoint
from coordinator.store import Store
from dashboard_api.app import create_app
from strata import synthetic
from strata.layers import block_map
from strata.member.upload import update_chunks
from strata.modeling import global_tensors, load_model
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import task_from_proto
from strata.targeting import Targeting
from tests.helpers import (
    TOKENS,
    ServedCoordinator,
    coordinator_settings,
    run_recording,
)
from tests.integration.test_bad_input import Client, result


def test_pre_selected_workers_train_and_send_only_the_rounds_blocks(
    tmp_path: Path, db_url: str, three_layer_model: Path
) -> None:
    settings = coordinator_settings(
        tmp_path,
        db_url,
        three_layer_model,
        rounds=3,
        policy="agreement",
        blocks=1,
        refresh_every=10,
        probe_every=0,
    )
    coord = ServedCoordinator(settings)
    sent = run_recording(coord.address, tmp_path)
    coord.wait()

    model, _ = load_model(three_layer_model, synthetic.LABELS)
    bmap = block_map(model)
    assert bmap.names == ["embeddings", "layer.0", "layer.1", "layer.2", "pooler", "head"]
    everything = set(global_tensors(model))
    ckpt = settings.data_dir / "checkpoints" / "test"
    versions = [checkpoint.load(ckpt, v) for v in range(4)]
    plans = {}
    for rnd in (1, 2, 3):
        tasks = {next(t for t, _ in sent[name] if t.round == rnd).blocks for name in sent}
        assert len(tasks) == 1, "every worker of a round gets the same blocks"
        (blocks,) = tasks
        plans[rnd] = blocks
        updates = [next(res for t, res in sent[name] if t.round == rnd) for name in sorted(sent)]
        if rnd == 1:
            assert blocks == ()  # the probe round trains every block
            assert all(set(u.delta) == everything for u in updates)
            continue
        assert len(blocks) == 2 and blocks[-1] == "head"  # k = 1, plus the head
        trained = bmap.tensors_of(blocks)
        for u in updates:
            assert set(u.delta) == trained, "a worker sent a tensor outside the round's blocks"
        base, new = versions[rnd - 1], versions[rnd]
        total = sum(u.num_samples for u in updates)
        for name in everything:
            if name in trained:
                mean = sum(u.delta[name].double() * u.num_samples for u in updates) / total
                torch.testing.assert_close(new[name].double(), base[name].double() + mean, atol=2e-6, rtol=0)
            else:
                assert torch.equal(new[name], base[name]), f"frozen {name} moved"

    store = Store(db_url)
    rounds = store.rounds(store.get_or_create_federation("test").id)
    assert [(r.number, r.probe, r.blocks) for r in rounds] == [
        (1, True, bmap.names),
        (2, False, list(plans[2])),
        (3, False, list(plans[3])),
    ]
    assert rounds[2].raw_bytes_up < rounds[0].raw_bytes_up / 2  # only two small blocks travelled
    # a restarted coordinator rebuilds the same schedule from the stored outcomes
    resumed = Targeting(settings.targeting(), bmap)
    stored = store.block_outcomes(store.get_or_create_federation("test").id)
    resumed.restore(stored)
    assert resumed.last_applied == {
        b: max(r for r in (1, 2, 3) if r == 1 or b in plans[r]) for b in bmap.names
    }
    assert resumed.scores == {b: score for r, b, _, score in stored if r == 3}

    with TestClient(create_app(db_url)) as api:
        outcome = api.get("/api/v1/federations/test/rounds/2/blocks").json()
        assert [o["block"] for o in outcome] == bmap.names
        assert [o["block"] for o in outcome if o["applied"]] == list(plans[2])
        assert all(o["trained"] == o["applied"] == o["fresh"] for o in outcome)  # pre-selected
        assert all(o["score"] is not None for o in outcome)  # carried for the blocks not trained
        assert all((o["agreement"] is None) != o["fresh"] for o in outcome)
        assert all(0.0 <= o["consensus"] <= 1.0 for o in outcome if o["fresh"])
        detail = api.get("/api/v1/federations/test/rounds/3").json()
        assert detail["blocks"] == list(plans[3]) and len(detail["block_outcomes"]) == 6
        m = api.get("/api/v1/federations/test/blocks", params={"metric": "consensus"}).json()
        assert (m["policy"], m["metric"], m["rounds"], m["blocks"]) == (
            "agreement",
            "consensus",
            [1, 2, 3],
            bmap.names,
        )
        for i, block in enumerate(bmap.names):
            assert m["applied"][i] == [True, block in plans[2], block in plans[3]]
        assert all(v is not None for v in (row[0] for row in m["values"]))  # round 1 scored every block
        bad = api.get("/api/v1/federations/test/blocks", params={"metric": "loudness"})
        assert bad.status_code == 422 and "'consensus'" in bad.text  # the message lists the metrics


def test_server_masked_trains_every_block_and_applies_the_chosen_ones(
    tmp_path: Path, db_url: str, three_layer_model: Path
) -> None:
    settings = coordinator_settings(
        tmp_path, db_url, three_layer_model, rounds=2, policy="fedtlu", blocks=2, schedule="server-masked"
    )
    coord = ServedCoordinator(settings)
    sent = run_recording(coord.address, tmp_path)
    coord.wait()
    bmap = block_map(load_model(three_layer_model, synthetic.LABELS)[0])
    ckpt = settings.data_dir / "checkpoints" / "test"
    store = Store(db_url)
    with TestClient(create_app(db_url)) as api:
        for rnd in (1, 2):
            assert all(next(t for t, _ in sent[n] if t.round == rnd).blocks == () for n in sent)
            outcome = api.get(f"/api/v1/federations/test/rounds/{rnd}/blocks").json()
            applied = [o["block"] for o in outcome if o["applied"]]
            assert len(applied) == 3 and applied[-1] == "head" and all(o["trained"] for o in outcome)
            body = [o for o in outcome if o["block"] != "head"]
            chosen = sorted(body, key=lambda o: -o["fedtlu"])[:2]
            assert {o["block"] for o in chosen} == set(applied[:-1])  # the top two by FedTLU's score
            base, new = checkpoint.load(ckpt, rnd - 1), checkpoint.load(ckpt, rnd)
            kept = bmap.tensors_of(applied)
            assert all(torch.equal(new[n], base[n]) for n in base if n not in kept)
            assert any(not torch.equal(new[n], base[n]) for n in kept)
    assert store.rounds(store.get_or_create_federation("test").id)[0].blocks == bmap.names


def test_an_update_carrying_a_tensor_outside_the_rounds_blocks_is_refused_and_recorded(
    tmp_path: Path, three_layer_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 't.db'}"
    settings = coordinator_settings(
        tmp_path,
        db,
        three_layer_model,
        rounds=2,
        min_workers=1,
        min_updates=1,
        policy="agreement",
        blocks=1,
        probe_every=0,
    )
    coord = ServedCoordinator(settings)
    try:
        c = Client(coord.address, TOKENS[0], "org-a")
        model, _ = load_model(three_layer_model, synthetic.LABELS)
        zero = {n: torch.zeros_like(t) for n, t in global_tensors(model).items()}
        first = task_from_proto(c.task())
        assert first.round == 1 and first.blocks == ()
        c.push(update_chunks(c.id, first, result(zero)))
        msg = c.task()
        while msg.round != 2:
            msg = c.task()
        second = task_from_proto(msg)
        # every score is 0 after a zero update: ties go to model order, so k = 1 picks the embeddings
        assert second.blocks == ("embeddings", "head")
        with pytest.raises(grpc.RpcError) as err:
            c.push(update_chunks(c.id, second, result(zero)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "which round 2 does not train (it trains embeddings, head)" in (err.value.details() or "")
        store = Store(db)
        r2 = store.rounds(1)[1]
        (rejected,) = store.updates(r2.id)
        assert rejected.status == "rejected" and "does not train" in (rejected.reject_reason or "")
        bmap = block_map(model)
        allowed = {n: t for n, t in zero.items() if n in bmap.tensors_of(second.blocks)}
        reply = c.push(update_chunks(c.id, second, result(allowed)))
        assert reply.accepted
    finally:
        coord.stop()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (dict(policy="fedtlu", blocks=9), "choose 1 to 5"),
        (dict(policy="agreement", block_budget="1KB"), "below the smallest block"),
    ],
)
def test_a_k_the_model_cannot_meet_is_refused_when_the_federation_is_created(
    tmp_path: Path, three_layer_model: Path, overrides: dict, needle: str
) -> None:
    settings = coordinator_settings(
        tmp_path, f"sqlite:///{tmp_path / 'k.db'}", three_layer_model, **overrides
    )
    with pytest.raises(ValueError, match=needle) as err:
        ServedCoordinator(settings)
    assert "embeddings, layer.0, layer.1, layer.2, pooler" in str(err.value) or "smallest" in needle


def test_task_names_blocks_on_the_wire() -> None:
    t = pb.Task(kind=pb.Task.TRAIN, round=2, blocks=["layer.1", "head"])
    assert task_from_proto(pb.Task.FromString(t.SerializeToString())).blocks == ("layer.1", "head")
