"""One federation at run time: the services that serve workers, and the round loop that advances the
global model. Each piece of state has one owner: the round (coordinator/round.py), the published
version (coordinator/global_model.py), the workers' sessions (coordinator/sessions.py) and the
administrator's wishes (coordinator/control.py); this module wires them and runs the rounds."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import time

from coordinator import checkpoint, recovery, spool
from coordinator.aggregation import Aggregation
from coordinator.aggregators import Aggregator, make_aggregator
from coordinator.base_files import BaseFiles
from coordinator.closing import complete
from coordinator.control import Control
from coordinator.download import Downloads
from coordinator.filters import make_filters, refuse_at_close
from coordinator.global_model import Candidate
from coordinator.ingest import RoundSums
from coordinator.lora_aggregation import ProductAggregator
from coordinator.metrics import CoordinatorMetrics
from coordinator.privacy import Mechanism, Privacy
from coordinator.round import Round
from coordinator.sessions import Session, Sessions
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from coordinator.subfederation import ParentLink, serve_parent
from coordinator.tracking import FederationTracking
from coordinator.upload import Uploads, check_rank
from coordinator.versions import VersionFiles
from strata import failpoints
from strata.codec import Codec
from strata.data import Example, read_examples
from strata.hierarchy import key_blocks
from strata.instruct import read_chats
from strata.names import LANGUAGE_TASKS
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import RoundTask, lora_to_proto, task_to_proto
from strata.storage.models import FederationState, RoundState, UpdateStatus
from strata.targeting import RoundPlan, Targeting

log = logging.getLogger("strata.coordinator")


class Federation:
    """The federation a coordinator runs; the gRPC service calls its methods."""

    def __init__(self, settings: CoordinatorSettings, store: Store) -> None:
        if settings.model is None:
            raise ValueError("model: a transformers model directory is required (--model)")
        s = self.s = settings
        self.store = store
        self.causal = s.task in LANGUAGE_TASKS  # perplexity, no labels
        self.labels = [] if self.causal else recovery.parse_labels(s.labels, s.model)
        self.ckpt_dir = s.data_dir / "checkpoints" / s.federation
        self.spool_dir = s.data_dir / "spool" / s.federation
        self.versions = VersionFiles(s.data_dir / "versions" / s.federation)
        self.optimizer = s.server_optimizer_config()
        self.filters = make_filters(s.max_update_norm, s.max_norm_ratio)
        self.current: Round | None = None
        self.resumed: Round | None = None  # the round a restart reopened, run before any new one
        self.done = False
        self.changed = asyncio.Condition()
        self.eval_examples: list[Example] = []
        self.rng = random.Random(s.seed)
        self.privacy: Privacy | None = None  # a private federation's sampling, mechanism and budget
        self.training = s.training()
        self.metrics = CoordinatorMetrics(s.federation)
        self.link: ParentLink | None = None  # set when this federation is a member of a parent
        self.base: BaseFiles | None = None  # a LoRA federation serves its base model
        self.deadline_cap: float | None = None  # a parent round's deadline: inner rounds end by it
        self.failures = 0  # rounds in a row that missed their quorum

    # ------------------------------------------------------------------ set-up and resume
    def setup(self) -> None:
        """Load the model and either resume the federation's last version or create version 0."""
        s = self.s
        gm, fed = recovery.open_federation(s, self.store, self.labels, self.ckpt_dir)
        self.gm, self.fed_id = gm, fed.id
        if s.dp:
            self.privacy = Privacy(s, self.store, self.fed_id)
            log.info("%s", self.privacy.plan())
        self.targeting = Targeting(s.targeting(), gm.bmap)  # refuses a k or budget this model cannot meet
        self.key_blocks = key_blocks(s.key_block_spec(), gm.bmap)  # kept partly local by member federations
        if s.eval_data is not None:
            if s.task == "instruction":
                held = read_chats(s.eval_data)
            else:
                held = read_examples(s.eval_data, self.labels or None, require_labels=not self.causal)
            self.eval_examples = held[: s.eval_max_examples]
        self.metrics.version.labels(s.federation).set(gm.version)
        recovery.restore_state(self.store, self.fed_id, gm, self.ckpt_dir, self.versions, self.optimizer)
        self.targeting.restore(self.store.block_outcomes(self.fed_id))
        self.tracking = FederationTracking(s, self.store, self.fed_id, self.causal) if s.tracking else None
        self.round_number = self.store.last_round_number(self.fed_id)
        self.completed = self.store.completed_rounds(self.fed_id)
        self.done = self.completed >= s.rounds and not s.parent  # a member: done when its parent is
        self.sessions = Sessions(self.store, self.fed_id, s.worker_tokens, s.worker_timeout, s.dp)
        self.metrics.watch_workers(lambda: len(self.sessions.online()))
        self.control = Control(s, self.store, self.fed_id, self.sessions)
        self.control.desired, issued = self.store.control(self.fed_id)
        self.sessions.set_issued(issued)
        if fed.state == FederationState.STOPPED.value or self.control.desired == "stopped":
            self.done = self.control.stopped = True  # stopped by an administrator: workers only hear DONE
            self.store.update_federation(self.fed_id, state=FederationState.STOPPED.value)
        self.aggregation = Aggregation(
            gm,
            self.targeting,
            self.optimizer,
            Codec(s.down_encoding, s.topk_fraction, s.zstd_level, rank=s.lowrank_rank),
            self.versions,
            self.ckpt_dir,
            s.divergence,
            self.key_blocks,
            s.key_aggregation == "attention",
            s.attention_temperature,
        )
        self.downloads = Downloads(
            gm,
            self.versions,
            self.ckpt_dir,
            self.metrics,
            s.federation,
            s.downstream,
            s.history,
            s.zstd_level,
            lambda: self.current,
            s.max_concurrent_downloads,
        )
        self.base = (
            BaseFiles(s.model, gm.lora.base_hash, self.metrics, s.federation, lambda: self.current)  # type: ignore[arg-type]
            if gm.lora
            else None
        )
        self.uploads = Uploads(
            self.store,
            self.fed_id,
            self.spool_dir,
            self.filters,
            self.metrics,
            s.federation,
            lambda: self.current,
            private=s.dp,
            lora_rank=gm.lora.rank if gm.lora else 0,
            max_concurrent=s.max_concurrent_uploads,
        )
        self.resumed = (
            None
            if self.done
            else recovery.reopen(
                self.store, self.fed_id, gm, self.spool_dir, s.round_timeout, self._new_round
            )
        )
        if self.resumed is None:
            self.store.fail_open_rounds(
                self.fed_id, "the coordinator restarted and could not resume the round"
            )
        self.sessions.warn_if_closed(s.federation)

    def _new_round(
        self, db_id: int, number: int, plan: RoundPlan, participants: dict[str, str], deadline: float
    ) -> Round:
        bmap, trains = self.gm.bmap, self.gm.bmap.tensors_of(plan.train)
        mech = self.privacy.recorded(db_id) if self.privacy else None
        sums = RoundSums(
            {n: e for n, e in self.gm.expected.items() if n in trains},
            outside={n: b for n, b in bmap.block_of.items() if n not in trains},
            round_number=number,
            trains=plan.train,
        )
        return Round(
            db_id,
            number,
            self.gm.version,
            self.gm.hash,
            participants,
            deadline,
            plan,
            target=len(participants) if mech else self._target(len(participants)),
            aggregator=self._aggregator(sums, mech, number),
        )

    def _aggregator(self, sums: RoundSums, mech: Mechanism | None, number: int) -> Aggregator:
        lora = self.gm.lora
        if lora is not None and lora.aggregation == "product" and mech is None:
            return ProductAggregator(
                sums, dict(self.gm.model.named_parameters()), lora.rank, self.s.seed + number
            )
        return make_aggregator(self.s.aggregation, sums, self.s.trim_fraction, mech)

    # ------------------------------------------------------------------ what workers call
    async def join(self, req: pb.JoinRequest, token: str) -> pb.JoinReply:
        check_rank(req.lora_rank, self.gm.lora.rank if self.gm.lora else 0)
        sess = await self.sessions.join(req, token)
        return pb.JoinReply(
            worker_id=sess.uid,
            federation=self.s.federation,
            task_kind=self.s.task,
            num_labels=len(self.labels),
            labels=self.labels,
            max_seq_len=self.s.max_seq_len,
            lora=lora_to_proto(self.gm.lora) if self.gm.lora else None,
            dashboard_url=self.s.dashboard_url,
            **self.gm.initial(self.s.seed),
        )

    async def get_task(self, sess: Session, wait_seconds: float) -> pb.Task:
        deadline = time.monotonic() + min(wait_seconds, self.s.task_poll_seconds)
        async with self.changed:
            while True:
                sess.last_seen = time.monotonic()
                if self.done:
                    self.sessions.told_done.add(sess.uid)
                    return pb.Task(kind=pb.Task.DONE, total_rounds=self.s.rounds)
                r = self.current
                if r is not None and r.wants_update_from(sess.uid):
                    blocks = r.plan.train if len(r.plan.train) < len(self.gm.bmap.names) else ()
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
                            blocks,
                            self.key_blocks,
                            self.s.residual_keep,
                            self.s.lowrank_rank,
                        )
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return pb.Task(kind=pb.Task.WAIT, total_rounds=self.s.rounds)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):  # wait_for, cancelled, could leave it unlocked
                        await self.changed.wait()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------------ the round loop
    async def run(self) -> None:
        """Run rounds until `rounds` have completed, then linger so workers hear DONE."""
        background = [asyncio.create_task(self.sessions.beat()), asyncio.create_task(self.control.watch())]
        background += self.tracking.start() if self.tracking else []  # MLflow and TensorBoard
        ended: str | None = None
        try:
            if self.link is not None:
                await serve_parent(self, self.link)
            while not self.done:
                if not await self.control.follow():
                    self.done = True
                    break
                await self.serve_one_round()
            end = FederationState.STOPPED if self.control.stopped else FederationState.COMPLETED
            await asyncio.to_thread(self.store.update_federation, self.fed_id, state=end.value)
            ended = end.value
            how = "stopped by an administrator after" if self.control.stopped else "completed"
            log.info("federation %s %s %d rounds", self.s.federation, how, self.completed)
            await self._notify()
            if self.s.exit_when_done:
                await self.sessions.linger(self.s.linger_seconds)
        finally:
            for task in background:
                task.cancel()
            if self.tracking is not None:  # shielded: a cancelled serve still logs its last round
                await asyncio.shield(self.tracking.close(ended))
            await asyncio.to_thread(self.sessions.heartbeats)

    async def serve_one_round(self) -> bool:
        """Run one round: the one a restart reopened, else a new one once enough workers are online.
        False if no round opened: an administrator paused or stopped the federation while it waited for
        workers, or the parent round's deadline (`deadline_cap`) came first."""
        r, self.resumed = self.resumed, None
        if r is None:
            if not await self.control.wait_for_workers(until=self.deadline_cap):
                return False
            if self.privacy and (
                why := await asyncio.to_thread(self.privacy.over_budget, self.round_number + 1)
            ):
                await self.control.finish(why)  # the budget is spent: the federation completes
                self.done = True
                return False
            r = await self._open_round()
        ok = await self._run_round(r)
        self.failures = 0 if ok else self.failures + 1
        if self.failures >= self.s.max_failed_rounds:
            self.failures = 0
            await self.control.give_up(f"{self.s.max_failed_rounds} consecutive rounds missed their quorum")
        return True

    def _target(self, participants: int) -> int:
        """Updates that close a round early: workers_per_round (fewer invited with over-selection), else all."""
        return max(1, min(self.s.workers_per_round or participants, participants))

    async def _open_round(self) -> Round:
        """Choose the participants (workers_per_round of the online workers, all if 0, plus over_selection
        more invited) and the blocks, record the round, and build it."""
        self.round_number += 1
        online = sorted(self.sessions.online(), key=lambda w: w.name)
        dp: dict[str, object] = {}
        if self.privacy:  # Poisson sampling with rate q, the mechanism the accountant composes
            chosen = self.privacy.sample(online)
            dp = self.privacy.row_fields(await asyncio.to_thread(self.privacy.mechanism, len(online)))
        else:
            invite = math.ceil((self.s.workers_per_round or len(online)) * (1 + self.s.over_selection))
            chosen = online if invite >= len(online) else self.rng.sample(online, invite)
        participants = {w.uid: w.name for w in chosen}
        deadline = min(time.time() + self.s.round_timeout, self.deadline_cap or math.inf)
        plan = self.targeting.plan(self.round_number)
        db_id = await asyncio.to_thread(
            self.store.open_round,
            self.fed_id,
            self.round_number,
            self.gm.version,
            self.gm.hash,
            sorted(participants.values()),
            self.s.min_updates,
            dt.datetime.fromtimestamp(deadline, dt.UTC),
            blocks=list(plan.train) if self.targeting.active else None,
            probe=plan.probe,
            **dp,
        )
        return self._new_round(db_id, self.round_number, plan, participants, deadline)

    async def _run_round(self, r: Round) -> bool:
        """Open the round to workers, close it at its target or deadline, and aggregate, record and
        publish it; False if it missed its quorum."""
        self.current, started = r, time.monotonic()
        log.info(
            "round %d open: %d participant(s)%s, version %d, %s",
            r.number,
            len(r.participants),
            f" (closes at {r.target} updates)" if r.target < len(r.participants) else "",
            r.base_version,
            self.targeting.describe(r.plan),
        )
        await self._notify()
        r.check_all_in()  # a private round may have sampled no one: it releases its noise at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(r.all_in.wait(), timeout=max(0.0, r.deadline_unix - time.time()))
        r.close()
        await r.settled()
        await self._notify()
        refused = refuse_at_close(self.filters, list(r.accepted.values()))
        taken = r.refuse(set(refused))
        for u in taken:
            await asyncio.to_thread(
                self.store.set_update_status, u.update_id, UpdateStatus.REJECTED, refused[u.key]
            )
            self.metrics.updates.labels(self.s.federation, UpdateStatus.REJECTED.value, "NORM_BOUND").inc()
            log.warning("update from %s for round %d rejected: %s", u.name, r.number, refused[u.key])
        quorum = 0 if self.privacy else min(self.s.min_updates, len(r.participants))
        if len(r.accepted) < quorum:
            reason = f"{len(r.accepted)} of {len(r.participants)} updates by the deadline; quorum is {quorum}"
            await asyncio.to_thread(
                self.store.close_round,
                r.db_id,
                RoundState.FAILED,
                error=reason,
                duration_seconds=time.monotonic() - started,
                **r.traffic(),
            )
            log.warning("round %d failed: %s", r.number, reason)
            self._count_round(RoundState.FAILED, started)
            return False
        c, line = await complete(self, r, taken, started)
        self._publish(c, r)
        self._count_round(RoundState.COMPLETED, started)
        log.info(line)
        return True

    def _publish(self, c: Candidate, r: Round) -> None:
        """The database records version c: workers may have it now, and older state can go."""
        self.gm.publish(c)
        self.completed += 1
        self.done = self.completed >= self.s.rounds and self.link is None
        self.metrics.version.labels(self.s.federation).set(c.version)
        failpoints.hit("coordinator.round.closed")  # recorded; the spool and old residuals not yet pruned
        self.versions.prune(c.version, self.s.history)
        checkpoint.prune_state(self.ckpt_dir, keep=c.version)
        spool.prune(self.spool_dir, keep_from=r.number - 1)

    def _count_round(self, state: RoundState, started: float) -> None:
        self.metrics.rounds.labels(self.s.federation, state.value).inc()
        self.metrics.round_seconds.labels(self.s.federation).observe(time.monotonic() - started)
        if self.tracking is not None:
            self.tracking.poke()
