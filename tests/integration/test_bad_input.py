"""What bad or hostile calls get: precise status codes, nothing stored, rounds that keep going."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from coordinator.store import Store
from strata import synthetic
from strata.member.replica import TrainResult
from strata.member.upload import update_chunks
from strata.modeling import global_tensors, load_model
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc
from strata.serde import task_from_proto
from tests.helpers import TOKENS, ServedCoordinator, coordinator_settings, wait_until


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


class Client:
    """A hand-driven worker: raw stub calls, so a test can send anything."""

    def __init__(self, address: str, token: str, name: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.md = auth(token)
        self.id = self.stub.Join(pb.JoinRequest(name=name, num_samples=10), metadata=self.md).worker_id

    def task(self) -> pb.Task:
        for _ in range(20):
            t = self.stub.GetTask(pb.TaskRequest(worker_id=self.id, wait_seconds=2), metadata=self.md)
            if t.kind == pb.Task.TRAIN:
                return t
        raise TimeoutError("no task")

    def push(self, chunks: Iterator[pb.UpdateChunk]) -> pb.PushReply:
        return self.stub.PushUpdate(chunks, metadata=self.md, timeout=30)


@pytest.fixture
def zero_delta(tiny_model: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(tiny_model, synthetic.LABELS)
    return {n: torch.zeros_like(t) for n, t in global_tensors(model).items()}


@pytest.fixture
def served(tmp_path: Path, tiny_model: Path) -> Iterator[tuple[ServedCoordinator, str]]:
    db = f"sqlite:///{tmp_path / 'bad.db'}"
    coord = ServedCoordinator(
        coordinator_settings(
            tmp_path, db, tiny_model, rounds=1, min_workers=1, min_updates=1, round_timeout=60
        )
    )
    yield coord, db
    coord.stop()


def result(delta: dict[str, torch.Tensor], n: int = 10) -> TrainResult:
    return TrainResult(delta, n, 1, 0.5, 0.5, 0.1)


def test_missing_or_unknown_token_is_unauthenticated_and_health_and_reflection_are_open(served) -> None:  # type: ignore[no-untyped-def]
    coord, _ = served
    with grpc.insecure_channel(coord.address) as ch:
        stub = pb_grpc.CoordinatorStub(ch)
        for md in [(), auth("not-a-token-at-all")]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Join(pb.JoinRequest(name="x", num_samples=1), metadata=md)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.PullModel(pb.PullRequest(worker_id="x"), metadata=auth("nope-nope-nope")))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="strata.v1.Coordinator")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (reply,) = list(
            refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in reply.list_services_response.service}
        assert "strata.v1.Coordinator" in names


def test_a_token_cannot_act_for_another_workers_id(served) -> None:  # type: ignore[no-untyped-def]
    coord, _ = served
    a = Client(coord.address, TOKENS[0], "org-a")
    with pytest.raises(grpc.RpcError) as err:
        a.stub.GetTask(pb.TaskRequest(worker_id=a.id, wait_seconds=1), metadata=auth(TOKENS[1]))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        a.stub.Join(pb.JoinRequest(name="org-a", num_samples=5), metadata=auth(TOKENS[1]))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_wrong_round_or_base_is_refused_without_changing_anything_then_a_good_update_lands(
    served, zero_delta
) -> None:  # type: ignore[no-untyped-def]
    coord, db = served
    c = Client(coord.address, TOKENS[0], "org-a")
    task = task_from_proto(c.task())
    wrong_round = task.__class__(**{**{f: getattr(task, f) for f in task.__slots__}, "round": task.round + 5})
    wrong_base = task.__class__(**{**{f: getattr(task, f) for f in task.__slots__}, "model_hash": "0" * 64})
    for bad in (wrong_round, wrong_base):
        with pytest.raises(grpc.RpcError) as err:
            c.push(update_chunks(c.id, bad, result(zero_delta)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    store = Store(db)
    (r,) = store.rounds(1)
    assert r.state == "open" and store.updates(r.id) == []

    # a corrupt frame: flip a payload byte of the first tensor, so its CRC no longer matches
    def corrupt() -> Iterator[pb.UpdateChunk]:
        flipped = False
        for ch in update_chunks(c.id, task, result(zero_delta)):
            if ch.WhichOneof("part") == "data" and not flipped:
                data = bytearray(ch.data)
                data[len(data) // 2] ^= 0xFF
                ch = pb.UpdateChunk(data=bytes(data))
                flipped = True
            yield ch

    with pytest.raises(grpc.RpcError) as err:
        c.push(corrupt())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "checksum" in (err.value.details() or "") or "corrupt" in (err.value.details() or "")
    (rejected,) = store.updates(r.id)
    assert rejected.status == "rejected" and rejected.reject_reason

    # NaN in a tensor is refused and named
    nan_delta = dict(zero_delta)
    first = sorted(nan_delta)[0]
    nan_delta[first] = torch.full_like(nan_delta[first], float("nan"))
    with pytest.raises(grpc.RpcError) as err:
        c.push(update_chunks(c.id, task, result(nan_delta)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and first in (err.value.details() or "")

    # an update that carries no tensor is refused (a subset is fine: only trained tensors travel)
    with pytest.raises(grpc.RpcError) as err:
        c.push(update_chunks(c.id, task, result({})))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # the round is still open and takes a good update; a second one is a duplicate
    delta = {n: torch.full_like(t, 0.01) for n, t in zero_delta.items()}
    reply = c.push(update_chunks(c.id, task, result(delta)))
    assert reply.accepted
    coord.wait(60)
    (r,) = store.rounds(1)
    assert r.state == "completed" and r.num_updates == 1
    statuses = sorted(u.status for u in store.updates(r.id))
    assert statuses == ["accepted", "rejected", "rejected", "rejected"]
    store.close()


def test_a_stream_cut_off_midway_is_discarded_whole(served, zero_delta) -> None:  # type: ignore[no-untyped-def]
    coord, db = served
    c = Client(coord.address, TOKENS[0], "org-a")
    task = task_from_proto(c.task())

    class Cut(Exception):
        pass

    def cut() -> Iterator[pb.UpdateChunk]:
        for i, ch in enumerate(update_chunks(c.id, task, result(zero_delta))):
            if i == 6:
                raise Cut
            yield ch

    with pytest.raises((grpc.RpcError, Cut)):
        c.push(cut())
    store = Store(db)
    (r,) = store.rounds(1)
    wait_until(lambda: len(store.updates(r.id)) == 1)
    (u,) = store.updates(r.id)
    assert u.status == "rejected"
    assert r.state == "open"
    assert not any(p.name.endswith(".update") for p in (coord.server.settings.data_dir / "spool").rglob("*"))
    reply = c.push(update_chunks(c.id, task, result(zero_delta)))
    assert reply.accepted
    coord.wait(60)
    store.close()


def test_a_vanished_worker_does_not_stall_the_round_past_its_deadline(
    tmp_path: Path, tiny_model: Path, zero_delta
) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'v.db'}"
    coord = ServedCoordinator(
        coordinator_settings(
            tmp_path, db, tiny_model, rounds=1, min_workers=2, min_updates=1, round_timeout=3
        )
    )
    try:
        present = Client(coord.address, TOKENS[0], "present")
        vanished = Client(coord.address, TOKENS[1], "vanished")
        t0 = time.monotonic()
        vanished.task()  # takes the task, then never answers
        task = task_from_proto(present.task())
        assert present.push(update_chunks(present.id, task, result(zero_delta))).accepted
        coord.wait(30)
        assert time.monotonic() - t0 < 15
        store = Store(db)
        (r,) = store.rounds(1)
        assert (r.state, r.num_updates, sorted(r.participants)) == ("completed", 1, ["present", "vanished"])
        store.close()
    finally:
        coord.stop()


def test_a_round_below_its_quorum_fails_visibly(tmp_path: Path, tiny_model: Path) -> None:
    db = f"sqlite:///{tmp_path / 'q.db'}"
    coord = ServedCoordinator(
        coordinator_settings(
            tmp_path,
            db,
            tiny_model,
            rounds=1,
            min_workers=1,
            min_updates=1,
            round_timeout=1,
            max_failed_rounds=2,
            on_failed_rounds="fail",
        )
    )
    try:
        c = Client(coord.address, TOKENS[0], "silent")
        c.task()
        coord.thread.join(30)
        assert isinstance(coord.error, RuntimeError)
        store = Store(db)
        rounds = store.rounds(1)
        assert [r.state for r in rounds] == ["failed", "failed"] and "quorum" in (rounds[0].error or "")
        assert store.federation(1).state == "failed"
        store.close()
    finally:
        coord.stop()


def test_a_worker_token_over_its_rate_limit_gets_resource_exhausted(tmp_path: Path, tiny_model: Path) -> None:
    settings = coordinator_settings(
        tmp_path, f"sqlite:///{tmp_path / 'rate.db'}", tiny_model, rate_limit=1.0, rate_burst=3
    )
    coord = ServedCoordinator(settings)
    try:
        with grpc.insecure_channel(coord.address) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            codes = []
            for _ in range(6):
                try:
                    stub.Join(
                        pb.JoinRequest(name="org-a", num_samples=5), metadata=auth(TOKENS[0]), timeout=10
                    )
                    codes.append("OK")
                except grpc.RpcError as err:
                    codes.append(err.code().name)
                    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "rate limit" in (err.details() or "")
            assert codes[:3] == ["OK"] * 3 and "RESOURCE_EXHAUSTED" in codes[3:]
            # another organisation's token is not affected
            stub.Join(pb.JoinRequest(name="org-b", num_samples=5), metadata=auth(TOKENS[1]), timeout=10)
            time.sleep(1.1)  # the bucket refills
            stub.Join(pb.JoinRequest(name="org-a", num_samples=5), metadata=auth(TOKENS[0]), timeout=10)
    finally:
        coord.stop()


def test_a_replayed_update_is_acknowledged_as_a_duplicate_and_counted_once(
    tmp_path: Path, tiny_model: Path, zero_delta
) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'dup.db'}"
    coord = ServedCoordinator(
        coordinator_settings(tmp_path, db, tiny_model, rounds=2, min_workers=1, min_updates=1)
    )
    try:
        c = Client(coord.address, TOKENS[0], "org-a")
        delta = {n: torch.full_like(t, 0.01) for n, t in zero_delta.items()}
        task1 = task_from_proto(c.task())
        first = c.push(update_chunks(c.id, task1, result(delta)))
        assert first.accepted and not first.duplicate
        again = c.push(update_chunks(c.id, task1, result(delta)))  # the reply was "lost": sent again
        assert again.accepted and again.duplicate
        task2 = task_from_proto(c.task())
        late = c.push(update_chunks(c.id, task1, result(delta)))  # replayed into the next round
        assert late.accepted and late.duplicate and late.received_bytes == first.received_bytes
        forged = task1.__class__(**{**{f: getattr(task1, f) for f in task1.__slots__}, "model_version": 7})
        with pytest.raises(grpc.RpcError) as err:  # not the update it claims to repeat
            c.push(update_chunks(c.id, forged, result(delta)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert c.push(update_chunks(c.id, task2, result(delta))).accepted
        coord.wait(60)
        store = Store(db)
        rounds = store.rounds(1)
        assert [(r.state, r.num_updates) for r in rounds] == [("completed", 1), ("completed", 1)]
        assert [u.status for r in rounds for u in store.updates(r.id)] == ["accepted", "accepted"]
        store.close()
    finally:
        coord.stop()


def test_oversized_messages_and_streams_are_refused(served, zero_delta) -> None:  # type: ignore[no-untyped-def]
    coord, db = served
    c = Client(coord.address, TOKENS[0], "org-a")
    task = task_from_proto(c.task())
    chunks = list(update_chunks(c.id, task, result(zero_delta)))

    with pytest.raises(grpc.RpcError) as err:  # one message over the 8 MiB limit
        c.push(iter([chunks[0], pb.UpdateChunk(data=b"\0" * (9 << 20))]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:  # more bytes than the tensor's frame announced
        c.push(iter([*chunks[:-1], pb.UpdateChunk(data=b"\0" * 1024), chunks[-1]]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    big = pb.UpdateChunk()
    big.CopyFrom(chunks[1])
    big.tensor.payload_bytes = 1 << 40  # a frame announcing a terabyte
    with pytest.raises(grpc.RpcError) as err:
        c.push(iter([chunks[0], big]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    store = Store(db)
    (r,) = store.rounds(1)
    assert r.state == "open" and all(u.status == "rejected" for u in store.updates(r.id))
    assert not any(p.suffix == ".update" for p in (coord.server.settings.data_dir / "spool").rglob("*"))
    assert c.push(iter(chunks)).accepted  # and the round still takes a good update
    coord.wait(60)
    store.close()


def test_over_selection_closes_the_round_at_its_target_and_refuses_the_straggler(
    tmp_path: Path, tiny_model: Path, zero_delta
) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'over.db'}"
    coord = ServedCoordinator(
        coordinator_settings(
            tmp_path,
            db,
            tiny_model,
            rounds=1,
            min_workers=3,
            min_updates=2,
            workers_per_round=2,
            over_selection=0.5,
        )
    )
    try:
        clients = [Client(coord.address, TOKENS[k], f"org-{k}") for k in range(3)]
        tasks = [task_from_proto(c.task()) for c in clients]  # 3 invited for a target of 2
        for c, t in zip(clients[:2], tasks[:2], strict=True):
            assert c.push(update_chunks(c.id, t, result(zero_delta))).accepted
        with pytest.raises(grpc.RpcError) as err:
            clients[2].push(update_chunks(clients[2].id, tasks[2], result(zero_delta)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "it had its 2 update(s)" in (err.value.details() or "")
        coord.wait(60)
        store = Store(db)
        (r,) = store.rounds(1)
        assert (r.state, r.num_updates, len(r.participants)) == ("completed", 2, 3)
        store.close()
    finally:
        coord.stop()


def test_rounds_that_keep_missing_their_quorum_pause_the_federation_until_resumed(
    tmp_path: Path, tiny_model: Path, zero_delta
) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'pause.db'}"
    coord = ServedCoordinator(
        coordinator_settings(
            tmp_path,
            db,
            tiny_model,
            rounds=1,
            min_workers=1,
            min_updates=1,
            round_timeout=1,
            max_failed_rounds=2,
            control_poll_seconds=0.2,
        )
    )
    store = Store(db)
    try:
        c = Client(coord.address, TOKENS[0], "org-a")
        c.task()  # takes round 1's task and stays silent, then round 2's
        wait_until(lambda: store.federation(1).state == "paused", timeout=30)
        fed = store.federation(1)
        assert "2 consecutive rounds missed their quorum" in (fed.error or "") and "resume" in (
            fed.error or ""
        )
        assert [r.state for r in store.rounds(1)] == ["failed", "failed"]
        time.sleep(1.0)
        assert len(store.rounds(1)) == 2  # paused: no new round opens
        store.update_federation(1, desired_state="running")  # what `strata admin resume` writes
        task = task_from_proto(c.task())
        assert task.round == 3
        assert c.push(update_chunks(c.id, task, result(zero_delta))).accepted
        coord.wait(60)
        assert store.federation(1).state == "completed" and store.federation(1).error is None
    finally:
        store.close()
        coord.stop()
