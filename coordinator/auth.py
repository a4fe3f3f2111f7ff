"""Server interceptors: authenticate every worker call before its handler runs, and map domain
errors to gRPC status codes in one place."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coordinator.ratelimit import RateLimiter
from strata.errors import StrataError

log = logging.getLogger("strata.coordinator")
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def _status(err: StrataError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL)


def _wrap_unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request_or_iterator, context)
        except StrataError as err:
            await context.abort(_status(err), str(err))

    return handler


def _wrap_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(request, context):
                yield item
        except StrataError as err:
            await context.abort(_status(err), str(err))

    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid `authorization: Bearer <token>`; wraps handlers' error mapping."""

    def __init__(self, is_valid: Callable[[str], bool], limiter: RateLimiter | None = None) -> None:
        self.is_valid = is_valid
        self.limiter = limiter

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        token = bearer_token(details.invocation_metadata)
        if token is None or not self.is_valid(token):
            msg = "missing worker token" if token is None else "unknown worker token"
            log.warning("refused %s: %s", details.method, msg)
            return _deny(msg)
        if self.limiter is not None and not self.limiter.allow(hashlib.sha256(token.encode()).hexdigest()):
            log.warning("refused %s: request rate limit of this worker token", details.method)
            return _deny(
                f"rate limit: more than {self.limiter.rate:g} requests/s (bursts of {self.limiter.burst:g}) "
                "with this worker token; retry later",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler


def _deny(message: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED) -> grpc.RpcMethodHandler:
    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    # the same handler shape serves every method kind: the call is refused before any message is read
    return grpc.unary_unary_rpc_method_handler(abort)
