"""One round of a federation, the single owner of everything about it: number, base version,
participants, target, deadline, the uploads in flight, the accepted updates and their aggregate, its
database row and bytes, and its phase (open, closed)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.aggregators import Aggregator
from coordinator.ingest import Received, RoundSums, Upload, evict
from coordinator.sessions import Session
from coordinator.updates import Spooled
from strata.errors import FailedPrecondition, InvalidInput
from strata.proto.v1 import coordinator_pb2 as pb
from strata.targeting import RoundPlan


@dataclass
class Round:
    db_id: int
    number: int
    base_version: int
    base_hash: str
    participants: dict[str, str]  # uid -> name
    deadline_unix: float
    plan: RoundPlan
    target: int  # the round closes once this many updates are in (< participants with over-selection)
    aggregator: Aggregator
    uploads: dict[str, Upload] = field(default_factory=dict)  # uid -> upload in flight
    accepted: dict[str, Spooled] = field(default_factory=dict)  # uid -> its accepted update, spooled on disk
    bytes_up: int = 0
    raw_bytes_up: int = 0
    bytes_down: int = 0
    raw_bytes_down: int = 0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    recording: int = 0  # accepted updates whose database row is being written
    closed: bool = False

    @property
    def sums(self) -> RoundSums:
        return self.aggregator.sums

    # ------------------------------------------------------------------ while open
    def wants_update_from(self, uid: str) -> bool:
        """Whether this worker should be training for the round now."""
        return not self.closed and uid in self.participants and uid not in self.accepted

    def check_update(self, sess: Session, h: pb.UpdateHeader) -> None:
        """Refuse an update this round cannot take, with the reason (FailedPrecondition or InvalidInput)."""
        if self.closed and h.round == self.number:
            why = (
                "its deadline passed"
                if len(self.accepted) < self.target
                else f"it had its {self.target} update(s)"
            )
            raise FailedPrecondition(f"round {self.number} is closed: {why}")
        if self.closed or h.round != self.number:
            open_no = "none" if self.closed else str(self.number)
            raise FailedPrecondition(f"update for round {h.round}, but the open round is {open_no}")
        if sess.uid not in self.participants:
            raise FailedPrecondition(f"worker {sess.name} is not a participant of round {self.number}")
        if sess.uid in self.uploads:
            raise FailedPrecondition(
                f"worker {sess.name} is already uploading an update for round {self.number}"
            )
        if h.base_version != self.base_version or h.base_hash != self.base_hash:
            raise FailedPrecondition(
                f"update computed against version {h.base_version} ({h.base_hash[:12]}), round {self.number} "
                f"trains version {self.base_version} ({self.base_hash[:12]})"
            )
        if not (0 <= h.local_epsilon < math.inf and 0 <= h.local_delta < 1):
            raise InvalidInput(
                f"local_epsilon {h.local_epsilon} / local_delta {h.local_delta}: a local DP-SGD guarantee needs "
                "a finite ε ≥ 0 and δ in [0, 1)"
            )
        if h.num_samples == 0 or h.num_samples > 10 * max(sess.num_samples, 1):
            raise InvalidInput(
                f"num_samples {h.num_samples} is not plausible for a worker that declared {sess.num_samples}"
            )

    def holds(self, uid: str, h: pb.UpdateHeader) -> bool:
        """Whether this exact update (same round and base) is already accepted: a retry, counted once."""
        return (
            h.round == self.number
            and uid in self.accepted
            and h.base_version == self.base_version
            and h.base_hash == self.base_hash
        )

    def admit(
        self, uid: str, name: str, path: Path, got: Received, num_samples: int, **fields: Any
    ) -> Spooled:
        """Count a complete update (its blocks are in the sums already) as one of the round's accepted ones."""
        u = Spooled(
            uid,
            path,
            num_samples,
            name=name,
            norm=got.norm,
            tensors=frozenset(got.names),
            sq=got.sq,
            **fields,
        )
        self.aggregator.accept(u)
        self.accepted[uid] = u
        self.bytes_up += got.payload_bytes
        self.raw_bytes_up += got.raw_bytes
        return u

    def check_all_in(self) -> None:
        """Wake the round loop once the round has its target of recorded updates."""
        if len(self.accepted) >= self.target and not self.recording:
            self.all_in.set()

    async def settled(self) -> None:
        """Wait until every accepted update's database row is written (closing needs their ids)."""
        while self.recording:
            await asyncio.sleep(0.01)

    def count_download(self, sent: int, raw: int) -> None:
        if not self.closed:
            self.bytes_down += sent
            self.raw_bytes_down += raw

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """No more updates: uploads still in flight are late and leave the sums."""
        self.closed = True
        for upload in list(self.uploads.values()):
            evict(upload, self.sums)

    def refuse(self, uids: set[str]) -> list[Spooled]:
        """Take accepted updates back out of the count (their blocks leave the sums in the close pass)."""
        out = [self.accepted.pop(uid) for uid in sorted(uids)]
        for u in out:
            self.aggregator.retract(u)
        return out

    def train_metrics(self) -> tuple[float | None, float | None]:
        """The accepted updates' sample-weighted training loss and accuracy (none in a private round:
        the noise does not cover them)."""
        if self.aggregator.private:
            return None, None
        n = max(sum(u.num_samples for u in self.accepted.values()), 1)
        loss = sum(u.train_loss * u.num_samples for u in self.accepted.values()) / n
        acc = sum(u.train_accuracy * u.num_samples for u in self.accepted.values()) / n
        return loss, acc

    def traffic(self) -> dict[str, Any]:
        """The round's counts as its database row records them."""
        return dict(
            num_updates=len(self.accepted),
            num_samples=0 if self.aggregator.private else self.sums.total_samples,
            bytes_up=self.bytes_up,
            raw_bytes_up=self.raw_bytes_up,
            bytes_down=self.bytes_down,
            raw_bytes_down=self.raw_bytes_down,
        )
