"""Model downloads: what a worker needs to hold the published version (nothing, the global updates since
its version, or a snapshot), served from files in ≤1 MiB pieces."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from coordinator import checkpoint
from coordinator.global_model import GlobalModel
from coordinator.metrics import CoordinatorMetrics
from coordinator.round import Round
from coordinator.versions import VersionFiles, read_frames, write_frames
from strata import codec
from strata.codec import Codec
from strata.frames import file_header, header_of, pieces
from strata.proto.v1 import coordinator_pb2 as pb


class Downloads:
    def __init__(
        self,
        gm: GlobalModel,
        versions: VersionFiles,
        ckpt_dir: Path,
        metrics: CoordinatorMetrics,
        federation: str,
        downstream: str,
        history: int,
        zstd_level: int,
        current: Callable[[], Round | None],
        max_concurrent: int = 8,
    ) -> None:
        self.gm = gm
        self.versions = versions
        self.ckpt_dir = ckpt_dir
        self.metrics = metrics
        self.federation = federation
        self.downstream = downstream
        self.history = history
        self.snapshot_codec = Codec("fp32", level=zstd_level)
        self.snapshot_lock = asyncio.Lock()
        self.current = current  # the open round, which counts the bytes sent
        # versions streamed at once: the others wait their turn, so what waits in send buffers for slow
        # readers does not grow with the number of workers
        self.sending = asyncio.Semaphore(max_concurrent)

    async def pull(self, req: pb.PullRequest) -> AsyncIterator[pb.ModelChunk]:
        async with self.sending:
            async for chunk in self._stream(req):
                yield chunk

    async def _stream(self, req: pb.PullRequest) -> AsyncIterator[pb.ModelChunk]:
        gm = self.gm
        version, h = gm.version, gm.hash  # one consistent version, even if a new one is published meanwhile
        files = sorted(gm.assets.items()) if req.include_assets else []
        kind, updates = self.plan(req, version)
        paths = [self.versions.update(v) for v in updates]
        if kind == pb.ModelHeader.SNAPSHOT:
            paths = [self.versions.snapshot(version)]
        with self.versions.pinned(paths):  # a version published meanwhile must not prune what this streams
            async for chunk in self._send(req, kind, version, h, files, updates, paths):
                yield chunk

    async def _send(
        self,
        req: pb.PullRequest,
        kind: int,
        version: int,
        h: str,
        files: list[tuple[str, bytes]],
        updates: list[int],
        paths: list[Path],
    ) -> AsyncIterator[pb.ModelChunk]:
        gm = self.gm
        if kind == pb.ModelHeader.SNAPSHOT:
            await self.snapshot_file(version)
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
                    mark=pb.VersionMark(version=v, model_hash=gm.hashes[v], num_tensors=counts[i])
                )
            for part, value in read_frames(path):
                if part == "tensor":
                    raw += 4 * math.prod(value.shape)  # type: ignore[attr-defined]
                    yield pb.ModelChunk(tensor=value)  # type: ignore[arg-type]
                else:
                    sent += len(value)  # type: ignore[arg-type]
                    yield pb.ModelChunk(data=value)  # type: ignore[arg-type]
        self.metrics.bytes_out.labels(self.federation).inc(sent)
        r = self.current()  # count before the end marker: a client may hang up as soon as it has it
        if r is not None:
            r.count_download(sent, raw)
        yield pb.ModelChunk(end=pb.ModelEnd(num_tensors=sum(counts), num_files=len(files)))

    def plan(self, req: pb.PullRequest, version: int) -> tuple[int, list[int]]:
        """CURRENT, UPDATES (with the versions to send) or SNAPSHOT for a worker holding have_version."""
        have = req.have_version
        known = self.gm.hashes.get(have)
        if not req.have_hash or known != req.have_hash or have > version:
            return pb.ModelHeader.SNAPSHOT, []
        if have == version:
            return pb.ModelHeader.CURRENT, []
        wanted = list(range(have + 1, version + 1))
        if (
            self.downstream == "delta"
            and len(wanted) <= self.history
            and all(self.versions.update(v).is_file() for v in wanted)
        ):
            return pb.ModelHeader.UPDATES, wanted
        return pb.ModelHeader.SNAPSHOT, []

    async def snapshot_file(self, version: int) -> Path:
        """The version's snapshot frames, written once (from its checkpoint) on first demand."""
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
