"""S2 over real gRPC: lossy encodings both ways keep every copy of the model identical, workers get
the global updates since their version (or a snapshot), and a bad or late upload leaves no trace."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from coordinator import checkpoint
from coordinator.store import Store
from coordinator.versions import read_frames
from strata import synthetic
from strata.member.upload import update_chunks
from strata.modeling import global_tensors, load_model
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import task_from_proto
from strata.version import model_hash
from tests.helpers import (
    TOKENS,
    ServedCoordinator,
    coordinator_settings,
    make_worker_data,
    make_workers,
    run_to_done,
    wait_until,
)
from tests.integration.test_bad_input import Client, result


@pytest.mark.parametrize(
    ("up", "down"), [("int8", "int8"), ("topk", "bf16"), ("bf16", "topk"), ("lowrank", "lowrank")]
)
def test_lossy_rounds_keep_every_copy_identical(tmp_path: Path, tiny_model: Path, up: str, down: str) -> None:
    db = f"sqlite:///{tmp_path / 'l.db'}"
    settings = coordinator_settings(
        tmp_path,
        db,
        tiny_model,
        rounds=4,
        min_workers=2,
        min_updates=2,
        encoding=up,
        down_encoding=down,
        topk_fraction=0.2,
        lowrank_rank=2,  # the tiny model's 32 × 32 matrices gain at rank 2, not at the default 8
    )
    coord = ServedCoordinator(settings)
    workers = make_workers(coord.address, make_worker_data(tmp_path / "d", 2), tmp_path)
    run_to_done(workers)
    coord.wait()
    final = checkpoint.load(settings.data_dir / "checkpoints" / "test", 4)
    for w in workers:
        # each worker applied 3 global updates to its first snapshot and checked the hash every time
        assert w.copy.snapshots == 1 and w.copy.version == 3 and w.rounds_done == 4
        assert w.residual_path.is_file()  # the error its lossy encoding held back, kept on disk
        w.close()
    store = Store(db)
    rounds = store.rounds(1)
    assert [r.state for r in rounds] == ["completed"] * 4 and rounds[-1].result_hash == model_hash(final)
    assert all(r.raw_bytes_up > 2 * r.bytes_up for r in rounds)  # lossy upstream is much smaller than fp32
    assert all(r.raw_bytes_down > r.bytes_down for r in rounds[1:])
    if up == "lowrank":  # the matrices' updates travel as factors, both ways
        assert all(r.raw_bytes_up > 15 * r.bytes_up for r in rounds)  # int8 alone: about 4x
        assert all(r.raw_bytes_down > 15 * r.bytes_down for r in rounds[1:])
        versions = settings.data_dir / "versions" / "test"
        encodings = {
            h.encoding for kind, h in read_frames(next(versions.glob("update-v*.frames"))) if kind == "tensor"
        }
        assert encodings == {"lowrank", "int8"}
    store.close()
    # the coordinator keeps its own error-feedback residual for the lossy downstream encoding
    assert checkpoint.residual_path(settings.data_dir / "checkpoints" / "test", 4).is_file()


def test_a_worker_too_far_behind_gets_a_snapshot_and_one_close_behind_gets_updates(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'h.db'}"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, rounds=3, min_workers=1, min_updates=1, history=2
    )
    coord = ServedCoordinator(settings)
    try:
        c = Client(coord.address, TOKENS[0], "driver")
        model, _ = load_model(tiny_model, synthetic.LABELS)
        v0 = {n: t.clone() for n, t in global_tensors(model).items()}
        hashes = [model_hash(v0)]
        for _ in range(3):  # three rounds, each moving every tensor by 0.01
            task = task_from_proto(c.task())
            c.push(update_chunks(c.id, task, result({n: torch.full_like(t, 0.01) for n, t in v0.items()})))
            deadline = time.monotonic() + 30
            while coord.server.runner.gm.version < task.model_version + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            hashes.append(coord.server.runner.gm.hash)

        def kind(have: int, have_hash: str) -> int:
            chunks = c.stub.PullModel(
                pb.PullRequest(worker_id=c.id, have_version=have, have_hash=have_hash), metadata=c.md
            )
            return next(iter(chunks)).header.kind

        assert kind(3, hashes[3]) == pb.ModelHeader.CURRENT
        assert kind(2, hashes[2]) == pb.ModelHeader.UPDATES
        assert kind(1, hashes[1]) == pb.ModelHeader.UPDATES
        assert kind(0, hashes[0]) == pb.ModelHeader.SNAPSHOT  # 3 updates behind, history keeps 2
        assert kind(2, "f" * 64) == pb.ModelHeader.SNAPSHOT  # a hash we never had
        assert kind(2, "") == pb.ModelHeader.SNAPSHOT
        coord.wait(30)
    finally:
        coord.stop()


def test_an_update_refused_midway_and_a_late_one_leave_no_trace(tmp_path: Path, tiny_model: Path) -> None:
    """A NaN in the last tensor, after the others were already accumulated, and an upload still in
    flight at the deadline: the new version is the base plus exactly the one good update."""
    db = f"sqlite:///{tmp_path / 'n.db'}"
    coord = ServedCoordinator(
        coordinator_settings(
            tmp_path, db, tiny_model, rounds=1, min_workers=2, min_updates=1, round_timeout=4
        )
    )
    try:
        good, slow = Client(coord.address, TOKENS[0], "good"), Client(coord.address, TOKENS[1], "slow")
        model, _ = load_model(tiny_model, synthetic.LABELS)
        v0 = {n: t.clone() for n, t in global_tensors(model).items()}
        task = task_from_proto(good.task())
        slow.task()
        names = sorted(v0)
        bad = {n: torch.full_like(t, 0.5) for n, t in v0.items()}
        bad[names[-1]] = torch.full_like(v0[names[-1]], float("nan"))
        with pytest.raises(grpc.RpcError) as err:
            good.push(update_chunks(good.id, task, result(bad)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # the slow worker sends all but its end marker, then stalls past the deadline
        release = threading.Event()

        def stalled():  # type: ignore[no-untyped-def]
            for ch in update_chunks(
                slow.id, task, result({n: torch.full_like(t, 7.0) for n, t in v0.items()})
            ):
                if ch.WhichOneof("part") == "end":
                    release.wait(30)
                yield ch

        late: list[BaseException] = []

        def send() -> None:
            try:
                slow.push(stalled())
            except grpc.RpcError as exc:
                late.append(exc)

        t = threading.Thread(target=send)
        t.start()
        delta = {n: torch.full_like(t_, 0.25) for n, t_ in v0.items()}
        assert good.push(update_chunks(good.id, task, result(delta))).accepted
        store = Store(db)
        wait_until(lambda: store.rounds(1)[0].state == "completed", timeout=30)  # closed at its deadline
        release.set()  # now the slow worker's end marker arrives, too late
        t.join(30)
        coord.wait(30)
        v1 = checkpoint.load(coord.server.settings.data_dir / "checkpoints" / "test", 1)
        for n in v0:
            torch.testing.assert_close(v1[n], v0[n] + 0.25, atol=1e-6, rtol=0)
        (r,) = store.rounds(1)
        statuses = sorted(u.status for u in store.updates(r.id))
        assert statuses == ["accepted", "late", "rejected"]
        assert late and late[0].code() == grpc.StatusCode.FAILED_PRECONDITION
        store.close()
    finally:
        coord.stop()
