"""The worker's loop: join, wait for a task, pull the version, evaluate it, train, push the delta."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from strata import __version__, codec, failpoints, tensorfile
from strata.codec import Codec
from strata.data import DataError, Example, find_split, read_examples, read_labels
from strata.errors import InvalidInput
from strata.feedback import with_feedback
from strata.frames import FrameAssembler, add_update, expected_of, header_of, pieces
from strata.layers import BlockMap, block_map, set_trainable
from strata.memory import tune_malloc
from strata.modeling import (
    evaluate,
    global_tensors,
    model_from_assets,
    pick_device,
    write_assets,
)
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import RoundTask, task_from_proto, task_to_proto
from strata.split import holdout
from strata.version import model_hash
from worker import distributed
from worker.client import CoordinatorClient
from worker.settings import WorkerSettings
from worker.trainer import TrainResult, train

log = logging.getLogger("strata.worker")


class WorkerError(RuntimeError):
    """The worker cannot go on (bad local data, a model that does not match, a refused update)."""


@dataclass
class LocalData:
    train: list[Example]
    eval: list[Example]


def load_local_data(settings: WorkerSettings) -> tuple[LocalData, list[str] | None]:
    """The worker's own examples: a data folder (train + test splits, labels.json) or one file plus a
    hold-out. Returns the data and the folder's label names, if it has them."""
    if settings.data is None:
        raise WorkerError("data: give the local training data (--data FILE or folder)")
    path = settings.data
    labels: list[str] | None = None
    # unlabelled lines are read (label -1) so a causal-lm federation can use plain text; a classification
    # federation refuses them after joining (check_labels), when the worker knows the task
    if path.is_dir():
        if (path / "labels.json").is_file():
            labels = read_labels(path)
        train_set = read_examples(find_split(path, "train"), labels, require_labels=False)
        try:
            eval_set = read_examples(find_split(path, "test"), labels, require_labels=False)
        except DataError:
            eval_set = []
    else:
        train_set, eval_set = read_examples(path, require_labels=False), []
    if settings.eval_data is not None:
        eval_set = read_examples(settings.eval_data, labels, require_labels=False)
    if not eval_set and settings.eval_fraction > 0 and len(train_set) >= 2:
        keep, held = holdout(list(range(len(train_set))), settings.eval_fraction, seed=0)
        train_set, eval_set = [train_set[i] for i in keep], [train_set[i] for i in held]
    if not train_set:
        raise WorkerError(f"{path}: no training examples")
    return LocalData(train_set, eval_set), labels


