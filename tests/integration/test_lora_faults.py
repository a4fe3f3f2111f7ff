"""A LoRA federation's bad input and faults: a rank above the federation's, a base model whose hash differs,
4-bit on a CPU, bad base-model requests, a restart with other adapter settings, and a base-model download
cut by a coordinator killed mid-stream, resumed where it stopped."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from strata.base_model import file_sha256
from strata.modeling import make_tiny_model_dir
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc
from tests.helpers import (
    TOKENS,
    CoordinatorProcess,
    ServedCoordinator,
    coordinator_settings,
    coordinator_values,
    make_model,
    make_worker_data,
    make_workers,
)
from worker.errors import WorkerError


@pytest.fixture
def lora_coordinator(tmp_path: Path, tiny_model: Path) -> Any:
    s = coordinator_settings(
        tmp_path, f"sqlite:///{tmp_path / 'x.db'}", tiny_model, lora_rank=4, min_workers=1
    )
    coord = ServedCoordinator(s)
    yield coord
    coord.stop()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"lora_rank": 8}, "lora_rank:? 8 is above the federation's rank 4"),
        ({"quantize_base": "4bit"}, "quantize_base 4bit: a quantized base .* needs a CUDA GPU"),
        ({"base_model": "OTHER"}, "base_model: .* differs from the federation's base"),
    ],
)
def test_a_worker_refuses_what_it_cannot_do_and_says_which_setting(
    tmp_path: Path, lora_coordinator: Any, extra: dict[str, Any], message: str
) -> None:
    if extra.get("base_model") == "OTHER":
        extra = {"base_model": str(make_model(tmp_path / "other-model", seed=1))}
    [w] = make_workers(
        lora_coordinator.address, make_worker_data(tmp_path / "data", 1), tmp_path, extra=extra
    )
    try:
        with pytest.raises(WorkerError, match=message):
            w.join()
    finally:
        w.close()


def call(address: str, method: str, request: Any) -> Any:
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.CoordinatorStub(ch)
        meta = (("authorization", f"Bearer {TOKENS[0]}"),)
        result = getattr(stub, method)(request, metadata=meta, timeout=30)
        return list(result) if method == "PullBase" else result


def test_the_coordinator_refuses_bad_ranks_and_bad_base_requests(lora_coordinator: Any) -> None:
    address = lora_coordinator.address
    with pytest.raises(grpc.RpcError) as err:
        call(address, "Join", pb.JoinRequest(name="big", num_samples=5, lora_rank=5))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "above the federation's rank 4" in err.value.details()
    )
    uid = call(address, "Join", pb.JoinRequest(name="ok", num_samples=5, lora_rank=2)).worker_id
    [manifest] = call(address, "PullBase", pb.BaseRequest(worker_id=uid))
    files = {f.name: f for f in manifest.manifest.files}
    assert "model.safetensors" in files and "config.json" in files and manifest.manifest.base_hash
    for req, why in [
        (pb.BaseRequest(worker_id=uid, file="../strata.db"), "is not part of the base model"),
        (pb.BaseRequest(worker_id=uid, file="config.json", offset=10**9), "past the end of config.json"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(address, "PullBase", req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in err.value.details()
    tail = call(address, "PullBase", pb.BaseRequest(worker_id=uid, file="config.json", offset=5))
    assert (
        b"".join(c.data for c in tail)
        == (lora_coordinator.server.settings.model / "config.json").read_bytes()[5:]
    )


def test_a_plain_federation_has_no_base_to_pull_and_a_restart_cannot_change_the_adapter(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    coord = ServedCoordinator(coordinator_settings(tmp_path, db, tiny_model, min_workers=1))
    try:
        uid = call(coord.address, "Join", pb.JoinRequest(name="w", num_samples=5)).worker_id
        with pytest.raises(grpc.RpcError) as err:
            call(coord.address, "PullBase", pb.BaseRequest(worker_id=uid))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        coord.stop()
    with pytest.raises(ValueError, match="was created with LoRA adapter none"):
        ServedCoordinator(coordinator_settings(tmp_path, db, tiny_model, lora_rank=4))


def test_a_base_download_cut_by_a_killed_coordinator_resumes_where_it_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from strata import synthetic

    train, _ = synthetic.generate_splits(200, 10, seed=1)
    # about 5 MB of weights: several 1 MiB pieces, so the coordinator dies mid-file
    model = make_tiny_model_dir(
        tmp_path / "model", [e.text for e in train], synthetic.LABELS, hidden_size=256, num_layers=1,
        num_heads=4, vocab_size=2000, max_len=32,
    )  # fmt: skip
    values = coordinator_values(
        tmp_path,
        f"sqlite:///{tmp_path / 'cut.db'}",
        model,
        lora_rank=4,
        min_workers=1,
        min_updates=1,
        rounds=1,
    )
    proc = CoordinatorProcess(values, tmp_path / "logs", "coordinator")
    proc.start(failpoint="coordinator.base.streaming@2")
    [w] = make_workers(
        proc.address, make_worker_data(tmp_path / "data", 1), tmp_path, extra={"connect_timeout": 120}
    )
    caplog.set_level(logging.INFO, logger="strata.worker")
    done: list[Any] = []
    t = threading.Thread(target=lambda: done.append(w.run()), daemon=True)
    t.start()
    try:
        assert proc.wait(120) != 0  # killed at the second piece of the base model
        proc.start()  # the same port, database and data folder
        t.join(240)
        assert done == [1], proc.text()
    finally:
        w.close()
        proc.kill()
    cut = [r.getMessage() for r in caplog.records if "cut at" in r.getMessage()]
    assert cut and any("model.safetensors cut at" in m and " 0 bytes" not in m for m in cut), cut
    spec = w.spec
    assert spec is not None
    cached = tmp_path / w.s.name / "base" / spec.base_hash[:32] / "model.safetensors"
    assert file_sha256(cached) == file_sha256(model / "model.safetensors")
