"""Update encoding and upload: Δ plus the carried error as frames, and the residual kept once delivered."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from strata import codec, failpoints, tensorfile
from strata.codec import Codec
from strata.feedback import with_feedback
from strata.frames import header_of, pieces
from strata.member.client import CoordinatorClient
from strata.member.replica import TrainResult
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import RoundTask

log = logging.getLogger("strata.worker")


def encode_update(
    result: TrainResult, task: RoundTask, residual: dict[str, torch.Tensor]
) -> tuple[dict[str, codec.Encoded], dict[str, torch.Tensor]]:
    """The task's encoding of Δ plus the carried error (error feedback for lossy encodings)."""
    return with_feedback(
        result.delta, residual, Codec(task.encoding, task.topk_fraction or 0.1, rank=task.lowrank_rank)
    )


def update_chunks(
    worker_id: str, task: RoundTask, result: TrainResult, encoded: dict[str, codec.Encoded] | None = None
) -> Iterator[pb.UpdateChunk]:
    """The update as a stream: header, then one frame per tensor in ≤1 MiB pieces, then the end marker.

    `encoded` defaults to the task's encoding of result.delta without error feedback.
    """
    if encoded is None:
        encoded, _ = encode_update(result, task, {})
    yield pb.UpdateChunk(
        header=pb.UpdateHeader(
            worker_id=worker_id,
            round=task.round,
            base_version=task.model_version,
            base_hash=task.model_hash,
            num_samples=result.num_samples,
            train_loss=result.loss,
            train_accuracy=result.accuracy,
            train_seconds=result.seconds,
            num_steps=result.num_steps,
            num_tensors=len(encoded),
            local_epsilon=result.local_epsilon,
            local_delta=result.local_delta,
            lora_rank=result.lora_rank,
        )
    )
    for i, name in enumerate(sorted(encoded)):
        enc = encoded[name]
        yield pb.UpdateChunk(tensor=header_of(name, result.delta[name], enc))
        for block in enc.blocks:
            for piece in pieces(block):
                yield pb.UpdateChunk(data=piece)
        if i == len(encoded) // 2:
            failpoints.hit("worker.push.streaming")  # halfway through the update's frames
    yield pb.UpdateChunk(end=pb.UpdateEnd(num_tensors=len(encoded)))


@dataclass
class Pending:
    """A trained, encoded update on its way to the coordinator, and the error-feedback residuals that
    become the worker's once it is delivered."""

    task: RoundTask
    result: TrainResult
    encoded: dict[str, codec.Encoded]
    residual: dict[str, torch.Tensor]
    new_residual: dict[str, torch.Tensor]

    @classmethod
    def encode(cls, task: RoundTask, result: TrainResult, residual_path: Path) -> Pending:
        """Encode a round's Δ with the error the worker carries (kept at `residual_path`)."""
        residual = tensorfile.load(residual_path) if residual_path.is_file() else {}
        encoded, new_residual = encode_update(result, task, residual)
        return cls(task, result, encoded, residual, new_residual)

    def as_sent(self) -> TrainResult:
        """The result with the Δ the coordinator will decode from this update."""
        sent = {n: codec.decode(e).reshape(self.result.delta[n].shape) for n, e in self.encoded.items()}
        return dataclasses.replace(self.result, delta=sent)


def deliver(client: CoordinatorClient, worker_id: str, p: Pending, residual_path: Path) -> bool:
    """Send a pending update: a fresh stream on every attempt, so a connection lost midway restarts it
    from the start. True when the coordinator took it (a coordinator that already holds it answers
    `duplicate`, and it is counted once); then, and only then, the new residual becomes the worker's.
    False when it was not taken (another round by now, or no coordinator). Any other refusal is raised:
    NOT_FOUND (the coordinator restarted and forgot this worker) leaves the update pending."""
    task, result = p.task, p.result
    timeout = max(30.0, task.deadline_unix - time.time() + 30.0)
    try:
        reply = client.call(
            lambda: client.push(update_chunks(worker_id, task, result, p.encoded), timeout), "push"
        )
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
            log.warning("round %d: update not taken (%s: %s)", task.round, err.code().name, err.details())
            return False
        raise
    # the error this round's encoding held back travels with the next update of each tensor; a
    # frozen tensor keeps the residual it had until its block trains again
    carried = {n: e for n, e in p.residual.items() if n not in result.delta} | p.new_residual
    if carried:
        tensorfile.save(residual_path, carried)
    elif p.residual:
        residual_path.unlink(missing_ok=True)
    if reply.duplicate:
        log.info("round %d: the coordinator already had this update; counted once", task.round)
    else:
        log.info(
            "round %d: sent %d bytes (%.1fx smaller than raw), loss %.4f, %.1fs training",
            task.round,
            reply.received_bytes,
            reply.raw_bytes / max(reply.received_bytes, 1),
            result.loss,
            result.seconds,
        )
    return True