def check_labels(
    data: LocalData,
    local_labels: list[str] | None,
    federation_labels: list[str],
    task: str = "sequence-classification",
) -> None:
    """Refuse local data whose classes do not match the federation's (a causal-lm federation needs text only)."""
    if task == "causal-lm":
        return
    unlabelled = sum(1 for ex in data.train + data.eval if ex.label < 0)
    if unlabelled:
        raise WorkerError(
            f"{unlabelled} local example(s) have no label; a {task} federation needs a label on every example"
        )
    if local_labels is not None and local_labels != federation_labels:
        raise WorkerError(
            f"local labels {local_labels} differ from the federation's labels {federation_labels}"
        )
    top = max(ex.label for ex in data.train + data.eval)
    if top >= len(federation_labels):
        raise WorkerError(
            f"label {top} is out of range for the federation's {len(federation_labels)} classes"
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


def encode_update(
    result: TrainResult, task: RoundTask, residual: dict[str, torch.Tensor]
) -> tuple[dict[str, codec.Encoded], dict[str, torch.Tensor]]:
    """The task's encoding of Δ plus the carried error (error feedback for lossy encodings)."""
    return with_feedback(result.delta, residual, Codec(task.encoding, task.topk_fraction or 0.1))


@dataclass
class Pending:
    """A trained, encoded update on its way to the coordinator, and the error-feedback residuals that
    become the worker's once it is delivered."""

    task: RoundTask
    result: TrainResult
    encoded: dict[str, codec.Encoded]
    residual: dict[str, torch.Tensor]
    new_residual: dict[str, torch.Tensor]


class Worker:
    """One organisation's worker. `run()` returns when the federation is done."""

    def __init__(
        self,
        settings: WorkerSettings,
        on_update: Callable[[RoundTask, TrainResult], None] | None = None,
        rank: distributed.Rank | None = None,
    ) -> None:
        self.s = settings
        self.rank = rank  # rank 0 of a torchrun group: the other ranks train with it (worker.distributed)
        self.device = rank.device if rank is not None else pick_device(settings.device)
        self.client = CoordinatorClient(
            settings.coordinator,
            settings.token.get_secret_value(),
            settings.connect_timeout,
            settings.max_backoff,
            credentials=settings.channel_credentials(),
            server_name=settings.tls_server_name,
        )
        self.on_update = on_update
        self.model: PreTrainedModel | None = None
        self.bmap: BlockMap | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.version = 0
        self.hash = ""
        self.evaluated: set[int] = set()
        self.rounds_done = 0
        self.snapshots = 0  # full downloads; the rest were global updates
        self.dirty = False  # True while the model may not equal any version (a download was cut)
        self.data: LocalData | None = None
        self.local_labels: list[str] | None = None
        self.max_seq_len = 128
        self.pending: Pending | None = None  # a trained update not yet delivered

    def close(self) -> None:
        self.client.close()

    def join(self) -> None:
        if self.data is None:
            self.data, self.local_labels = load_local_data(self.s)
        reply = self.client.join(
            pb.JoinRequest(
                name=self.s.name,
                num_samples=len(self.data.train),
                num_eval_samples=len(self.data.eval),
                device=self.device,
                version=__version__,
            )
        )
        check_labels(
            self.data, self.local_labels, list(reply.labels), reply.task_kind or "sequence-classification"
        )
        self.worker_id = reply.worker_id
        self.federation = reply.federation
        self.residual_path = self.s.cache_dir / reply.federation / f"{self.s.name}-residual.safetensors"
        log.info(
            "%s joined federation %s: %d training / %d held-out examples on %s",
            self.s.name,
            reply.federation,
            len(self.data.train),
            len(self.data.eval),
            self.device,
        )

    def run(self) -> int:
        """Serve rounds until DONE; returns the number of rounds this worker trained in."""
        self.join()
        while True:
            try:
                if self.pending is not None:  # an update whose delivery a coordinator restart cut off
                    self.deliver()
                    continue
                task_msg = self.client.get_task(self.worker_id, self.s.poll_seconds)
                if task_msg.kind == pb.Task.DONE:
                    log.info("%s: federation finished after %d round(s) here", self.s.name, self.rounds_done)
                    return self.rounds_done
                if task_msg.kind == pb.Task.TRAIN:
                    self.run_round(task_from_proto(task_msg))
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                # the coordinator restarted and forgot this worker's session: join again and carry on
                log.info("coordinator does not know this worker any more; joining again")
                self.join()

    def run_round(self, task: RoundTask) -> None:
        self.ensure_version(task.model_version, task.model_hash)
        self.max_seq_len = task.config.max_seq_len
        self.evaluate_version(task.round)
        assert self.data is not None and self.model is not None and self.tokenizer is not None
        assert self.bmap is not None
        try:  # only the round's blocks train: the rest get no gradients and no optimizer state
            trainable = set_trainable(self.model, self.bmap, task.blocks)
        except ValueError as exc:
            raise WorkerError(f"round {task.round}: {exc}") from None
        if self.rank is not None:  # the other ranks train this task too, from the same weights
            distributed.announce_round(
                self.s.cache_dir / self.federation / "assets",
                self.federation,
                task_to_proto(task).SerializeToString(),
                self.device,
            )
            distributed.broadcast_weights(self.model)
        if task.blocks:
            log.info(
                "round %d trains %s (%.1fM of %.1fM parameters)",
                task.round,
                ", ".join(task.blocks),
                trainable / 1e6,
                sum(self.bmap.sizes.values()) / 1e6,
            )
        result = train(
            self.model,
            self.tokenizer,
            self.data.train,
            task.config,
            task.round,  # type: ignore[arg-type]
            device=self.device,
            progress=self.s.progress,
            label=f"{self.s.name} round {task.round}",
            worker=self.s.name,
        )
        residual = tensorfile.load(self.residual_path) if self.residual_path.is_file() else {}
        encoded, new_residual = encode_update(result, task, residual)
        if self.on_update is not None:  # what the coordinator will decode, for tests and tools
            sent = {n: codec.decode(e).reshape(result.delta[n].shape) for n, e in encoded.items()}
            self.on_update(task, dataclasses.replace(result, delta=sent))
        self.pending = Pending(task, result, encoded, residual, new_residual)
        self.deliver()

    def deliver(self) -> None:
        """Send the pending update: a fresh stream on every attempt, so a connection lost midway restarts
        it from the start. It stays pending if the coordinator forgot this worker (it restarted: NOT_FOUND
        reaches run(), which joins again and calls this again); a coordinator that already holds it
        answers `duplicate` and it is counted once."""
        p = self.pending
        assert p is not None
        task, result = p.task, p.result
        timeout = max(30.0, task.deadline_unix - time.time() + 30.0)
        try:
            reply = self.client.call(
                lambda: self.client.push(update_chunks(self.worker_id, task, result, p.encoded), timeout),
                "push",
            )
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
                log.warning("round %d: update not taken (%s: %s)", task.round, err.code().name, err.details())
                self.pending = None
                return
            raise
        self.pending = None
        self.rounds_done += 1
        # the error this round's encoding held back travels with the next update of each tensor; a
        # frozen tensor keeps the residual it had until its block trains again
        carried = {n: e for n, e in p.residual.items() if n not in result.delta} | p.new_residual
        if carried:
            tensorfile.save(self.residual_path, carried)
        elif p.residual:
            self.residual_path.unlink(missing_ok=True)
        if reply.duplicate:
            log.info("round %d: the coordinator already had this update; counted once", task.round)
            return
        log.info(
            "round %d: sent %d bytes (%.1fx smaller than raw), loss %.4f, %.1fs training",
            task.round,
            reply.received_bytes,
            reply.raw_bytes / max(reply.received_bytes, 1),
            result.loss,
            result.seconds,
        )

    def ensure_version(self, version: int, expected_hash: str) -> None:
        """Bring the model to `version`: the global updates since ours, or a snapshot; check its hash."""
        if (
            self.model is not None
            and self.version == version
            and self.hash == expected_hash
            and not self.dirty
        ):
            return
        for attempt in range(3):
            try:
                self._pull()
            except InvalidInput as exc:
                log.warning("model download failed its checks (%s); fetching a snapshot", exc)
                self.dirty = True
                continue
            if self.version == version and self.hash == expected_hash:
                return
            log.warning(
                "pulled version %d (%s), task wants %d (%s); attempt %d",
                self.version,
                self.hash[:12],
                version,
                expected_hash[:12],
                attempt + 1,
            )
        raise WorkerError(f"could not obtain model version {version} with hash {expected_hash[:12]}")

    def _pull(self) -> None:
        """One PullModel call, applied block by block as it arrives (memory: one block, not a model)."""
        holds = self.model is not None and not self.dirty
        req = pb.PullRequest(
            worker_id=self.worker_id,
            have_version=self.version if holds else 0,
            have_hash=self.hash if holds else "",
            include_assets=self.model is None,
        )
        state: dict[str, Any] = {"kind": None, "params": {}}

        def on_block(name: str, start: int, values: torch.Tensor) -> None:
            p = state["params"].get(name)
            if p is None:
                raise InvalidInput(f"{name}: no such tensor in the model")
            self.dirty = True  # until the final hash matches
            with torch.no_grad():
                if state["kind"] == pb.ModelHeader.SNAPSHOT:
                    p.data.view(-1)[start : start + values.numel()].copy_(values.to(p.device, p.dtype))
                else:
                    add_update(p, values, start)

        def fetch() -> pb.ModelHeader:
            asm = FrameAssembler(on_block=on_block)
            header: pb.ModelHeader | None = None
            files: dict[str, bytes] = {}
            for chunk in self.client.pull(req):
                part = chunk.WhichOneof("part")
                if part == "header":
                    header = chunk.header
                    state["kind"] = header.kind
                elif part == "file":
                    if (done := asm.file(chunk.file)) is not None:
                        files[done[0]] = done[1]
                elif part in ("tensor", "mark"):
                    if not state["params"]:
                        self._build(files)
                        assert self.model is not None
                        state["params"] = dict(self.model.named_parameters())
                        asm.expected = expected_of(global_tensors(self.model))
                    if part == "mark":
                        asm.seen.clear()  # each update names the same tensors again
                    else:
                        asm.tensor(chunk.tensor)
                elif part == "data":
                    if (done := asm.data(chunk.data)) is not None and isinstance(done[1], bytes):
                        files[done[0]] = done[1]
                elif part == "end":
                    asm.finish()
                    break
            if header is None:
                raise InvalidInput("model stream without a header")
            self._build(files)
            return header

        header = self.client.call(fetch, "pull")
        assert self.model is not None
        if header.kind == pb.ModelHeader.SNAPSHOT:
            self.snapshots += 1
        self.version = header.version
        self.hash = model_hash(global_tensors(self.model))
        if self.hash != header.model_hash:
            raise InvalidInput(
                f"model hash after download {self.hash[:12]} differs from the announced {header.model_hash[:12]}"
            )
        self.dirty = False

    def _build(self, files: dict[str, bytes]) -> None:
        """Build the architecture and tokenizer from the assets the coordinator sent (first pull only)."""
        if self.model is not None or not files:
            return
        assets = write_assets(files, self.s.cache_dir / self.federation / "assets")
        self.model, self.tokenizer = model_from_assets(assets)
        self.model.to(self.device)  # type: ignore[arg-type]
        self.bmap = block_map(self.model)

    def evaluate_version(self, round_number: int) -> None:
        assert self.data is not None
        if not self.data.eval or self.version in self.evaluated:
            return
        assert self.model is not None and self.tokenizer is not None
        loss, acc = evaluate(
            self.model,
            self.tokenizer,
            self.data.eval,
            max_len=self.max_seq_len,
            batch_size=self.s.eval_batch_size,  # type: ignore[arg-type]
            device=self.device,
        )
        self.evaluated.add(self.version)
        self.client.report(
            pb.MetricsReport(
                worker_id=self.worker_id,
                round=round_number,
                model_version=self.version,
                split="local-test",
                num_samples=len(self.data.eval),
                loss=loss,
                accuracy=acc,
            )
        )


def run(settings: WorkerSettings) -> int:
    """Run the worker; under torchrun, rank 0 is the worker and the other ranks train with it."""
    tune_malloc()
    rank = distributed.init(settings.device) if distributed.launched() else None
    if rank is not None and not rank.leader:
        return distributed.follow(settings, rank)
    worker = Worker(settings, rank=rank)
    try:
        return worker.run()
    finally:
        if rank is not None:
            distributed.announce_done(rank.device)
        worker.close()
