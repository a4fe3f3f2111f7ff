"""Serving a LoRA federation's base model to a worker that holds no copy: a manifest (every file with its
size and SHA-256), then any file from any offset in ≤1 MiB pieces, so a cut download resumes where it
stopped. The files are the coordinator's own model folder (weights as safetensors, config, tokenizer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from coordinator.metrics import CoordinatorMetrics
from coordinator.round import Round
from strata import failpoints
from strata.base_model import file_sha256, served_files
from strata.errors import InvalidInput
from strata.frames import CHUNK_BYTES
from strata.proto.v1 import coordinator_pb2 as pb

log = logging.getLogger("strata.coordinator")


class BaseFiles:
    def __init__(
        self,
        model_dir: Path,
        base_hash: str,
        metrics: CoordinatorMetrics,
        federation: str,
        current: Callable[[], Round | None],
    ) -> None:
        self.model_dir = model_dir
        self.base_hash = base_hash
        self.metrics = metrics
        self.federation = federation
        self.current = current  # the open round counts the bytes sent
        self.files = {p.name: p for p in served_files(model_dir)}
        self._manifest: pb.BaseManifest | None = None
        self._lock = asyncio.Lock()

    async def manifest(self) -> pb.BaseManifest:
        """Every served file with its size and SHA-256 (computed once, off the event loop)."""
        async with self._lock:
            if self._manifest is None:
                self._manifest = await asyncio.to_thread(self._build)
        return self._manifest

    def _build(self) -> pb.BaseManifest:
        files = [
            pb.BaseFile(name=name, size=p.stat().st_size, sha256=file_sha256(p))
            for name, p in sorted(self.files.items())
        ]
        log.info("base model manifest: %d files, %.1f MB", len(files), sum(f.size for f in files) / 1e6)
        return pb.BaseManifest(base_hash=self.base_hash, files=files)

    async def pull(self, req: pb.BaseRequest) -> AsyncIterator[pb.BaseChunk]:
        """The manifest (no file named), or the named file's bytes from `offset` on."""
        manifest = await self.manifest()
        if not req.file:
            yield pb.BaseChunk(manifest=manifest)
            return
        entry = next((f for f in manifest.files if f.name == req.file), None)
        if entry is None:
            raise InvalidInput(
                f"file {req.file!r} is not part of the base model; its files are "
                + ", ".join(f.name for f in manifest.files)
            )
        if req.offset > entry.size:
            raise InvalidInput(f"offset {req.offset} is past the end of {req.file} ({entry.size} bytes)")
        sent = 0
        try:
            with self.files[req.file].open("rb") as f:
                f.seek(req.offset)
                while piece := await asyncio.to_thread(f.read, CHUNK_BYTES):
                    sent += len(piece)
                    yield pb.BaseChunk(data=piece)
                    failpoints.hit("coordinator.base.streaming")  # after each piece of a base file
        finally:
            self.metrics.bytes_out.labels(self.federation).inc(sent)
            r = self.current()
            if r is not None:
                r.count_download(sent, sent)
