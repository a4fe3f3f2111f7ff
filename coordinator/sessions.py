"""The workers a coordinator knows while it runs: which tokens may join, who joined, who is online."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from coordinator.store import Store
from coordinator.tree_settings import dashboard_url_problem
from strata.errors import InvalidInput, NotFound, PermissionDenied
from strata.proto.v1 import coordinator_pb2 as pb
from strata.storage.models import utcnow
from strata.storage.tokens import hash_token

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


class Sessions:
    """Tokens from the settings and those issued through the dashboard API (`issued`, refreshed by the
    control loop), and the sessions of the workers that joined with them."""

    def __init__(
        self, store: Store, fed_id: int, tokens: list[str], worker_timeout: float, private: bool = False
    ) -> None:
        self.store = store
        self.private = private  # differential privacy: a member's sample counts are kept off the record
        self.fed_id = fed_id
        self.token_hashes = {hash_token(t) for t in tokens}
        self.issued: set[str] = set()  # hashes of the valid tokens issued through the dashboard API
        self.worker_timeout = worker_timeout
        self.by_uid: dict[str, Session] = {}
        self.told_done: set[str] = set()  # the workers that have heard DONE

    def authorise(self, token: str) -> bool:
        """A token from the settings, or one issued through the dashboard API and not revoked."""
        h = hash_token(token)
        return h in self.token_hashes or h in self.issued

    def get(self, uid: str, token: str) -> Session:
        sess = self.by_uid.get(uid)
        if sess is None:
            raise NotFound(f"unknown worker id {uid!r}: call Join first")
        if sess.token_hash != hash_token(token):
            raise PermissionDenied("this worker id belongs to another token")
        sess.last_seen = time.monotonic()
        return sess

    def warn_if_closed(self, federation: str) -> None:
        if not self.token_hashes and not self.issued:
            log.warning(
                "no worker tokens: workers can join only with tokens issued through the dashboard API "
                "(strata admin token issue %s LABEL)",
                federation,
            )

    async def join(self, req: pb.JoinRequest, token: str) -> Session:
        name = req.name.strip()
        if not name or len(name) > 128:
            raise InvalidInput("name: give a worker name of 1 to 128 characters")
        if req.num_samples == 0:
            raise InvalidInput("num_samples: a worker needs at least one training example")
        if req.dashboard_url and not req.members:
            raise InvalidInput(
                "dashboard_url: only a member federation (members > 0) has a dashboard to link"
            )
        if req.dashboard_url and (problem := dashboard_url_problem(req.dashboard_url)):
            raise InvalidInput(f"dashboard_url: {problem}")
        try:
            w = await asyncio.to_thread(
                self.store.upsert_worker,
                self.fed_id,
                name,
                token,
                device=req.device[:64],
                software_version=req.version[:32],
                num_samples=0 if self.private else req.num_samples,
                num_eval_samples=0 if self.private else req.num_eval_samples,
                members=req.members or None,  # a sub-federation (docs/methods.md section 5)
                inner_rounds=req.inner_rounds or None,
                lora_rank=req.lora_rank or None,  # a LoRA worker training a lower rank than the federation's
                dashboard_url=req.dashboard_url or None,  # a member federation's own dashboard page
            )
        except PermissionError as exc:
            raise PermissionDenied(str(exc)) from None
        sess = self.by_uid[w.uid] = Session(w.id, w.uid, name, w.token_hash, req.num_samples)
        if self.private:
            log.info("%s %s joined", "member federation" if req.members else "worker", name)
        elif req.members:
            log.info(
                "member federation %s joined (%d workers, %d samples, %d inner round(s) per round)",
                name,
                req.members,
                req.num_samples,
                req.inner_rounds,
            )
        else:
            log.info("worker %s joined (%d samples, %s)", name, req.num_samples, req.device or "?")
        return sess

    def online(self) -> list[Session]:
        now = time.monotonic()
        return [w for w in self.by_uid.values() if now - w.last_seen <= self.worker_timeout]

    def set_issued(self, issued: set[str]) -> None:
        """The dashboard's valid tokens changed: a revoked token's workers are gone at once."""
        self.issued = issued
        allowed = self.token_hashes | issued
        for uid, sess in list(self.by_uid.items()):
            if sess.token_hash not in allowed:
                del self.by_uid[uid]
                log.info("worker %s removed: its token was revoked", sess.name)

    async def beat(self, every: float = 2.0) -> None:
        """Record the heartbeats every few seconds, off the event loop."""
        while True:
            await asyncio.sleep(every)
            await asyncio.to_thread(self.heartbeats)

    async def linger(self, seconds: float) -> None:
        """Wait up to `seconds` until every worker the federation knows, joined since a restart or not, has
        heard DONE."""
        end = time.monotonic() + seconds
        known = {w.uid for w in await asyncio.to_thread(self.store.workers, self.fed_id)}
        while time.monotonic() < end and not (known | set(self.by_uid)) <= self.told_done:
            await asyncio.sleep(0.1)

    def heartbeats(self) -> None:
        """Record when each worker was last seen (a missed write must not stop the federation)."""
        now_m, now = time.monotonic(), utcnow()
        seen = {w.db_id: now - dt.timedelta(seconds=now_m - w.last_seen) for w in self.by_uid.values()}
        try:
            self.store.touch_workers(seen)
        except Exception:  # noqa: BLE001
            log.exception("could not record worker heartbeats")
