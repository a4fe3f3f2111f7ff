"""One federation at run time: the global model, its versions, and the round loop that advances it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import random
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coordinator import checkpoint, spool
from coordinator.divergence import RoundDivergence, Spooled, measure
from coordinator.ingest import Received, RoundSums, Upload, evict, receive, reload, remove, undo
from coordinator.metrics import CoordinatorMetrics
from coordinator.robust import robust_mean
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from coordinator.versions import VersionFiles, read_frames, write_frames
from strata import codec, failpoints, tensorfile
from strata.codec import Codec
from strata.data import Example, read_examples
from strata.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied, StrataError
from strata.frames import Expected, add_update, expected_of, file_header, header_of, pieces
from strata.layers import block_map
from strata.modeling import (
    evaluate,
    global_tensors,
    load_model,
    load_tensors,
    perplexity,
    read_labels_from_config,
    save_assets,
)
from strata.proto.v1 import coordinator_pb2 as pb
from strata.selection import block_scores
from strata.serde import RoundTask, TrainingConfig, task_to_proto
from strata.storage.models import FederationState, RoundState, UpdateStatus, utcnow
from strata.storage.tokens import hash_token
from strata.targeting import BlockOutcome, RoundPlan, Targeting
from strata.version import model_hash

log = logging.getLogger("strata.coordinator")


@dataclass
class Session:
    """A joined worker as the coordinator sees it while running."""

    db_id: int
    uid: str
    name: str
    token_hash: str
    num_samples: int
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class Aggregated:
    """What closing a round produced: the new version and the records of the round."""

    version: int
    hash: str
    norm: float
    applied: list[str]
    block_rows: list[dict[str, Any]]
    tensor_rows: list[dict[str, Any]]
    alignments: list[dict[str, Any]]
    noise_floor: float | None


@dataclass
class OpenRound:
    db_id: int
    number: int
    base_version: int
    base_hash: str
    participants: dict[str, str]  # uid -> name
    deadline_unix: float
    plan: RoundPlan
    target: int  # the round closes once this many updates are in (< participants with over-selection)
    sums: RoundSums = field(default_factory=lambda: RoundSums({}))
    uploads: dict[str, Upload] = field(default_factory=dict)  # uid -> upload in flight
    accepted: dict[str, Spooled] = field(default_factory=dict)  # uid -> its accepted update, spooled on disk
    bytes_up: int = 0
    raw_bytes_up: int = 0
    bytes_down: int = 0
    raw_bytes_down: int = 0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def check_all_in(self) -> None:
        if len(self.accepted) >= self.target:
            self.all_in.set()

    def admit(
        self, uid: str, name: str, path: Path, got: Received, num_samples: int, **fields: Any
    ) -> Spooled:
        """Count a complete update (its blocks are in the sums already) as one of the round's accepted ones."""
        self.sums.commit(got.names, num_samples, got.sq)
        self.bytes_up += got.payload_bytes
        self.raw_bytes_up += got.raw_bytes
        u = self.accepted[uid] = Spooled(
            uid,
            path,
            num_samples,
            name=name,
            norm=got.norm,
            tensors=frozenset(got.names),
            sq=got.sq,
            **fields,
        )
        return u


def parse_labels(spec: str | None, model_dir: Path | None) -> list[str]:
    """Labels from a labels.json path, a comma-separated list, or the model config's id2label."""
    if spec:
        p = Path(spec)
        if p.is_file():
            labels = json.loads(p.read_text())
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
                raise ValueError(f"{p}: labels.json must be a list of at least two names")
            return labels
        labels = [x.strip() for x in spec.split(",") if x.strip()]
        if len(labels) < 2:
            raise ValueError("labels: give at least two class names, or a labels.json file")
        return labels
    if model_dir is not None and (found := read_labels_from_config(model_dir)) and len(found) >= 2:
        return found
    raise ValueError("labels: none given and the model config has no id2label; set --labels")


