"""A worker that holds the pretrained checkpoint builds a full fine-tuning federation's version 0 itself
(worker/initial_version.py), over real gRPC: round 1 downloads no tensors; a worker whose checkpoint
builds something else downloads version 0 as usual, and both end on the same model."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.store import Store
from strata import synthetic
from strata.modeling import load_model
from strata.proto.v1 import coordinator_pb2 as pb
from tests.helpers import ServedCoordinator, coordinator_settings, make_worker_data, make_workers, run_to_done


@pytest.fixture(scope="module")
def encoder_only(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A pretrained encoder without a classification head (as MiniLM ships): the head is drawn anew."""
    folder = tmp_path_factory.mktemp("encoder")
    model, tokenizer = load_model(tiny_model, synthetic.LABELS)
    model.bert.save_pretrained(folder)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(folder)
    return folder


def test_a_worker_holding_the_checkpoint_downloads_nothing_in_round_1(
    tmp_path: Path, encoder_only: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'i.db'}"
    settings = coordinator_settings(
        tmp_path,
        db,
        encoder_only,
        rounds=2,
        min_workers=2,
        min_updates=2,
        seed=7,
        labels=",".join(synthetic.LABELS),
    )
    coord = ServedCoordinator(settings)
    workers = make_workers(coord.address, make_worker_data(tmp_path / "d", 2), tmp_path)
    holds, other = workers
    holds.s = holds.s.model_copy(update={"base_model": str(encoder_only)})
    # the other worker's checkpoint has a trained head of its own: its build is not version 0
    other.s = other.s.model_copy(update={"base_model": str(tiny_model)})
    try:
        run_to_done(workers)
        coord.wait()
    finally:
        for w in workers:
            w.close()
    assert holds.copy.snapshots == 0 and other.copy.snapshots == 1
    assert holds.copy.hash == other.copy.hash == coord.server.runner.gm.hashes[1]
    store = Store(db)
    try:
        first = store.rounds(1)[0]
    finally:
        store.close()
    assert (
        first.state == "completed" and first.raw_bytes_down < 0.6 * first.raw_bytes_up
    )  # one snapshot of two


def test_the_join_reply_announces_version_0_only_for_full_fine_tuning(
    tmp_path: Path, encoder_only: Path
) -> None:
    from coordinator.global_model import GlobalModel
    from strata.version import assets_hash

    settings = coordinator_settings(tmp_path, f"sqlite:///{tmp_path / 'j.db'}", encoder_only, seed=3,
                                    labels=",".join(synthetic.LABELS))  # fmt: skip
    coord = ServedCoordinator(settings)
    try:
        gm: GlobalModel = coord.server.runner.gm
        fields = gm.initial(3)
        assert fields == {"initial_hash": gm.hashes[0], "init_seed": 3, "assets_hash": assets_hash(gm.assets)}
        reply = pb.JoinReply(**fields)
        assert reply.initial_hash == gm.hash
    finally:
        coord.stop()
