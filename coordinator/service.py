"""The Coordinator gRPC service: thin handlers that validate the caller and delegate to the runner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from coordinator.auth import bearer_token
from coordinator.federation import Federation
from coordinator.sessions import Session
from strata.errors import FailedPrecondition, InvalidInput, Unauthenticated
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc


def _token(context: grpc.aio.ServicerContext) -> str:
    token = bearer_token(context.invocation_metadata())
    if token is None:  # the interceptor already refused such calls; this guards direct use
        raise Unauthenticated("missing worker token")
    return token


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, runner: Federation) -> None:
        self.runner = runner

    def _session(self, worker_id: str, context: grpc.aio.ServicerContext) -> Session:
        return self.runner.sessions.get(worker_id, _token(context))

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:
        return await self.runner.join(request, _token(context))

    async def GetTask(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        sess = self._session(request.worker_id, context)
        return await self.runner.get_task(sess, float(request.wait_seconds or 10))

    async def PullModel(
        self, request: pb.PullRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelChunk]:
        self._session(request.worker_id, context)  # authenticates the caller
        async for chunk in self.runner.downloads.pull(request):
            yield chunk

    async def PullBase(
        self, request: pb.BaseRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BaseChunk]:
        self._session(request.worker_id, context)  # authenticates the caller
        if self.runner.base is None:
            raise FailedPrecondition(
                "this federation trains the whole model: it has no base model to download"
            )
        async for chunk in self.runner.base.pull(request):
            yield chunk

    async def PushUpdate(
        self, request_iterator: AsyncIterator[pb.UpdateChunk], context: grpc.aio.ServicerContext
    ) -> pb.PushReply:
        token = _token(context)
        # the worker id travels in the header, the first chunk; peek at it to authenticate the session
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("an update stream must start with its header")
        sess = self.runner.sessions.get(first.header.worker_id, token)
        return await self.runner.uploads.push(sess, first, aiter(request_iterator))

    async def ReportMetrics(
        self, request: pb.MetricsReport, context: grpc.aio.ServicerContext
    ) -> pb.MetricsAck:
        sess = self._session(request.worker_id, context)
        await self.runner.uploads.report(sess, request)
        return pb.MetricsAck()
