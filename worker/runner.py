"""The worker's loop: join, wait for a task, pull the version, evaluate it, train, push the delta."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from strata import __version__
from strata.data import DataError, Example, find_split, read_examples, read_labels
from strata.errors import InvalidInput
from strata.frames import FrameAssembler, encode_tensor, pieces
from strata.modeling import (
    evaluate,
    global_tensors,
    load_tensors,
    model_from_assets,
    pick_device,
    write_assets,
)
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import RoundTask, task_from_proto
from strata.split import holdout
from strata.version import model_hash
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
    if path.is_dir():
        if (path / "labels.json").is_file():
            labels = read_labels(path)
        train_set = read_examples(find_split(path, "train"), labels)
        try:
            eval_set = read_examples(find_split(path, "test"), labels)
        except DataError:
            eval_set = []
    else:
        train_set, eval_set = read_examples(path), []
    if settings.eval_data is not None:
        eval_set = read_examples(settings.eval_data, labels)
    if not eval_set and settings.eval_fraction > 0 and len(train_set) >= 2:
        keep, held = holdout(list(range(len(train_set))), settings.eval_fraction, seed=0)
        train_set, eval_set = [train_set[i] for i in keep], [train_set[i] for i in held]
    if not train_set:
        raise WorkerError(f"{path}: no training examples")
    return LocalData(train_set, eval_set), labels


def check_labels(data: LocalData, local_labels: list[str] | None, federation_labels: list[str]) -> None:
    """Refuse local data whose classes do not match the federation's."""
    if local_labels is not None and local_labels != federation_labels:
        raise WorkerError(
            f"local labels {local_labels} differ from the federation's labels {federation_labels}"
        )
    top = max(ex.label for ex in data.train + data.eval)
    if top >= len(federation_labels):
        raise WorkerError(
            f"label {top} is out of range for the federation's {len(federation_labels)} classes"
        )


def update_chunks(worker_id: str, task: RoundTask, result: TrainResult) -> Iterator[pb.UpdateChunk]:
    """The update as a stream: header, then one frame per tensor in ≤1 MiB pieces, then the end marker."""
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
            num_tensors=len(result.delta),
        )
    )
    for name in sorted(result.delta):
        header, payload = encode_tensor(name, result.delta[name], task.encoding)
        yield pb.UpdateChunk(tensor=header)
        for piece in pieces(payload):
            yield pb.UpdateChunk(data=piece)
    yield pb.UpdateChunk(end=pb.UpdateEnd(num_tensors=len(result.delta)))


class Worker:
    """One organisation's worker. `run()` returns when the federation is done."""

    def __init__(
        self, settings: WorkerSettings, on_update: Callable[[RoundTask, TrainResult], None] | None = None
    ) -> None:
        self.s = settings
        self.device = pick_device(settings.device)
        self.client = CoordinatorClient(
            settings.coordinator,
            settings.token.get_secret_value(),
            settings.connect_timeout,
            settings.max_backoff,
        )
        self.on_update = on_update
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.version = 0
        self.hash = ""
        self.evaluated: set[int] = set()
        self.rounds_done = 0
        self.data: LocalData | None = None
        self.local_labels: list[str] | None = None
        self.max_seq_len = 128

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
        check_labels(self.data, self.local_labels, list(reply.labels))
        self.worker_id = reply.worker_id
        self.federation = reply.federation
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
        if self.on_update is not None:
            self.on_update(task, result)
        timeout = max(30.0, task.deadline_unix - time.time() + 30.0)
        try:  # a fresh stream on every attempt: a connection lost midway is retried from the start
            reply = self.client.call(
                lambda: self.client.push(update_chunks(self.worker_id, task, result), timeout), "push"
            )
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
                log.warning("round %d: update not taken (%s: %s)", task.round, err.code().name, err.details())
                return
            raise
        self.rounds_done += 1
        log.info(
            "round %d: sent %d bytes (%.1fx smaller than raw), loss %.4f, %.1fs training",
            task.round,
            reply.received_bytes,
            reply.raw_bytes / max(reply.received_bytes, 1),
            result.loss,
            result.seconds,
        )

    def ensure_version(self, version: int, expected_hash: str) -> None:
        """Pull the version if we do not hold it; check the content hash of what we hold."""
        if self.model is not None and self.version == version and self.hash == expected_hash:
            return
        for attempt in range(3):
            try:
                self._pull(include_assets=self.model is None)
            except InvalidInput as exc:
                log.warning("model download was corrupt (%s); retrying", exc)
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

    def _pull(self, include_assets: bool) -> None:
        def fetch() -> tuple[pb.ModelHeader, dict[str, bytes], dict[str, torch.Tensor]]:
            req = pb.PullRequest(worker_id=self.worker_id, have_version=0, include_assets=include_assets)
            expected = None
            asm = FrameAssembler(expected)
            header: pb.ModelHeader | None = None
            files: dict[str, bytes] = {}
            tensors: dict[str, torch.Tensor] = {}
            for chunk in self.client.pull(req):
                part = chunk.WhichOneof("part")
                done: tuple[str, Any] | None = None
                if part == "header":
                    header = chunk.header
                elif part == "file":
                    done = asm.file(chunk.file)
                elif part == "tensor":
                    done = asm.tensor(chunk.tensor)
                elif part == "data":
                    done = asm.data(chunk.data)
                elif part == "end":
                    asm.finish()
                    break
                if done is not None:
                    name, value = done
                    (files if isinstance(value, bytes) else tensors)[name] = value
            if header is None:
                raise InvalidInput("model stream without a header")
            return header, files, tensors

        header, files, tensors = self.client.call(fetch, "pull")
        if files:
            assets = write_assets(files, self.s.cache_dir / self.federation / "assets")
            self.model, self.tokenizer = model_from_assets(assets)
            self.model.to(self.device)  # type: ignore[arg-type]
        assert self.model is not None
        load_tensors(self.model, tensors)
        self.version = header.version
        self.hash = model_hash(global_tensors(self.model))
        if self.hash != header.model_hash:
            raise InvalidInput(
                f"model hash after download {self.hash[:12]} differs from the announced {header.model_hash[:12]}"
            )

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
    worker = Worker(settings)
    try:
        return worker.run()
    finally:
        worker.close()
