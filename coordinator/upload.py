"""What workers send: updates, received while they stream into the open round's sums and its spool file,
refused whole on any problem with the reason recorded, a retried one acknowledged once; and their
evaluation reports."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from coordinator import spool
from coordinator.filters import UpdateFilter, refuse_on_complete
from coordinator.ingest import Received, Upload, receive, undo
from coordinator.metrics import CoordinatorMetrics
from coordinator.round import Round
from coordinator.sessions import Session
from coordinator.store import Store
from strata import failpoints
from strata.errors import FailedPrecondition, InvalidInput, StrataError
from strata.proto.v1 import coordinator_pb2 as pb
from strata.storage.models import UpdateStatus

log = logging.getLogger("strata.coordinator")


class Uploads:
    def __init__(
        self,
        store: Store,
        fed_id: int,
        spool_dir: Path,
        filters: Sequence[UpdateFilter],
        metrics: CoordinatorMetrics,
        federation: str,
        current: Callable[[], Round | None],
        private: bool = False,
        lora_rank: int = 0,
        max_concurrent: int = 8,
    ) -> None:
        self.store = store
        self.fed_id = fed_id
        self.spool_dir = spool_dir
        self.filters = filters
        self.metrics = metrics
        self.federation = federation
        self.current = current
        self.private = private  # differential privacy: nothing per member beyond what the noise covers
        self.lora_rank = lora_rank  # a LoRA federation's rank: no update may be of a higher one
        # updates decoded at once: the others wait with their data held back by flow control, so the
        # buffers in flight (each upload's chunk, block and decode) do not grow with the number of workers
        self.decoding = asyncio.Semaphore(max_concurrent)

    async def push(
        self, sess: Session, first: pb.UpdateChunk, chunks: AsyncIterator[pb.UpdateChunk]
    ) -> pb.PushReply:
        """Receive one update; `first` is the stream's header chunk, whose worker id gave `sess`."""
        started = time.monotonic()
        h = first.header
        if (dup := await self._duplicate(sess, h)) is not None:
            return dup
        async with self.decoding:  # checked against the round only once its turn has come
            r, path, got = await self._receive(sess, h, first, chunks)
        failpoints.hit("coordinator.push.spooled")  # on disk, not yet recorded as accepted
        r.recording += 1  # the round closes only once this update is counted and recorded
        try:
            fields = dict(train_loss=h.train_loss, train_accuracy=h.train_accuracy)
            if r.aggregator.streams:
                u = r.admit(sess.uid, sess.name, path, got, h.num_samples, **fields)
            else:  # a private round adds it clipped now, replayed from the spool: off the event loop
                u = await asyncio.to_thread(r.admit, sess.uid, sess.name, path, got, h.num_samples, **fields)
            u.update_id = await asyncio.shield(self._record_accepted(r, sess, h, got, started))
        finally:
            r.recording -= 1
        self.metrics.updates.labels(self.federation, UpdateStatus.ACCEPTED.value, "OK").inc()
        self.metrics.bytes_in.labels(self.federation).inc(got.payload_bytes)
        failpoints.hit("coordinator.push.recorded")  # recorded, the reply not yet sent
        r.check_all_in()
        return pb.PushReply(accepted=True, received_bytes=got.payload_bytes, raw_bytes=got.raw_bytes)

    async def _receive(
        self, sess: Session, h: pb.UpdateHeader, first: pb.UpdateChunk, chunks: AsyncIterator[pb.UpdateChunk]
    ) -> tuple[Round, Path, Received]:
        """Stream one update into the open round's sums and its spool file; refused whole on any problem."""
        r = self.current()
        if r is None:
            raise FailedPrecondition(f"update for round {h.round}, but the open round is none")
        r.check_update(sess, h)
        check_rank(h.lora_rank, self.lora_rank)
        writer = spool.SpoolWriter(spool.round_dir(self.spool_dir, r.number) / f"{sess.name}.update")
        upload = r.uploads[sess.uid] = Upload(writer, r.aggregator.stream_weight(h.num_samples))
        try:
            writer.write(first)
            got = await receive(chunks, r.sums, upload)
            if (why := refuse_on_complete(self.filters, got.norm)) is not None:
                undo(upload, r.sums)  # complete, but refused: out of the sums again
                raise InvalidInput(why)
        except BaseException as exc:
            writer.abort()
            await self._refused(sess, r, h, upload, exc)
            raise
        finally:
            r.uploads.pop(sess.uid, None)
        return r, writer.commit(), got

    async def _record_accepted(
        self, r: Round, sess: Session, h: pb.UpdateHeader, got: Received, started: float
    ) -> int:
        measured: dict[str, Any] = dict(
            num_samples=h.num_samples,
            train_loss=h.train_loss,
            train_accuracy=h.train_accuracy,
            update_norm=got.norm,
        )
        if self.private:  # per member, and not covered by the noise: kept off the record
            measured = dict(num_samples=0)
        if h.local_epsilon:  # the member's own DP-SGD guarantee of its records, shown per member
            await asyncio.to_thread(
                self.store.update_worker, sess.db_id, local_epsilon=h.local_epsilon, local_delta=h.local_delta
            )
        return await asyncio.to_thread(
            self.store.record_update,
            r.db_id,
            sess.db_id,
            UpdateStatus.ACCEPTED,
            base_version=h.base_version,
            num_tensors=len(got.names),
            bytes=got.payload_bytes,
            raw_bytes=got.raw_bytes,
            num_steps=h.num_steps,
            train_seconds=h.train_seconds,
            upload_seconds=time.monotonic() - started,
            **measured,
        )

    async def _refused(
        self, sess: Session, r: Round, h: pb.UpdateHeader, upload: Upload, exc: BaseException
    ) -> None:
        late = upload.evicted or isinstance(exc, FailedPrecondition)
        if upload.evicted:
            reason = "the round closed while this update was uploading"
        elif isinstance(exc, InvalidInput | FailedPrecondition):
            reason = str(exc)
        else:
            reason = f"stream ended early ({type(exc).__name__})"
        status = UpdateStatus.LATE if late else UpdateStatus.REJECTED
        record = asyncio.to_thread(
            self.store.record_update,
            r.db_id,
            sess.db_id,
            status,
            reason,
            base_version=h.base_version,
            num_samples=0 if self.private else h.num_samples,
        )
        # a cancelled call (the worker hung up) must still record why: shield the write from the cancel
        await asyncio.shield(record)
        code = exc.code if isinstance(exc, StrataError) else "CANCELLED"
        self.metrics.updates.labels(self.federation, status.value, code).inc()
        log.warning(
            "update from %s for round %d %s: %s", sess.name, r.number, "late" if late else "rejected", reason
        )

    async def _duplicate(self, sess: Session, h: pb.UpdateHeader) -> pb.PushReply | None:
        """The reply to an update the coordinator already holds (the worker retried after losing the reply,
        e.g. across a coordinator restart): counted once, its stream not read. None for any other update.
        Only an update for another round than the current one costs a database query."""
        r = self.current()
        if r is not None and r.number == h.round:
            if not r.holds(sess.uid, h):
                return None
            received = raw = 0
        else:
            u = await asyncio.to_thread(self.store.accepted_update, self.fed_id, h.round, sess.db_id)
            if u is None or u.base_version != h.base_version:
                return None
            received, raw = u.bytes or 0, u.raw_bytes or 0
        log.info("update from %s for round %d is one already counted: acknowledged again", sess.name, h.round)
        self.metrics.updates.labels(self.federation, "duplicate", "OK").inc()
        return pb.PushReply(accepted=True, duplicate=True, received_bytes=received, raw_bytes=raw)

    async def report(self, sess: Session, req: pb.MetricsReport) -> None:
        """A worker's evaluation of a version on its held-out split, recorded with the round (not in a
        private federation: a member's own loss is not covered by the noise)."""
        if self.private:
            return
        r = self.current()
        if r is not None and req.round == r.number:
            rid: int | None = r.db_id
        else:
            rid = next(
                (
                    x.id
                    for x in await asyncio.to_thread(self.store.rounds, self.fed_id)
                    if x.number == req.round
                ),
                None,
            )
        if rid is None:
            raise FailedPrecondition(f"no round {req.round} in this federation")
        if not (0.0 <= req.accuracy <= 1.0) or req.loss < 0 or req.loss != req.loss:
            raise InvalidInput("metrics out of range (accuracy in [0, 1], loss >= 0)")
        await asyncio.to_thread(
            self.store.record_evaluation,
            rid,
            sess.db_id,
            model_version=req.model_version,
            split=req.split[:32] or "local-test",
            num_samples=req.num_samples,
            loss=req.loss,
            accuracy=req.accuracy,
        )


def check_rank(rank: int, federation_rank: int) -> None:
    """Refuse a member's LoRA rank its federation cannot take (INVALID_ARGUMENT, naming the setting)."""
    if rank and not federation_rank:
        raise InvalidInput(f"lora_rank {rank}: this federation trains the whole model, not LoRA adapters")
    if rank > federation_rank:
        raise InvalidInput(
            f"lora_rank {rank} is above the federation's rank {federation_rank}; use at most {federation_rank}"
        )
