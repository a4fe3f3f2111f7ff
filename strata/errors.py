"""Domain errors; the coordinator's interceptor maps each to one gRPC status code."""

from __future__ import annotations


class StrataError(Exception):
    """Base of the errors a request can cause; `code` names the gRPC status it maps to."""

    code = "INTERNAL"


class InvalidInput(StrataError):
    """The request is malformed: a corrupt frame, a wrong shape, a bad value (INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class FailedPrecondition(StrataError):
    """Well-formed but not acceptable now: another round, another base version (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class NotFound(StrataError):
    code = "NOT_FOUND"


class Unauthenticated(StrataError):
    code = "UNAUTHENTICATED"


class PermissionDenied(StrataError):
    code = "PERMISSION_DENIED"


class MemberError(RuntimeError):
    """A member of a federation (a worker, or a sub-federation's coordinator) cannot go on: a model it
    cannot obtain, bad local data, a task it cannot train."""
