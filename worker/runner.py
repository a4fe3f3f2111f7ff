"""The worker's round loop: join, wait for a task, pull the version, evaluate it, train, push the delta."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from strata import __version__
from strata.adapters import LoraSpec
from strata.member.client import CoordinatorClient
from strata.member.download import ModelCopy
from strata.member.replica import Replica, TrainResult
from strata.member.upload import Pending, deliver
from strata.memory import tune_malloc
from strata.modeling import evaluate, pick_device
from strata.names import TASKS
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import RoundTask, lora_from_proto, task_from_proto
from worker import base_download, initial_version, ranks
from worker.errors import WorkerError
from worker.large_models import adapted_replica, load_options
from worker.local_data import LocalData, check_labels, load_local_data
from worker.local_dp import LocalDPConfig
from worker.settings import WorkerSettings
from worker.tracking import WorkerTracking
from worker.trainer import train_round

# tests and benches that build updates by hand take these from here

log = logging.getLogger("strata.worker")


class Worker:
    """One organisation's worker (rank 0 of a torchrun worker). `run()` returns when the federation is done."""

    def __init__(
        self,
        settings: WorkerSettings,
        on_update: Callable[[RoundTask, TrainResult], None] | None = None,
        rank: ranks.Rank | None = None,
        copy: ModelCopy | None = None,
    ) -> None:
        """`copy`: a model copy shared with other workers of this process (simulated workers), else its own."""
        self.s = settings
        self.rank = rank  # rank 0 of a torchrun group: the other ranks train with it (`follow`)
        self.client = CoordinatorClient(
            settings.coordinator,
            settings.token.get_secret_value(),
            settings.connect_timeout,
            settings.max_backoff,
            credentials=settings.channel_credentials(),
            server_name=settings.tls_server_name,
        )
        self.copy = copy or ModelCopy(
            self.client, rank.device if rank is not None else pick_device(settings.device)
        )
        self.on_update = on_update  # sees what the coordinator will decode, for tests and tools
        self.evaluated: set[int] = set()
        self.rounds_done = 0
        self.data: LocalData | None = None
        self.local_labels: list[str] | None = None
        self.pending: Pending | None = None  # a trained update not yet delivered
        self.spec: LoraSpec | None = None  # a LoRA federation's adapter
        self.tracking: WorkerTracking | None = None  # MLflow and TensorBoard, when configured

    @property
    def assets(self) -> Path:
        return self.s.cache_dir / self.federation / "assets"

    def close(self) -> None:
        self.client.close()

    def join(self) -> None:
        if self.data is None:
            self.data, self.local_labels = load_local_data(self.s)
        reply = self._join_rpc()
        check_labels(
            self.data, self.local_labels, list(reply.labels), reply.task_kind or "sequence-classification"
        )
        self.worker_id = reply.worker_id
        self.federation = reply.federation
        self.residual_path = self.s.cache_dir / reply.federation / f"{self.s.name}-residual.safetensors"
        self.adapter(reply)
        if self.s.tracking and self.tracking is None:
            self.tracking = WorkerTracking(self.s, reply.federation)
        log.info(
            "%s joined federation %s: %d training / %d held-out examples on %s",
            self.s.name,
            reply.federation,
            len(self.data.train),
            len(self.data.eval),
            self.copy.device,
        )

    def _join_rpc(self) -> pb.JoinReply:
        """The Join call; a refusal of this worker's own settings (INVALID_ARGUMENT) as a WorkerError."""
        assert self.data is not None
        try:
            return self.client.join(
                pb.JoinRequest(
                    name=self.s.name,
                    num_samples=len(self.data.train),
                    num_eval_samples=len(self.data.eval),
                    device=self.copy.device,
                    version=__version__,
                    lora_rank=self.s.lora_rank,
                )
            )
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            raise WorkerError(f"the coordinator refused this worker: {err.details()}") from None

    def adapter(self, reply: pb.JoinReply) -> None:
        """A LoRA federation: the rank this worker trains, its base model (found or downloaded, checked by
        hash) and the replica built on it. A plain federation: settings that only LoRA uses are refused."""
        s = self.s
        try:
            self.spec = lora_from_proto(reply.lora)
        except ValueError as exc:
            raise WorkerError(f"the coordinator announced an adapter this worker cannot use: {exc}") from None
        if self.spec is None:
            for name in ("quantize_base", "lora_rank"):
                if getattr(s, name):
                    raise WorkerError(
                        f"{name}: federation {reply.federation} trains the whole model, not LoRA adapters; "
                        f"unset --{name.replace('_', '-')}"
                    )
            if s.base_model and self.copy.replica is None:
                replica = initial_version.build(reply, s.base_model, self.assets, self.copy.device)
                if replica is not None:
                    self.copy.start_from(replica, 0, reply.initial_hash)
            return
        if s.lora_rank > self.spec.rank:
            raise WorkerError(
                f"lora_rank: {s.lora_rank} is above the federation's rank {self.spec.rank}; use at most "
                f"{self.spec.rank} (or 0 for the federation's)"
            )
        if self.rank is not None and self.rank.world > 1:
            raise WorkerError("a LoRA federation's worker runs as one process (start it without torchrun)")
        load_options(self.copy.device, s.quantize_base)  # refuses 4-bit on a CPU before any download
        if self.copy.replica is not None:
            return  # joined again after a coordinator restart: the same base and replica
        for _ in range(5):
            try:
                base = base_download.resolve(
                    self.client, self.worker_id, self.spec.base_hash, s.cache_dir, s.base_model, s.progress
                )
                break
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                # the coordinator restarted mid-download and forgot this worker: join again, resume
                log.info("the coordinator restarted during the base model download; joining again")
                self.worker_id = self._join_rpc().worker_id
        else:
            raise WorkerError("the base model download kept losing the coordinator's session")
        spec, labels, task = self.spec, list(reply.labels), reply.task_kind or TASKS[0]
        self.copy.needs_assets = False  # config and tokenizer come from the base model's folder
        self.copy.builder = lambda assets: adapted_replica(
            base, spec, labels, task, self.copy.device, s.quantize_base, s.gradient_checkpointing
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
                    if self.tracking is not None:
                        self.tracking.done()
                    return self.rounds_done
                if task_msg.kind == pb.Task.TRAIN:
                    self.run_round(_task(task_msg))
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                # the coordinator restarted and forgot this worker's session: join again and carry on
                log.info("coordinator does not know this worker any more; joining again")
                self.join()

    def run_round(self, task: RoundTask) -> None:
        self.pending = self.prepare(task)
        self.deliver()

    def prepare(self, task: RoundTask) -> Pending:
        """The round's update, trained and encoded: the version pulled (and evaluated once), the task trained."""
        replica = self.copy.ensure(
            self.worker_id, self.assets, task.model_version, task.model_hash, self.client
        )
        self.evaluate_version(task, replica)
        assert self.data is not None
        result = train_round(
            replica,
            self.data.train,
            task,
            self.rank,
            self.assets,
            self.s.name,
            self.s.progress,
            self.local_dp(),
            self.s.lora_rank if self.spec is not None else 0,
        )
        if result.local_epsilon:
            log.info(
                "round %d: local DP-SGD, ε = %.3g of this worker's records (δ = %g)",
                task.round,
                result.local_epsilon,
                result.local_delta,
            )
        pending = Pending.encode(task, result, self.residual_path)
        if self.on_update is not None:
            self.on_update(task, pending.as_sent())
        return pending

    def local_dp(self) -> LocalDPConfig | None:
        """Local DP-SGD as the settings ask (its ledger beside the residual), or None."""
        s = self.s
        if not s.local_dp:
            return None
        return LocalDPConfig(
            s.local_dp_noise_multiplier,
            s.local_dp_max_grad_norm,
            s.local_dp_delta,
            s.local_dp_target_epsilon,
            s.cache_dir / self.federation / f"{s.name}-local-dp.json",
        )

    def deliver(self) -> None:
        """Send the pending update (`upload.deliver`). It stays pending if the coordinator forgot this
        worker: NOT_FOUND reaches run(), which joins again and calls this again."""
        pending = self.pending
        assert pending is not None
        delivered = deliver(self.client, self.worker_id, pending, self.residual_path)
        self.pending = None
        if delivered:
            self.rounds_done += 1
            if self.tracking is not None:
                self.tracking.delivered(pending)

    def evaluate_version(self, task: RoundTask, replica: Replica) -> None:
        """Evaluate the pulled version on the local held-out split, once per version, and report it."""
        assert self.data is not None
        if not self.data.eval or self.copy.version in self.evaluated:
            return
        loss, acc = evaluate(
            replica.model,
            replica.tokenizer,
            self.data.eval,
            max_len=task.config.max_seq_len,
            batch_size=self.s.eval_batch_size,
            device=replica.device,
        )
        self.evaluated.add(self.copy.version)
        if self.tracking is not None:
            self.tracking.local_eval = (loss, acc)
        self.client.report(
            pb.MetricsReport(
                worker_id=self.worker_id,
                round=task.round,
                model_version=self.copy.version,
                split="local-test",
                num_samples=len(self.data.eval),
                loss=loss,
                accuracy=acc,
            )
        )


def _task(message: pb.Task) -> RoundTask:
    try:
        return task_from_proto(message)
    except ValueError as exc:
        raise WorkerError(f"the coordinator sent a task this worker cannot train: {exc}") from None


def follow(settings: WorkerSettings, rank: ranks.Rank) -> int:
    """Ranks above 0: train each round rank 0 announces, on this rank's shard, until it says done."""
    data, _ = load_local_data(settings)
    replica: Replica | None = None
    rounds = 0
    while (announced := ranks.next_round(rank)) is not None:
        assets, task = announced
        replica = replica or Replica.load(assets, rank.device)
        train_round(replica, data.train, task, rank, assets, settings.name)
        rounds += 1
    log.info("rank %d: done after %d round(s)", rank.rank, rounds)
    return rounds


def run(settings: WorkerSettings) -> int:
    """Run the worker; under torchrun, rank 0 is the worker and the other ranks train with it."""
    tune_malloc()
    rank = ranks.init(settings.device) if ranks.launched() else None
    try:
        if rank is not None and not rank.leader:
            return follow(settings, rank)
        worker = Worker(settings, rank=rank)
        try:
            return worker.run()
        finally:
            if rank is not None:
                ranks.announce_done(rank)
            worker.close()
    finally:
        ranks.finish()
