"""A federation that is one member of a parent federation (docs/methods.md section 5).

`ParentLink` is this coordinator's side of the parent's protocol, the same one a worker speaks
(`strata.member`): join, long-poll for a task, pull the parent's version into a hash-checked copy,
deliver an update with error feedback, report a metric. `serve_parent` replaces the round loop: for each
parent round it takes the parent's version as its own next version (key blocks mixed with its own by
β), runs `inner_rounds` rounds of its federation, and sends up θ_c − θ_P weighted by n_c, the samples of
the members that contributed. Its records (coordinator/tree_store.py) make a restart on either side
resume without training a parent round twice: a parent round already synchronised is not synchronised
again, inner rounds already completed are not run again, and an update the parent already holds is
acknowledged as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import torch

from coordinator import checkpoint, tree_store
from coordinator.tree_settings import dashboard_url_problem
from strata import __version__, failpoints
from strata.errors import MemberError
from strata.hierarchy import mix_residual
from strata.member.client import CoordinatorClient
from strata.member.download import ModelCopy
from strata.member.replica import TrainResult
from strata.member.upload import Pending, deliver
from strata.modeling import global_tensors
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import RoundTask, task_from_proto, task_to_proto
from strata.storage.models import FederationState

if TYPE_CHECKING:
    from coordinator.federation import Federation
    from coordinator.settings import CoordinatorSettings

log = logging.getLogger("strata.coordinator")

POLL_SECONDS = 5  # a long poll of the parent holds a thread; short enough for a prompt shutdown


class ParentLink:
    """This federation's membership in its parent: the channel, the copy of the parent's model, the
    member id, and the error-feedback residual of the updates it sends up."""

    def __init__(self, s: CoordinatorSettings) -> None:
        self.s = s
        self.client = CoordinatorClient(
            s.parent,
            s.parent_token.get_secret_value(),
            connect_timeout=max(120.0, s.round_timeout),
            credentials=s.parent_credentials(),
            server_name=s.parent_tls_server_name,
        )
        self.copy = ModelCopy(self.client, "cpu")
        self.dir = s.data_dir / "parent" / s.federation
        self.assets = self.dir / "assets"
        self.residual_path = self.dir / "residual.safetensors"
        self.member_id = ""
        self.reply: pb.JoinReply | None = None
        self.announced: tuple[int, int] = (0, 0)  # (members, samples) as the parent last heard them

    def close(self) -> None:
        self.client.close()

    def join(self, members: int, samples: int) -> pb.JoinReply:
        self.reply = self.client.join(
            pb.JoinRequest(
                name=self.s.member_name,
                num_samples=max(1, samples),
                device="federation",
                version=__version__,
                members=max(1, members),
                inner_rounds=self.s.inner_rounds,
                dashboard_url=self.s.dashboard_url,
            )
        )
        self.member_id = self.reply.worker_id
        self.announced = (members, samples)
        log.info(
            "joined parent federation %s at %s as member %s",
            self.reply.federation,
            self.s.parent,
            self.s.member_name,
        )
        return self.reply

    def model_dir(self) -> Path:
        """The parent's current version as a model directory: what a sub-federation started without
        --model fine-tunes (its version 0 is the parent's version it joined at)."""
        target = self.dir / "model"
        if (target / "config.json").is_file():
            return target
        req = pb.PullRequest(worker_id=self.member_id, include_assets=True)
        header = self.client.call(lambda: self.copy._fetch(req, self.assets, self.client), "pull")
        replica = self.copy.replica
        assert replica is not None
        tmp = self.dir / "model.partial"
        replica.model.save_pretrained(tmp)
        replica.tokenizer.save_pretrained(tmp)
        tmp.rename(target)
        self.copy.dirty = True  # loaded without the hash check: pull properly before the first round
        log.info("took the parent's model at version %d as this federation's model", header.version)
        return target

    def next_task(self) -> RoundTask | None | bool:
        """The parent's task for this member: a RoundTask, False (nothing now) or None (the parent is done)."""
        try:
            msg = self.client.get_task(self.member_id, POLL_SECONDS)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            log.info("the parent does not know this federation any more; joining again")
            raise _Rejoin from None
        if msg.kind == pb.Task.DONE:
            return None
        if msg.kind != pb.Task.TRAIN:
            return False
        return task_from_proto(msg)

    def pull(self, task: RoundTask) -> dict[str, torch.Tensor]:
        """The parent's version the task trains, hash-checked; its tensors (the copy keeps them)."""
        replica = self.copy.ensure(self.member_id, self.assets, task.model_version, task.model_hash)
        return global_tensors(replica.model)

    def deliver(self, task: RoundTask, result: TrainResult) -> bool:
        """Send θ_c − θ_P up, with the same encoding, error feedback and duplicate rules as a worker. A
        parent that restarted and forgot this member (NOT_FOUND) is joined again and sent the same update."""
        pending = Pending.encode(task, result, self.residual_path)
        for _ in range(3):
            try:
                return deliver(self.client, self.member_id, pending, self.residual_path)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                log.info("the parent does not know this federation any more; joining again to deliver")
                self.join(*self.announced)
        return False

    def report(self, task: RoundTask, loss: float, accuracy: float, samples: int) -> None:
        self.client.report(
            pb.MetricsReport(
                worker_id=self.member_id,
                round=task.round,
                model_version=task.model_version,
                split="federation-test",
                num_samples=samples,
                loss=loss,
                accuracy=accuracy,
            )
        )


def connect(s: CoordinatorSettings) -> tuple[ParentLink, CoordinatorSettings]:
    """Join the parent, and take what the parent decides for the whole tree: the task, the labels, and
    (without --model) the model itself. Returns the link and the settings this federation runs with."""
    link = ParentLink(s)
    reply = link.join(max(len(s.worker_tokens), s.min_workers), 1)
    task = reply.task_kind or "sequence-classification"
    if "task" in s.model_fields_set and s.task != task:
        raise ValueError(f"task: the parent federation trains {task}, this one is set to {s.task}")
    update: dict[str, object] = {"task": task}
    if s.labels is None and reply.labels:
        update["labels"] = ",".join(reply.labels)
    if s.model is None:
        update["model"] = link.model_dir()
    return link, s.model_copy(update=update)


def parent_page(reply: pb.JoinReply) -> str | None:
    """The parent's dashboard page as its JoinReply gives it, for this federation's dashboard to link to;
    None when it gives none, or one that is not an http(s) address (logged; the federation goes on)."""
    url = reply.dashboard_url
    if url and (problem := dashboard_url_problem(url)):
        log.warning("the parent's dashboard address is left out: %r: %s", url[:100], problem)
        return None
    return url or None


async def _record_parent_page(fed: Federation, link: ParentLink) -> None:
    if link.reply is not None:
        page = parent_page(link.reply)
        await asyncio.to_thread(fed.store.update_federation, fed.fed_id, parent_dashboard_url=page)


class _Rejoin(Exception):
    """The parent forgot this member's session (it restarted): join again."""


def synchronised(
    parent: dict[str, torch.Tensor], own: dict[str, torch.Tensor], key: set[str], keep: float
) -> dict[str, torch.Tensor]:
    """This federation's next version: the parent's, except that in key-block tensors it keeps the share
    β = `keep` of its own deviation from the parent's shared copy (K ← κ' + β·(K − κ'))."""
    return {n: mix_residual(own[n], t, keep) if n in key else t for n, t in parent.items()}


async def serve_parent(fed: Federation, link: ParentLink) -> None:
    """Serve the parent's rounds until it is done (or an administrator stops this federation). A parent
    that refuses this federation's token ends it: state failed, with the reason."""
    try:
        await _serve(fed, link)
    except grpc.RpcError as err:
        if err.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise
        msg = f"the parent federation at {fed.s.parent} refused this federation ({err.code().name}: {err.details()})"
        await asyncio.to_thread(
            fed.store.update_federation, fed.fed_id, state=FederationState.FAILED.value, error=msg
        )
        raise MemberError(msg) from None


async def _serve(fed: Federation, link: ParentLink) -> None:
    s = fed.s
    await _record_parent_page(fed, link)
    await _redeliver(fed, link)
    while not fed.done:
        if not await fed.control.follow():
            break
        try:
            task = await asyncio.to_thread(link.next_task)
        except _Rejoin:
            await asyncio.to_thread(link.join, *await asyncio.to_thread(_membership, fed))
            await _record_parent_page(fed, link)
            continue
        if task is None:
            log.info("the parent federation is done; federation %s completes", s.federation)
            break
        if task is False:
            continue
        assert isinstance(task, RoundTask)
        await _serve_round(fed, link, task)
    fed.done = True


async def _serve_round(fed: Federation, link: ParentLink, task: RoundTask) -> None:
    s, started = fed.s, time.monotonic()
    await _announce(fed, link)
    pr = await asyncio.to_thread(tree_store.parent_round, fed.store, fed.fed_id, task.round)
    parent = await asyncio.to_thread(link.pull, task)
    if pr is None or pr.parent_version != task.model_version or pr.parent_hash != task.model_hash:
        pr = await _synchronise(fed, task, parent)
    elif pr.state == "delivered":
        log.info("parent round %d: already delivered; sending it again if the parent lost it", task.round)
    fed.deadline_cap = task.deadline_unix
    try:
        while True:
            done = await asyncio.to_thread(tree_store.inner_rounds, fed.store, fed.fed_id, pr.rounds_before)
            if len(done) >= s.inner_rounds or time.time() >= task.deadline_unix or fed.done:
                break
            if not await fed.serve_one_round():
                break
    finally:
        fed.deadline_cap = None
    await _send_up(fed, link, task, pr, parent, started)


async def _redeliver(fed: Federation, link: ParentLink) -> None:
    """After a restart: a parent round whose inner rounds had all completed but whose delivery was not
    recorded is delivered now (the parent answers `duplicate` if it already holds it, and counts it once;
    it would not ask for it again)."""
    pr = await asyncio.to_thread(tree_store.unfinished, fed.store, fed.fed_id)
    if pr is None or not pr.task:
        return
    done = await asyncio.to_thread(tree_store.inner_rounds, fed.store, fed.fed_id, pr.rounds_before)
    if len(done) < fed.s.inner_rounds:
        return  # the parent asks again while its round is open: the inner rounds go on then
    task = task_from_proto(pb.Task.FromString(bytes.fromhex(pr.task)))
    log.info("parent round %d: delivering the update a restart cut off", task.round)
    parent = await asyncio.to_thread(link.pull, task)
    await _send_up(fed, link, task, pr, parent, time.monotonic())


async def _send_up(
    fed: Federation,
    link: ParentLink,
    task: RoundTask,
    pr: tree_store.ParentRound,
    parent: dict[str, torch.Tensor],
    started: float,
) -> None:
    """Send θ_c − θ_P for a parent round's completed inner rounds, and record what became of it."""
    done = await asyncio.to_thread(tree_store.inner_rounds, fed.store, fed.fed_id, pr.rounds_before)
    if not done:
        log.warning("parent round %d: no inner round completed; nothing to send", task.round)
        await asyncio.to_thread(tree_store.finish_parent_round, fed.store, pr.id, "missed", 0)
        return
    samples = await asyncio.to_thread(tree_store.contributed_samples, fed.store, fed.fed_id, pr.rounds_before)
    result = upward(fed, task, parent, done, samples, time.monotonic() - started)
    await _announce(fed, link)  # the parent weighs the update by samples it must find plausible
    ok = await asyncio.to_thread(link.deliver, task, result)
    failpoints.hit("coordinator.parent.delivered")  # the parent has it; this federation has not recorded it
    await asyncio.to_thread(
        tree_store.finish_parent_round, fed.store, pr.id, "delivered" if ok else "missed", samples
    )
    last = done[-1]
    if ok and last.test_loss is not None and last.test_accuracy is not None:
        await asyncio.to_thread(link.report, task, last.test_loss, last.test_accuracy, len(fed.eval_examples))
    log.info(
        "parent round %d: %d inner round(s), %d samples, update %s",
        task.round,
        len(done),
        samples,
        "delivered" if ok else "not taken",
    )


async def _synchronise(
    fed: Federation, task: RoundTask, parent: dict[str, torch.Tensor]
) -> tree_store.ParentRound:
    """Take the parent's version (key blocks mixed) as this federation's next version, record, publish."""
    gm = fed.gm
    key = gm.bmap.tensors_of(b for b in task.local_blocks if b in gm.bmap.names)
    target = synchronised(parent, global_tensors(gm.model), key, task.residual_keep)
    c = await asyncio.to_thread(fed.aggregation.sync, target)
    pr = await asyncio.to_thread(
        tree_store.record_sync,
        fed.store,
        fed.fed_id,
        task.round,
        task.model_version,
        task.model_hash,
        c.version,
        c.hash,
        fed.round_number,
        task_to_proto(task).SerializeToString().hex(),
    )
    gm.publish(c)
    fed.versions.prune(c.version, fed.s.history)
    checkpoint.prune_state(fed.ckpt_dir, keep=c.version)
    log.info(
        "parent round %d: took the parent's version %d as version %d%s",
        task.round,
        task.model_version,
        c.version,
        f" (key blocks {', '.join(task.local_blocks)} keep {task.residual_keep:g} of their own)"
        if task.local_blocks
        else "",
    )
    return pr


def upward(
    fed: Federation,
    task: RoundTask,
    parent: dict[str, torch.Tensor],
    done: list,
    samples: int,
    seconds: float,
) -> TrainResult:
    """θ_c − θ_P over the tensors the parent's task trains, with the inner rounds' training metrics."""
    own = global_tensors(fed.gm.model)
    trains = fed.gm.bmap.tensors_of(task.blocks) if task.blocks else set(parent)
    delta = {n: (own[n].double() - parent[n].double()).float() for n in sorted(parent) if n in trains}
    losses = [r.train_loss for r in done if r.train_loss is not None]
    accs = [r.train_accuracy for r in done if r.train_accuracy is not None]
    return TrainResult(
        delta=delta,
        num_samples=max(1, samples),
        num_steps=len(done),
        loss=sum(losses) / len(losses) if losses else 0.0,
        accuracy=sum(accs) / len(accs) if accs else 0.0,
        seconds=seconds,
    )


def _membership(fed: Federation) -> tuple[int, int]:
    """(members, samples) to announce at the parent: the workers this federation knows, their samples."""
    workers = fed.store.workers(fed.fed_id)
    return max(len(workers), fed.s.min_workers), sum(w.num_samples for w in workers)


async def _announce(fed: Federation, link: ParentLink) -> None:
    """Join again when this federation's members or samples changed, so the parent shows them as they
    are and finds the samples an update carries plausible."""
    membership = await asyncio.to_thread(_membership, fed)
    if membership != link.announced:
        await asyncio.to_thread(link.join, *membership)
