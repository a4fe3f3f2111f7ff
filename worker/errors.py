"""The error that stops a worker: bad local data, a model that does not match, a task it cannot train."""

from __future__ import annotations

from strata.errors import MemberError


class WorkerError(MemberError):
    """The worker cannot go on (bad local data, a model that does not match, a refused update)."""
