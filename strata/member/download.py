"""Download and application of the global model: the worker's copy, updated block by block, hash-checked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from strata.errors import InvalidInput, MemberError
from strata.frames import FrameAssembler, add_update, expected_of
from strata.member.client import CoordinatorClient
from strata.member.replica import Replica
from strata.modeling import global_tensors, write_assets
from strata.proto.v1 import coordinator_pb2 as pb
from strata.version import model_hash

log = logging.getLogger("strata.worker")


class ModelCopy:
    """The worker's copy of the global model. `ensure` brings it to a version: the global updates since
    the one it holds, or a snapshot, applied block by block as they arrive (memory: one block, not a
    model), then checked against the version's content hash."""

    def __init__(self, client: CoordinatorClient, device: str) -> None:
        self.client = client
        self.device = device
        #: how the replica is built from the first download's assets (a LoRA worker builds its own)
        self.builder: Callable[[Path], Replica] = lambda assets: Replica.load(assets, self.device)
        self.needs_assets = True  # False for a builder that has its own (a LoRA worker's base model folder)
        self.replica: Replica | None = None  # built from the assets of the first download
        self.version = 0
        self.hash = ""
        self.snapshots = 0  # full downloads; the rest were global updates
        self.dirty = False  # True while the model may not equal any version (a download was cut)

    def ensure(
        self,
        worker_id: str,
        assets: Path,
        version: int,
        expected_hash: str,
        client: CoordinatorClient | None = None,
    ) -> Replica:
        """The model at `version` with `expected_hash` (`assets`: where the first download's files go),
        pulled by `worker_id` through `client` (default: this copy's; simulated workers share one copy and
        each pulls with its own identity)."""
        if (replica := self._at(version, expected_hash)) is not None:
            return replica
        for attempt in range(3):
            try:
                self._pull(worker_id, assets, client or self.client)
            except InvalidInput as exc:
                log.warning("model download failed its checks (%s); fetching a snapshot", exc)
                self.dirty = True
                continue
            if (replica := self._at(version, expected_hash)) is not None:
                return replica
            log.warning(
                "pulled version %d (%s), task wants %d (%s); attempt %d",
                self.version,
                self.hash[:12],
                version,
                expected_hash[:12],
                attempt + 1,
            )
        raise MemberError(f"could not obtain model version {version} with hash {expected_hash[:12]}")

    def start_from(self, replica: Replica, version: int, model_hash: str) -> None:
        """Hold `replica` as `version` (a worker that built version 0 itself: worker/initial_version.py)."""
        self.replica, self.version, self.hash, self.dirty = replica, version, model_hash, False

    def _at(self, version: int, expected_hash: str) -> Replica | None:
        """The replica, if it holds exactly `version` with `expected_hash`."""
        if self.version == version and self.hash == expected_hash and not self.dirty:
            return self.replica
        return None

    def _pull(self, worker_id: str, assets: Path, client: CoordinatorClient) -> None:
        """One PullModel call, applied block by block as it arrives."""
        holds = self.replica is not None and not self.dirty
        req = pb.PullRequest(
            worker_id=worker_id,
            have_version=self.version if holds else 0,
            have_hash=self.hash if holds else "",
            include_assets=self.replica is None and self.needs_assets,
        )
        header = client.call(lambda: self._fetch(req, assets, client), "pull")
        assert self.replica is not None
        if header.kind == pb.ModelHeader.SNAPSHOT:
            self.snapshots += 1
        self.version = header.version
        self.hash = model_hash(global_tensors(self.replica.model))
        if self.hash != header.model_hash:
            raise InvalidInput(
                f"model hash after download {self.hash[:12]} differs from the announced {header.model_hash[:12]}"
            )
        self.dirty = False

    def _fetch(self, req: pb.PullRequest, assets: Path, client: CoordinatorClient) -> pb.ModelHeader:
        """Read one model stream: assets first (built into the replica when this copy has none), then the
        tensor frames, loaded (snapshot) or added (updates) block by block."""
        header: pb.ModelHeader | None = None
        files: dict[str, bytes] = {}
        params: dict[str, torch.nn.Parameter] = {}

        def on_block(name: str, start: int, values: torch.Tensor) -> None:
            p = params.get(name)
            if p is None:
                raise InvalidInput(f"{name}: no such tensor in the model")
            self.dirty = True  # until the final hash matches
            with torch.no_grad():
                if header is not None and header.kind == pb.ModelHeader.SNAPSHOT:
                    p.data.view(-1)[start : start + values.numel()].copy_(values.to(p.device, p.dtype))
                else:
                    add_update(p, values, start)

        asm = FrameAssembler(on_block=on_block)
        for chunk in client.pull(req):
            part = chunk.WhichOneof("part")
            if part == "header":
                header = chunk.header
            elif part == "file":
                if (done := asm.file(chunk.file)) is not None:
                    files[done[0]] = done[1]
            elif part in ("tensor", "mark"):
                if not params:
                    model = self._build(files, assets).model
                    params = dict(model.named_parameters())
                    asm.expected = expected_of(global_tensors(model))
                if part == "mark":
                    asm.seen.clear()  # each update names the same tensors again
                else:
                    asm.tensor(chunk.tensor)
            elif part == "data":
                if (done := asm.data(chunk.data)) is not None and isinstance(done[1], bytes):
                    files[done[0]] = done[1]
            elif part == "end":
                asm.finish()
                break
        if header is None:
            raise InvalidInput("model stream without a header")
        self._build(files, assets)
        return header

    def _build(self, files: dict[str, bytes], assets: Path) -> Replica:
        """The replica, built from the assets the coordinator sent the first time."""
        if self.replica is None:
            if not files and self.needs_assets:
                raise InvalidInput("the first model download carries no assets")
            self.replica = self.builder(write_assets(files, assets))
        return self.replica
