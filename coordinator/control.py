"""What an administrator asked of a federation (run, pause, resume, stop; issued and revoked tokens),
polled from the database, and how the round loop follows it between rounds."""

from __future__ import annotations

import asyncio
import logging
import time

from coordinator.sessions import Sessions
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from strata.storage.models import FederationState

log = logging.getLogger("strata.coordinator")


class Control:
    def __init__(self, settings: CoordinatorSettings, store: Store, fed_id: int, sessions: Sessions) -> None:
        self.s = settings
        self.store = store
        self.fed_id = fed_id
        self.sessions = sessions
        self.desired: str | None = None  # what an administrator asked for: running, paused, stopped
        self.stopped = False
        self.self_paused = False  # paused by give_up, not by an administrator

    async def _update(self, **fields: object) -> None:
        await asyncio.to_thread(self.store.update_federation, self.fed_id, **fields)

    async def read(self) -> None:
        self.desired, issued = await asyncio.to_thread(self.store.control, self.fed_id)
        self.sessions.set_issued(issued)

    async def watch(self) -> None:
        """Poll the administrator's wishes (state, issued and revoked tokens) from the database."""
        while True:
            await asyncio.sleep(self.s.control_poll_seconds)
            try:
                await self.read()
            except Exception:  # noqa: BLE001 - a missed poll must not stop the federation
                log.exception("could not read the federation's control state")

    async def follow(self) -> bool:
        """Between rounds: wait while paused; False when stopped (the loop ends and workers hear DONE)."""
        announced = False
        while self.desired == "paused":
            if not announced:
                await self._update(state=FederationState.PAUSED.value)
                by = "itself (see its error)" if self.self_paused else "an administrator"
                log.info("federation %s paused by %s", self.s.federation, by)
                announced = True
            await asyncio.sleep(0.2)
        if self.desired == "stopped":
            self.stopped = True
            return False
        if announced:
            self.self_paused = False
            await self._update(state=FederationState.RUNNING.value, error=None)
            log.info("federation %s resumed", self.s.federation)
        return True

    @property
    def holding(self) -> bool:
        """Paused or stopped: no new round opens."""
        return self.desired in ("paused", "stopped")

    async def give_up(self, msg: str) -> None:
        """Rounds keep missing their quorum: fail the federation, or (the default) pause it with the reason
        until an administrator resumes it (`strata admin resume`), and retry then."""
        if self.s.on_failed_rounds == "fail":
            await self._update(state=FederationState.FAILED.value, error=msg)
            raise RuntimeError(msg)
        msg += f"; paused until an administrator resumes it (strata admin resume {self.s.federation})"
        log.error("federation %s: %s", self.s.federation, msg)
        await self._update(state=FederationState.PAUSED.value, desired_state="paused", error=msg)
        self.desired = "paused"
        self.self_paused = True

    async def finish(self, reason: str) -> None:
        """The federation ends before its planned rounds (its privacy budget is spent): record why; the
        round loop then completes it."""
        log.warning("federation %s: %s", self.s.federation, reason)
        await self._update(reason=reason)

    async def wait_for_workers(self, until: float | None = None) -> bool:
        """Wait until min_workers are online; False if the wall-clock time `until` came first (a parent
        round's deadline, for a sub-federation) or an administrator holds the federation."""
        started = time.monotonic()
        while len(self.sessions.online()) < self.s.min_workers and not self.holding:
            if until is not None and time.time() >= until:
                return False
            if self.s.start_timeout and time.monotonic() - started > self.s.start_timeout:
                msg = (
                    f"only {len(self.sessions.online())} of {self.s.min_workers} workers joined "
                    f"within {self.s.start_timeout:g}s"
                )
                await self._update(state=FederationState.FAILED.value, error=msg)
                raise RuntimeError(msg)
            await asyncio.sleep(0.2)
        return not self.holding