class FederationRunner:
    """Owns the global model and the round loop; the gRPC service calls its methods."""

    def __init__(self, settings: CoordinatorSettings, store: Store) -> None:
        if settings.model is None:
            raise ValueError("model: a transformers model directory is required (--model)")
        self.s = settings
        self.store = store
        self.causal = settings.task == "causal-lm"
        self.labels = [] if self.causal else parse_labels(settings.labels, settings.model)
        self.ckpt_dir = settings.data_dir / "checkpoints" / settings.federation
        self.spool_dir = settings.data_dir / "spool" / settings.federation
        self.assets_dir = settings.data_dir / "assets" / settings.federation
        self.versions = VersionFiles(settings.data_dir / "versions" / settings.federation)
        self.up_codec = Codec(settings.encoding, settings.topk_fraction, settings.zstd_level)
        self.down_codec = Codec(settings.down_encoding, settings.topk_fraction, settings.zstd_level)
        self.snapshot_codec = Codec("fp32", level=settings.zstd_level)
        self.hashes: dict[int, str] = {}
        self.snapshot_lock = asyncio.Lock()
        self.token_hashes = {hash_token(t) for t in settings.worker_tokens}
        self.issued: set[str] = set()  # hashes of the valid tokens issued through the dashboard API
        self.desired: str | None = None  # what an administrator asked for: running, paused, stopped
        self.stopped = False
        self.self_paused = False  # paused by _give_up, not by an administrator
        self.sessions: dict[str, Session] = {}
        self.current: OpenRound | None = None
        self.resumed: OpenRound | None = None  # the round a restart reopened, run before any new one
        self.done = False
        self.changed = asyncio.Condition()
        self.eval_examples: list[Example] = []
        self.rng = random.Random(settings.seed)
        self.training = TrainingConfig(
            local_epochs=settings.local_epochs,
            max_steps=settings.max_steps,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            max_seq_len=settings.max_seq_len,
            seed=settings.seed,
        )
        self.told_done: set[str] = set()
        self.metrics = CoordinatorMetrics(settings.federation)
        self.metrics.watch_workers(lambda: len(self.online()))

    # ------------------------------------------------------------------ set-up and resume
    def setup(self) -> None:
        """Load the model and either resume the federation's last version or create version 0."""
        s = self.s
        self.model, self.tokenizer = load_model(s.model, self.labels, seed=s.seed, task=s.task)  # type: ignore[arg-type]
        self.assets = save_assets(self.model, self.tokenizer, self.assets_dir)
        self.bmap = block_map(self.model)
        self.targeting = Targeting(s.targeting(), self.bmap)  # refuses a k or budget this model cannot meet
        if s.eval_data is not None:
            self.eval_examples = read_examples(
                s.eval_data, self.labels or None, require_labels=not self.causal
            )[: s.eval_max_examples]
        tensors = global_tensors(self.model)
        fed = self.store.get_or_create_federation(
            s.federation,
            model_name=str(s.model),
            num_labels=len(self.labels),
            task_kind=s.task,
            total_rounds=s.rounds,
            num_parameters=sum(t.numel() for t in tensors.values()),
            config=self._config_record(),
        )
        self.fed_id = fed.id
        was_stopped = fed.state == FederationState.STOPPED.value
        if fed.task_kind != s.task:
            raise ValueError(
                f"federation {s.federation!r} was created for task {fed.task_kind}, not {s.task}; "
                "start a new federation (--federation) to change the task"
            )
        if fed.model_version > 0 or checkpoint.exists(self.ckpt_dir, 0):
            version = fed.model_version
            if not checkpoint.exists(self.ckpt_dir, version):
                raise RuntimeError(
                    f"the database says version {version} but {checkpoint.path_of(self.ckpt_dir, version)} is missing"
                )
            load_tensors(self.model, checkpoint.load(self.ckpt_dir, version))
            tensors = global_tensors(self.model)
            h = model_hash(tensors)
            if fed.model_hash and h != fed.model_hash:
                raise RuntimeError(f"checkpoint v{version} does not match the hash recorded in the database")
            log.info("resuming federation %s at version %d", s.federation, version)
        else:
            version, h = 0, model_hash(tensors)
            checkpoint.save(self.ckpt_dir, 0, tensors, h)
        self.store.update_federation(
            self.fed_id,
            model_version=version,
            model_hash=h,
            total_rounds=s.rounds,
            state=FederationState.RUNNING.value,
            error=None,
            config=self._config_record(),  # a restart may change settings (e.g. the policy): record them
        )
        self.version, self.hash = version, h
        self.metrics.version.labels(s.federation).set(version)
        self.expected: dict[str, Expected] = expected_of(tensors)
        for r in self.store.rounds(self.fed_id):  # the hash of every version the federation has had
            self.hashes[r.base_version] = r.base_hash
            if r.state == RoundState.COMPLETED.value and r.result_version is not None and r.result_hash:
                self.hashes[r.result_version] = r.result_hash
        self.hashes[version] = h
        rpath = checkpoint.residual_path(self.ckpt_dir, version)
        self.server_residual = tensorfile.load(rpath) if rpath.is_file() else {}
        self.targeting.restore(self.store.block_outcomes(self.fed_id))
        self.round_number = self.store.last_round_number(self.fed_id)
        self.completed = self.store.completed_rounds(self.fed_id)
        if self.completed >= s.rounds:
            self.done = True
        self.desired, self.issued = self.store.control(self.fed_id)
        if was_stopped or self.desired == "stopped":  # stopped by an administrator: workers only hear DONE
            self.done = self.stopped = True
            self.store.update_federation(self.fed_id, state=FederationState.STOPPED.value)
        # what a crash left half-written: files of versions the database never recorded, the open round
        if self.versions.discard_after(version) + checkpoint.discard_after(self.ckpt_dir, version):
            log.info("discarded files of versions after %d that were never recorded", version)
        self.resumed = None if self.done else self._reopen()
        if self.resumed is None:
            self.store.fail_open_rounds(
                self.fed_id, "the coordinator restarted and could not resume the round"
            )
        if not self.token_hashes and not self.issued:
            log.warning(
                "no worker tokens: workers can join only with tokens issued through the dashboard API "
                "(strata admin token issue %s LABEL)",
                s.federation,
            )

    def _reopen(self) -> OpenRound | None:
        """The round a crash or restart left open, reopened: same number, base version and participants, a
        fresh deadline, and every update it had accepted added to its sums again from the spool. Spool
        files the database never recorded as accepted (uploads cut off, or whose reply was never sent) are
        deleted: their workers send them again. None if there is no such round or it trains another
        version than the one the coordinator holds."""
        row = self.store.open_round_row(self.fed_id)
        if row is None or row.base_version != self.version or row.base_hash != self.hash:
            return None
        workers = {w.id: w for w in self.store.workers(self.fed_id)}
        by_name = {w.name: w for w in workers.values()}
        participants = {by_name[n].uid: n for n in row.participants if n in by_name}
        names = tuple(row.blocks) if row.blocks else tuple(self.bmap.names)
        plan = RoundPlan(row.number, names, bool(row.probe))
        deadline = time.time() + self.s.round_timeout
        r = OpenRound(
            row.id,
            row.number,
            row.base_version,
            row.base_hash,
            participants,
            deadline,
            plan,
            target=self._target(len(participants)),
            sums=self._round_sums(row.number, plan),
        )
        rdir = spool.round_dir(self.spool_dir, row.number)
        for u in self.store.updates(row.id):
            if u.status != UpdateStatus.ACCEPTED.value or u.worker_id not in workers:
                continue
            w = workers[u.worker_id]
            path = rdir / f"{w.name}.update"
            try:
                got = reload(path, r.sums, u.num_samples)
            except (OSError, StrataError) as exc:
                reason = f"lost when the coordinator restarted: {exc}"
                self.store.set_update_status(u.id, UpdateStatus.REJECTED, reason)
                log.error("round %d: the update of %s is %s", row.number, w.name, reason)
                continue
            r.admit(
                w.uid,
                w.name,
                path,
                got,
                u.num_samples,
                update_id=u.id,
                train_loss=u.train_loss or 0.0,
                train_accuracy=u.train_accuracy or 0.0,
            )
        kept = {u.path.name for u in r.accepted.values()}
        for p in rdir.iterdir() if rdir.is_dir() else ():
            if p.name not in kept:  # partial uploads, and updates that were never recorded
                p.unlink(missing_ok=True)
        self.store.set_round_fields(
            row.id, state=RoundState.OPEN.value, deadline_at=dt.datetime.fromtimestamp(deadline, dt.UTC)
        )
        r.check_all_in()
        log.info(
            "round %d reopened after a restart with the %d update(s) it had accepted (%s); deadline in %.0fs",
            row.number,
            len(r.accepted),
            ", ".join(sorted(u.name for u in r.accepted.values())) or "none yet",
            self.s.round_timeout,
        )
        return r

    def _round_sums(self, number: int, plan: RoundPlan) -> RoundSums:
        trains = self.bmap.tensors_of(plan.train)
        return RoundSums(
            {n: e for n, e in self.expected.items() if n in trains},
            outside={n: b for n, b in self.bmap.block_of.items() if n not in trains},
            round_number=number,
            trains=plan.train,
        )

    def _config_record(self) -> dict[str, object]:
        keep = (
            "task",
            "rounds",
            "min_workers",
            "workers_per_round",
            "min_updates",
            "over_selection",
            "round_timeout",
            "local_epochs",
            "max_steps",
            "batch_size",
            "learning_rate",
            "weight_decay",
            "max_seq_len",
            "encoding",
            "topk_fraction",
            "downstream",
            "down_encoding",
            "history",
            "divergence",
            "aggregation",
            "trim_fraction",
            "max_update_norm",
            "max_norm_ratio",
            "policy",
            "blocks",
            "block_budget",
            "refresh_every",
            "schedule",
            "probe_every",
            "seed",
        )
        return {k: getattr(self.s, k) for k in keep} | {"labels": self.labels}

    # ------------------------------------------------------------------ workers
    def authorise(self, token: str) -> bool:
        """A token from the settings, or one issued through the dashboard API and not revoked."""
        h = hash_token(token)
        return h in self.token_hashes or h in self.issued

    def session(self, uid: str, token: str) -> Session:
        sess = self.sessions.get(uid)
        if sess is None:
            raise NotFound(f"unknown worker id {uid!r}: call Join first")
        if sess.token_hash != hash_token(token):
            raise PermissionDenied("this worker id belongs to another token")
        sess.last_seen = time.monotonic()
        return sess

    def join(self, req: pb.JoinRequest, token: str) -> pb.JoinReply:
        name = req.name.strip()
        if not name or len(name) > 128:
            raise InvalidInput("name: give a worker name of 1 to 128 characters")
        if req.num_samples == 0:
            raise InvalidInput("num_samples: a worker needs at least one training example")
        try:
            w = self.store.upsert_worker(
                self.fed_id,
                name,
                token,
                device=req.device[:64],
                software_version=req.version[:32],
                num_samples=req.num_samples,
                num_eval_samples=req.num_eval_samples,
            )
        except PermissionError as exc:
            raise PermissionDenied(str(exc)) from None
        self.sessions[w.uid] = Session(w.id, w.uid, name, w.token_hash, req.num_samples)
        log.info("worker %s joined (%d samples, %s)", name, req.num_samples, req.device or "?")
        return pb.JoinReply(
            worker_id=w.uid,
            federation=self.s.federation,
            task_kind=self.s.task,
            num_labels=len(self.labels),
            labels=self.labels,
            max_seq_len=self.s.max_seq_len,
        )

    def online(self) -> list[Session]:
        now = time.monotonic()
        return [w for w in self.sessions.values() if now - w.last_seen <= self.s.worker_timeout]

    async def get_task(self, sess: Session, wait_seconds: float) -> pb.Task:
        deadline = time.monotonic() + min(wait_seconds, self.s.task_poll_seconds)
        async with self.changed:
            while True:
                sess.last_seen = time.monotonic()
                if self.done:
                    self.told_done.add(sess.uid)
                    return pb.Task(kind=pb.Task.DONE, total_rounds=self.s.rounds)
                r = self.current
                if (
                    r is not None
                    and not r.closed
                    and sess.uid in r.participants
                    and sess.uid not in r.accepted
                ):
                    return task_to_proto(
                        RoundTask(
                            r.number,
                            r.base_version,
                            r.base_hash,
                            r.deadline_unix,
                            self.training,
                            self.s.encoding,
                            self.s.rounds,
                            self.s.topk_fraction,
                            self._task_blocks(r.plan),
                        )
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return pb.Task(kind=pb.Task.WAIT, total_rounds=self.s.rounds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), timeout=remaining)

    def _task_blocks(self, plan: RoundPlan) -> tuple[str, ...]:
        """The blocks a task names: none (every block) unless the round trains a subset."""
        return plan.train if len(plan.train) < len(self.bmap.names) else ()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------------ model download
    async def pull(self, sess: Session, req: pb.PullRequest) -> AsyncIterator[pb.ModelChunk]:
        """Stream what the worker needs to hold the current version: nothing, the global updates since
        its version, or a snapshot; served from files, in ≤1 MiB pieces."""
        version, h = (
            self.version,
            self.hash,
        )  # one consistent version, even if a new one is published meanwhile
        files = sorted(self.assets.items()) if req.include_assets else []
        kind, updates = self._plan_download(req, version)
        paths = [self.versions.update(v) for v in updates]
        if kind == pb.ModelHeader.SNAPSHOT:
            paths = [await self._snapshot_file(version)]
        counts = [self.versions.count(p) for p in paths]
        yield pb.ModelChunk(
            header=pb.ModelHeader(
                version=version,
                model_hash=h,
                num_tensors=sum(counts),
                num_files=len(files),
                kind=kind,  # type: ignore[arg-type]
                base_version=req.have_version if kind == pb.ModelHeader.UPDATES else 0,
            )
        )
        sent = raw = 0
        for name, data in files:
            yield pb.ModelChunk(file=file_header(name, data))
            for piece in pieces(data):
                sent += len(piece)
                yield pb.ModelChunk(data=piece)
        for i, path in enumerate(paths):
            if kind == pb.ModelHeader.UPDATES:
                v = updates[i]
                yield pb.ModelChunk(
                    mark=pb.VersionMark(version=v, model_hash=self.hashes[v], num_tensors=counts[i])
                )
            for part, value in read_frames(path):
                if part == "tensor":
                    raw += 4 * math.prod(value.shape)  # type: ignore[attr-defined]
                    yield pb.ModelChunk(tensor=value)  # type: ignore[arg-type]
                else:
                    sent += len(value)  # type: ignore[arg-type]
                    yield pb.ModelChunk(data=value)  # type: ignore[arg-type]
        self.metrics.bytes_out.labels(self.s.federation).inc(sent)
        r = self.current  # count before the end marker: a client may hang up as soon as it has it
        if r is not None and not r.closed:
            r.bytes_down += sent
            r.raw_bytes_down += raw
        yield pb.ModelChunk(end=pb.ModelEnd(num_tensors=sum(counts), num_files=len(files)))

    def _plan_download(self, req: pb.PullRequest, version: int) -> tuple[int, list[int]]:
        """CURRENT, UPDATES (with the versions to send) or SNAPSHOT for a worker holding have_version."""
        have = req.have_version
        known = self.hashes.get(have)
        if not req.have_hash or known != req.have_hash or have > version:
            return pb.ModelHeader.SNAPSHOT, []
        if have == version:
            return pb.ModelHeader.CURRENT, []
        wanted = list(range(have + 1, version + 1))
        if (
            self.s.downstream == "delta"
            and len(wanted) <= self.s.history
            and all(self.versions.update(v).is_file() for v in wanted)
        ):
            return pb.ModelHeader.UPDATES, wanted
        return pb.ModelHeader.SNAPSHOT, []

    async def _snapshot_file(self, version: int) -> Path:
        """The current version's snapshot frames, written once (from its checkpoint) on first demand."""
        path = self.versions.snapshot(version)
        async with self.snapshot_lock:
            if not path.is_file():
                await asyncio.to_thread(self._write_snapshot, version, path)
        return path

    def _write_snapshot(self, version: int, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(checkpoint.path_of(self.ckpt_dir, version)), framework="pt") as f:
            names = sorted(f.keys())

            def frames() -> Iterator[tuple[object, list[bytes]]]:
                for name in names:  # one tensor in memory at a time
                    t = f.get_tensor(name)
                    enc = codec.encode(t, self.snapshot_codec)
                    yield header_of(name, t, enc), enc.blocks

            write_frames(path, frames())  # type: ignore[arg-type]

    # ------------------------------------------------------------------ update upload
    async def push(
        self, sess: Session, first: pb.UpdateChunk, chunks: AsyncIterator[pb.UpdateChunk]
    ) -> pb.PushReply:
        """Receive one update, accumulating it block by block; on any problem take it out whole.

        `first` is the stream's header chunk, whose worker id gave `sess`; `chunks` is the rest.
        """
        started = time.monotonic()
        h = first.header
        if (dup := await self._duplicate(sess, h)) is not None:
            return dup
        r = self._check_round(sess, h)
        writer = spool.SpoolWriter(spool.round_dir(self.spool_dir, r.number) / f"{sess.name}.update")
        upload = r.uploads[sess.uid] = Upload(writer, h.num_samples)
        try:
            writer.write(first)
            got = await receive(chunks, r.sums, upload)
            if self.s.max_update_norm and got.norm > self.s.max_update_norm:
                undo(upload, r.sums)  # complete, but over the bound: out of the sums again
                raise InvalidInput(
                    f"update norm {got.norm:.4g} exceeds the federation's bound {self.s.max_update_norm:g}"
                )
        except BaseException as exc:
            writer.abort()
            late = upload.evicted or isinstance(exc, FailedPrecondition)
            if upload.evicted:
                reason = "the round closed while this update was uploading"
            elif isinstance(exc, InvalidInput | FailedPrecondition):
                reason = str(exc)
            else:
                reason = f"stream ended early ({type(exc).__name__})"
            self.store.record_update(
                r.db_id,
                sess.db_id,
                UpdateStatus.LATE if late else UpdateStatus.REJECTED,
                reason,
                base_version=h.base_version,
                num_samples=h.num_samples,
            )
            code = exc.code if isinstance(exc, StrataError) else "CANCELLED"
            status = UpdateStatus.LATE if late else UpdateStatus.REJECTED
            self.metrics.updates.labels(self.s.federation, status.value, code).inc()
            log.warning(
                "update from %s for round %d %s: %s",
                sess.name,
                r.number,
                "late" if late else "rejected",
                reason,
            )
            raise
        finally:
            r.uploads.pop(sess.uid, None)
        path = writer.commit()
        failpoints.hit("coordinator.push.spooled")  # on disk, not yet recorded as accepted
        spooled = r.admit(
            sess.uid,
            sess.name,
            path,
            got,
            h.num_samples,
            train_loss=h.train_loss,
            train_accuracy=h.train_accuracy,
        )
        spooled.update_id = self.store.record_update(
            r.db_id,
            sess.db_id,
            UpdateStatus.ACCEPTED,
            base_version=h.base_version,
            num_samples=h.num_samples,
            num_tensors=len(got.names),
            bytes=got.payload_bytes,
            raw_bytes=got.raw_bytes,
            num_steps=h.num_steps,
            train_loss=h.train_loss,
            train_accuracy=h.train_accuracy,
            update_norm=got.norm,
            train_seconds=h.train_seconds,
            upload_seconds=time.monotonic() - started,
        )
        self.metrics.updates.labels(self.s.federation, UpdateStatus.ACCEPTED.value, "OK").inc()
        self.metrics.bytes_in.labels(self.s.federation).inc(got.payload_bytes)
        failpoints.hit("coordinator.push.recorded")  # recorded, the reply not yet sent
        r.check_all_in()
        return pb.PushReply(accepted=True, received_bytes=got.payload_bytes, raw_bytes=got.raw_bytes)

    async def _duplicate(self, sess: Session, h: pb.UpdateHeader) -> pb.PushReply | None:
        """The reply to an update the coordinator already holds (the worker retried after losing the reply,
        e.g. across a coordinator restart): counted once, its stream not read. None for any other update.
        Only an update for another round than the current one costs a database query."""
        r = self.current
        if r is not None and r.number == h.round:
            held = r.accepted.get(sess.uid)
            if held is None or h.base_version != r.base_version or h.base_hash != r.base_hash:
                return None
            received = raw = 0
        else:
            u = await asyncio.to_thread(self.store.accepted_update, self.fed_id, h.round, sess.db_id)
            if u is None or u.base_version != h.base_version:
                return None
            received, raw = u.bytes or 0, u.raw_bytes or 0
        log.info("update from %s for round %d is one already counted: acknowledged again", sess.name, h.round)
        self.metrics.updates.labels(self.s.federation, "duplicate", "OK").inc()
        return pb.PushReply(accepted=True, duplicate=True, received_bytes=received, raw_bytes=raw)

    def _check_round(self, sess: Session, h: pb.UpdateHeader) -> OpenRound:
        r = self.current
        if r is not None and r.closed and h.round == r.number:
            why = "its deadline passed" if len(r.accepted) < r.target else f"it had its {r.target} update(s)"
            raise FailedPrecondition(f"round {r.number} is closed: {why}")
        if r is None or r.closed or h.round != r.number:
            open_no = "none" if r is None or r.closed else str(r.number)
            raise FailedPrecondition(f"update for round {h.round}, but the open round is {open_no}")
        if sess.uid not in r.participants:
            raise FailedPrecondition(f"worker {sess.name} is not a participant of round {r.number}")
        if sess.uid in r.uploads:
            raise FailedPrecondition(
                f"worker {sess.name} is already uploading an update for round {r.number}"
            )
        if h.base_version != r.base_version or h.base_hash != r.base_hash:
            raise FailedPrecondition(
                f"update computed against version {h.base_version} ({h.base_hash[:12]}), round {r.number} trains "
                f"version {r.base_version} ({r.base_hash[:12]})"
            )
        if h.num_samples == 0 or h.num_samples > 10 * max(sess.num_samples, 1):
            raise InvalidInput(
                f"num_samples {h.num_samples} is not plausible for a worker that declared {sess.num_samples}"
            )
        return r

    def report(self, sess: Session, req: pb.MetricsReport) -> None:
        r = self.current
        rid = None
        rid = r.db_id if r is not None and req.round == r.number else self._round_id(req.round)
        if rid is None:
            raise FailedPrecondition(f"no round {req.round} in this federation")
        if not (0.0 <= req.accuracy <= 1.0) or req.loss < 0 or req.loss != req.loss:
            raise InvalidInput("metrics out of range (accuracy in [0, 1], loss >= 0)")
        self.store.record_evaluation(
            rid,
            sess.db_id,
            model_version=req.model_version,
            split=req.split[:32] or "local-test",
            num_samples=req.num_samples,
            loss=req.loss,
            accuracy=req.accuracy,
        )

    def _round_id(self, number: int) -> int | None:
        for r in self.store.rounds(self.fed_id):
            if r.number == number:
                return r.id
        return None

    # ------------------------------------------------------------------ the round loop
    async def run(self) -> None:
        """Run rounds until `rounds` have completed, then linger so workers hear DONE."""
        flusher = asyncio.create_task(self._flush_last_seen())
        watcher = asyncio.create_task(self._watch_control())
        try:
            failures = 0
            while not self.done:
                if not await self._follow_control():
                    break
                r, self.resumed = self.resumed, None
                if r is None:
                    await self._wait_for_workers()
                    if self.desired in ("paused", "stopped"):
                        continue  # asked while waiting for workers: no new round
                    r = self._open_round()
                ok = await self._run_round(r)
                failures = 0 if ok else failures + 1
                if failures >= self.s.max_failed_rounds:
                    failures = 0
                    await self._give_up(f"{self.s.max_failed_rounds} consecutive rounds missed their quorum")
            if self.stopped:
                self.store.update_federation(self.fed_id, state=FederationState.STOPPED.value)
                log.info(
                    "federation %s stopped by an administrator after %d rounds",
                    self.s.federation,
                    self.completed,
                )
            else:
                self.store.update_federation(self.fed_id, state=FederationState.COMPLETED.value)
                log.info("federation %s completed %d rounds", self.s.federation, self.completed)
            await self._notify()
            await self._linger()
        finally:
            flusher.cancel()
            watcher.cancel()
            self._flush_now()

    async def _give_up(self, msg: str) -> None:
        """Rounds keep missing their quorum: fail the federation, or (the default) pause it with the reason
        until an administrator resumes it (`strata admin resume`), and retry then."""
        if self.s.on_failed_rounds == "fail":
            self.store.update_federation(self.fed_id, state=FederationState.FAILED.value, error=msg)
            raise RuntimeError(msg)
        msg += f"; paused until an administrator resumes it (strata admin resume {self.s.federation})"
        log.error("federation %s: %s", self.s.federation, msg)
        await asyncio.to_thread(
            self.store.update_federation,
            self.fed_id,
            state=FederationState.PAUSED.value,
            desired_state="paused",
            error=msg,
        )
        self.desired = "paused"
        self.self_paused = True

    async def _follow_control(self) -> bool:
        """Between rounds: wait while paused; False when stopped (the loop ends and workers hear DONE)."""
        announced = False
        while self.desired == "paused":
            if not announced:
                self.store.update_federation(self.fed_id, state=FederationState.PAUSED.value)
                by = "itself (see its error)" if self.self_paused else "an administrator"
                log.info("federation %s paused by %s", self.s.federation, by)
                announced = True
            await asyncio.sleep(0.2)
        if self.desired == "stopped":
            self.done = self.stopped = True
            return False
        if announced:
            self.self_paused = False
            self.store.update_federation(self.fed_id, state=FederationState.RUNNING.value, error=None)
            log.info("federation %s resumed", self.s.federation)
        return True

    async def _watch_control(self) -> None:
        """Poll the administrator's wishes (state, issued and revoked tokens) from the database."""
        while True:
            await asyncio.sleep(self.s.control_poll_seconds)
            try:
                self.desired, self.issued = await asyncio.to_thread(self.store.control, self.fed_id)
            except Exception:  # noqa: BLE001 - a missed poll must not stop the federation
                log.exception("could not read the federation's control state")
                continue
            allowed = self.token_hashes | self.issued
            for uid, sess in list(self.sessions.items()):  # a revoked token's workers are gone at once
                if sess.token_hash not in allowed:
                    del self.sessions[uid]
                    log.info("worker %s removed: its token was revoked", sess.name)

    async def _wait_for_workers(self) -> None:
        started = time.monotonic()
        while len(self.online()) < self.s.min_workers and self.desired not in ("paused", "stopped"):
            if self.s.start_timeout and time.monotonic() - started > self.s.start_timeout:
                msg = f"only {len(self.online())} of {self.s.min_workers} workers joined within {self.s.start_timeout:g}s"
                self.store.update_federation(self.fed_id, state=FederationState.FAILED.value, error=msg)
                raise RuntimeError(msg)
            await asyncio.sleep(0.2)

    def _choose(self) -> tuple[dict[str, str], int]:
        """The round's participants and how many updates close it: workers_per_round of the online workers
        (all if 0), plus over_selection more invited, the first workers_per_round updates closing the round."""
        online = sorted(self.online(), key=lambda w: w.name)
        invite = math.ceil((self.s.workers_per_round or len(online)) * (1 + self.s.over_selection))
        chosen = online if invite >= len(online) else self.rng.sample(online, invite)
        return {w.uid: w.name for w in chosen}, self._target(len(chosen))

    def _target(self, participants: int) -> int:
        """Updates that close a round early: workers_per_round (fewer invited with over-selection), else all."""
        return max(1, min(self.s.workers_per_round or participants, participants))

    def _open_round(self) -> OpenRound:
        self.round_number += 1
        participants, target = self._choose()
        version, base_hash = self.version, self.hash
        deadline = time.time() + self.s.round_timeout
        plan = self.targeting.plan(self.round_number)
        db_id = self.store.open_round(
            self.fed_id,
            self.round_number,
            version,
            base_hash,
            sorted(participants.values()),
            self.s.min_updates,
            dt.datetime.fromtimestamp(deadline, dt.UTC),
            blocks=list(plan.train) if self.targeting.active else None,
            probe=plan.probe,
        )
        return OpenRound(
            db_id,
            self.round_number,
            version,
            base_hash,
            participants,
            deadline,
            plan,
            target=target,
            sums=self._round_sums(self.round_number, plan),
        )

    async def _run_round(self, r: OpenRound) -> bool:
        participants, deadline, plan = r.participants, r.deadline_unix, r.plan
        self.current = r
        started = time.monotonic()
        log.info(
            "round %d open: %d participant(s)%s, version %d, %s",
            r.number,
            len(participants),
            f" (closes at {r.target} updates)" if r.target < len(participants) else "",
            r.base_version,
            self._describe(plan),
        )
        await self._notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(r.all_in.wait(), timeout=max(0.0, deadline - time.time()))
        r.closed = True
        for upload in list(r.uploads.values()):  # uploads still in flight are late: take them out of the sums
            evict(upload, r.sums)
        await self._notify()
        await asyncio.to_thread(self._screen_norms, r)
        quorum = min(self.s.min_updates, len(participants))
        common: dict[str, Any] = dict(
            num_updates=len(r.accepted),
            num_samples=r.sums.total_samples,
            bytes_up=r.bytes_up,
            raw_bytes_up=r.raw_bytes_up,
            bytes_down=r.bytes_down,
            raw_bytes_down=r.raw_bytes_down,
        )
        if len(r.accepted) < quorum:
            reason = f"{len(r.accepted)} of {len(participants)} updates by the deadline; quorum is {quorum}"
            self.store.close_round(
                r.db_id,
                RoundState.FAILED,
                error=reason,
                duration_seconds=time.monotonic() - started,
                **common,
            )
            log.warning("round %d failed: %s", r.number, reason)
            self.metrics.rounds.labels(self.s.federation, RoundState.FAILED.value).inc()
            self.metrics.round_seconds.labels(self.s.federation).observe(time.monotonic() - started)
            return False
        self.store.set_round_fields(r.db_id, state=RoundState.AGGREGATING.value)
        t0 = time.monotonic()
        agg = await asyncio.to_thread(self._aggregate, r)
        new_version, new_hash, applied = agg.version, agg.hash, agg.applied
        agg_seconds = time.monotonic() - t0
        self.metrics.aggregate_seconds.labels(self.s.federation).observe(agg_seconds)
        t1 = time.monotonic()
        test_loss = test_acc = None
        if self.eval_examples:
            test_loss, test_acc = await asyncio.to_thread(
                evaluate, self.model, self.tokenizer, self.eval_examples, self.s.max_seq_len
            )
        n = max(r.sums.total_samples, 1)
        self.completed += 1
        failpoints.hit("coordinator.round.closing")  # the version is checkpointed, not yet recorded
        self.store.close_round(
            r.db_id,
            RoundState.COMPLETED,
            federation_fields=dict(model_version=new_version, model_hash=new_hash),
            block_outcomes=agg.block_rows,
            tensor_rows=agg.tensor_rows,
            alignments=agg.alignments,
            noise_floor=agg.noise_floor,
            result_version=new_version,
            result_hash=new_hash,
            train_loss=sum(u.train_loss * u.num_samples for u in r.accepted.values()) / n,
            train_accuracy=sum(u.train_accuracy * u.num_samples for u in r.accepted.values()) / n,
            test_loss=test_loss,
            test_accuracy=test_acc,
            update_norm=agg.norm,
            aggregate_seconds=agg_seconds,
            eval_seconds=time.monotonic() - t1 if self.eval_examples else None,
            duration_seconds=time.monotonic() - started,
            **common,
        )
        self.metrics.rounds.labels(self.s.federation, RoundState.COMPLETED.value).inc()
        self.metrics.round_seconds.labels(self.s.federation).observe(time.monotonic() - started)
        self.metrics.version.labels(self.s.federation).set(new_version)
        failpoints.hit("coordinator.round.closed")  # recorded; the spool and old residuals not yet pruned
        # only now that the database holds the new version: a restart before this resumes the old one
        checkpoint.prune_residuals(self.ckpt_dir, keep=new_version)
        spool.prune(self.spool_dir, keep_from=r.number - 1)
        if self.completed >= self.s.rounds:
            self.done = True
        if test_loss is None or test_acc is None:
            acc = "n/a"
        else:
            acc = f"perplexity {perplexity(test_loss):.2f}" if self.causal else f"accuracy {test_acc:.4f}"
        targeted = f", applied {', '.join(applied)}" if self.targeting.active else ""
        log.info(
            "round %d done: %d update(s), version %d, test %s, %.1fs%s",
            r.number,
            len(r.accepted),
            new_version,
            acc,
            time.monotonic() - started,
            targeted,
        )
        return True

    def _screen_norms(self, r: OpenRound) -> None:
        """Refuse, after the fact, accepted updates whose norm exceeds max_norm_ratio × the round's median
        (3 or more updates): their blocks are subtracted again from their spool files and they are
        recorded as rejected with the reason."""
        ratio = self.s.max_norm_ratio
        if not ratio or len(r.accepted) < 3:
            return
        median = statistics.median(u.norm for u in r.accepted.values())
        for uid, u in list(r.accepted.items()):
            if median <= 0 or u.norm <= ratio * median:
                continue
            remove(u.path, r.sums, u.num_samples)
            r.sums.retract(u.tensors, u.num_samples, u.sq)
            del r.accepted[uid]
            reason = f"update norm {u.norm:.4g} exceeds {ratio:g} x the round's median {median:.4g}"
            self.store.set_update_status(u.update_id, UpdateStatus.REJECTED, reason)
            self.metrics.updates.labels(self.s.federation, UpdateStatus.REJECTED.value, "NORM_BOUND").inc()
            log.warning("update from %s for round %d rejected: %s", u.name, r.number, reason)

    def _robust(self, r: OpenRound, keep: set[str]) -> None:
        """Replace the FedAvg mean by the coordinate-wise median or trimmed mean of the updates, window by
        window from the spool (the sums hold mean × count, which `means()` divides again)."""
        paths = [u.path for u in r.accepted.values()]
        try:
            for name, start, values in robust_mean(
                paths, r.sums.expected, self.s.aggregation, self.s.trim_fraction
            ):
                if name in keep:
                    buf = r.sums.sums[name]
                    buf[start : start + values.numel()] = values.to(buf.dtype) * r.sums.counts[name]
        except ValueError as exc:  # updates that cannot be aligned: the plain mean stands
            log.warning(
                "round %d: %s aggregation skipped (%s); applying the mean", r.number, self.s.aggregation, exc
            )

    def _describe(self, plan: RoundPlan) -> str:
        if not self.targeting.active:
            return "every block (policy full)"
        c = self.targeting.config
        if c.schedule == "server-masked":
            return f"every block trains, {c.policy} chooses which apply (server-masked)"
        what = "probe: every block" if plan.probe else ", ".join(plan.train)
        return f"trains {len(plan.train)}/{len(self.bmap.names)} blocks ({what})"

    def _aggregate(self, r: OpenRound) -> Aggregated:
        """Score every block the updates carried and measure their divergence, let the policy decide which
        blocks apply, and apply their FedAvg mean to the global model exactly as workers will: encode it
        (with the server's error feedback), add decode(encode(.)) to each tensor, and write that encoding
        as the version's update file; then checkpoint the version."""
        version = r.base_version + 1
        params = dict(self.model.named_parameters())
        moments = r.sums.moments()
        weight_sq = {
            n: float(torch.dot(params[n].detach().view(-1), params[n].detach().view(-1))) for n in moments
        }
        scores = block_scores(moments, weight_sq, self.bmap.block_of)
        div = (
            measure(r.sums, moments, list(r.accepted.values()), self.bmap.block_of)
            if self.s.divergence
            else None
        )
        applied, outcomes = self.targeting.decide(r.number, r.plan, scores)
        keep = self.bmap.tensors_of(applied)
        r.sums.drop([n for n in moments if n not in keep])  # scored, not applied (server-masked)
        if self.s.aggregation != "mean" and r.accepted:
            self._robust(r, keep)
        lossy = self.down_codec.lossy
        residual: dict[str, torch.Tensor] = {}
        sq = 0.0

        def frames() -> Iterator[tuple[object, list[bytes]]]:
            nonlocal sq
            for i, (name, mean) in enumerate(r.sums.means()):  # one tensor at a time
                u = mean
                e = self.server_residual.get(name)
                if lossy and e is not None and e.shape == u.shape:
                    u = u + e
                enc, sent = codec.roundtrip(u, self.down_codec)
                if lossy:
                    residual[name] = u - sent
                p = params[name]
                with torch.no_grad():
                    add_update(p, sent)
                if i == 0:
                    failpoints.hit("coordinator.aggregate.applying")  # once a round: the model half updated
                sq += float(sent.double().pow(2).sum())
                yield header_of(name, p, enc), enc.blocks

        write_frames(self.versions.update(version), frames())  # type: ignore[arg-type]
        tensors = global_tensors(self.model)
        h = model_hash(tensors)
        checkpoint.save(self.ckpt_dir, version, tensors, h)
        # a block not applied this round keeps the residual it had until it is applied again
        residual = {n: e for n, e in self.server_residual.items() if n not in keep} | residual
        if lossy:
            tensorfile.save(checkpoint.residual_path(self.ckpt_dir, version), residual)
        self.server_residual = residual
        self.hashes[version] = h
        self.version, self.hash = version, h  # from here on, pulls get this version
        self.versions.prune(version, self.s.history)
        return Aggregated(version, h, sq**0.5, applied, *self._records(outcomes, div, r))

    def _records(
        self, outcomes: list[BlockOutcome], div: RoundDivergence | None, r: OpenRound
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], float | None]:
        """The rows a completed round adds: per block, per tensor, per worker alignment; the noise floor."""
        blocks = []
        for o in outcomes:
            row = dataclasses.asdict(o) | {"num_elements": self.bmap.sizes[o.block]}
            d = div.blocks.get(o.block) if div else None
            if d is not None:
                row |= dict(energy=d.energy, spread=d.spread, divergence=d.divergence, cancelled=d.cancelled)
            blocks.append(row)
        if div is None:
            return blocks, [], [], None
        numel = {n: math.prod(e.shape) for n, e in self.expected.items()}
        tensors = [
            dict(
                tensor=name,
                block=self.bmap.block_of[name],
                num_elements=numel[name],
                update_norm=math.sqrt(d.mean_sq),
                energy=d.energy,
                spread=d.spread,
                divergence=d.divergence,
                cancelled=d.cancelled,
            )
            for name, d in sorted(div.tensors.items())
        ]
        alignments = []
        for uid, wa in div.workers.items():
            update_id = r.accepted[uid].update_id
            for scope, values in (("block", wa.blocks), ("tensor", wa.tensors)):
                for name, (norm, cos) in values.items():
                    alignments.append(
                        dict(update_id=update_id, scope=scope, name=name, norm=norm, cosine=cos)
                    )
        return blocks, tensors, alignments, div.noise_floor

    async def _linger(self) -> None:
        if not self.s.exit_when_done:
            return
        end = time.monotonic() + self.s.linger_seconds
        while time.monotonic() < end and not set(self.sessions) <= self.told_done:
            await asyncio.sleep(0.1)

    async def _flush_last_seen(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            self._flush_now()

    def _flush_now(self) -> None:
        now_m, now = time.monotonic(), utcnow()
        seen = {w.db_id: now - dt.timedelta(seconds=now_m - w.last_seen) for w in self.sessions.values()}
        try:
            self.store.touch_workers(seen)
        except Exception:  # noqa: BLE001 - a missed heartbeat write must not stop the federation
            log.exception("could not record worker heartbeats")
