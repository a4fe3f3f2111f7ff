"""The base model of a LoRA federation on a worker: a local copy checked by its content hash, found where
the operator points (`--base-model`: a folder, or `hf:ORG/NAME` in the Hugging Face cache), or in the
worker's cache, or else downloaded from the coordinator once: file by file in 1 MiB pieces into
`<cache>/base/<hash>/`, each piece appended to a `.part` file, so a cut download resumes where it stopped;
a file is renamed into place only once its SHA-256 matches the manifest, and the folder is used only once
its tensors hash to the announced value."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
from tqdm import tqdm

from strata import atomic
from strata.base_model import checkpoint_hash, file_sha256
from strata.member.client import RETRYABLE, CoordinatorClient, backoff_delays
from strata.proto.v1 import coordinator_pb2 as pb
from worker.errors import WorkerError

log = logging.getLogger("strata.worker")
DONE = ".complete"


def local_folder(spec: str) -> Path:
    """The folder a `--base-model` value names: a path, or `hf:ORG/NAME` resolved in the local Hugging
    Face cache (never downloaded from the hub)."""
    if spec.startswith("hf:"):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec[3:], local_files_only=True))
        except Exception as exc:  # noqa: BLE001 - the hub's errors vary by version
            raise WorkerError(
                f"base_model: {spec[3:]} is not in the local Hugging Face cache ({exc})"
            ) from None
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise WorkerError(f"base_model: {path} is not a folder")
    return path


def resolve(
    client: CoordinatorClient,
    worker_id: str,
    base_hash: str,
    cache_dir: Path,
    base_model: str | None,
    progress: bool = False,
) -> Path:
    """A folder holding the base model whose tensors hash to `base_hash` (see the module docstring)."""
    hashes = cache_dir / "base-hashes.json"
    if base_model:
        folder = local_folder(base_model)
        try:
            found = checkpoint_hash(folder, cache=hashes)
        except ValueError as exc:
            raise WorkerError(f"base_model: {exc}") from None
        if found != base_hash:
            raise WorkerError(
                f"base_model: {folder} holds a model whose hash {found[:12]} differs from the federation's base "
                f"{base_hash[:12]}; point --base-model at a copy of the coordinator's base model, or leave it "
                "unset and the worker downloads the base from the coordinator"
            )
        log.info("base model %s found at %s", base_hash[:12], folder)
        return folder
    folder = cache_dir / "base" / base_hash[:32]
    if (folder / DONE).is_file() and (folder / DONE).read_text().strip() == base_hash:
        log.info("base model %s found in the cache %s", base_hash[:12], folder)
        return folder
    download(client, worker_id, folder, progress)
    found = checkpoint_hash(folder, cache=hashes)
    if found != base_hash:
        raise WorkerError(
            f"the downloaded base model hashes to {found[:12]}, not the announced {base_hash[:12]}"
        )
    atomic.write_bytes(folder / DONE, base_hash.encode())
    return folder


def download(client: CoordinatorClient, worker_id: str, folder: Path, progress: bool = False) -> int:
    """Fetch every file of the coordinator's manifest into `folder` that is not there already; returns the
    bytes received. A stream cut by a lost connection or a coordinator restart resumes from the bytes on
    disk, with backoff, until the client's connect_timeout passes without progress."""
    manifest = _manifest(client, worker_id)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [f for f in manifest.files if not _complete(folder / f.name, f)]
    total = sum(f.size for f in todo)
    log.info("downloading the base model: %d file(s), %.1f MB", len(todo), total / 1e6)
    got = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="base model", disable=not progress) as bar:
        for f in todo:
            got += _fetch(client, worker_id, folder, f, bar)
    return got


def _manifest(client: CoordinatorClient, worker_id: str) -> pb.BaseManifest:
    def ask() -> pb.BaseManifest:
        for chunk in client.pull_base(pb.BaseRequest(worker_id=worker_id)):
            if chunk.WhichOneof("part") == "manifest":
                return chunk.manifest
        raise WorkerError("the coordinator's base model stream carried no manifest")

    return client.call(ask, "base manifest")


def _complete(path: Path, f: pb.BaseFile) -> bool:
    return path.is_file() and path.stat().st_size == f.size and file_sha256(path) == f.sha256


def _fetch(client: CoordinatorClient, worker_id: str, folder: Path, f: pb.BaseFile, bar: tqdm) -> int:  # type: ignore[type-arg]
    """One file, resumed from its `.part`; renamed into place once its SHA-256 matches."""
    part = folder / f"{f.name}.part"
    delays = backoff_delays(cap=client.max_backoff)
    give_up = time.monotonic() + client.connect_timeout
    got = mismatches = 0
    while True:
        have = part.stat().st_size if part.is_file() else 0
        if have > f.size:
            part.unlink()
            have = 0
        bar.update(have - bar.n if bar.n < have else 0)
        try:
            with part.open("ab") as out:
                for chunk in client.pull_base(pb.BaseRequest(worker_id=worker_id, file=f.name, offset=have)):
                    out.write(chunk.data)
                    got += len(chunk.data)
                    bar.update(len(chunk.data))
                    give_up = time.monotonic() + client.connect_timeout  # progress: the clock starts again
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE or time.monotonic() >= give_up:
                raise
            wait = next(delays)
            log.info(
                "base model download of %s cut at %d bytes (%s); resuming in %.1fs",
                f.name,
                have,
                err.code(),
                wait,
            )
            time.sleep(wait)
            continue
        if part.stat().st_size == f.size and file_sha256(part) == f.sha256:
            part.replace(folder / f.name)
            atomic.fsync_dir(folder)
            return got
        mismatches += 1
        if mismatches >= 3:
            raise WorkerError(
                f"base model file {f.name}: three downloads did not match the manifest's SHA-256"
            )
        log.warning("%s: downloaded bytes do not match the manifest's SHA-256; fetching it again", f.name)
        part.unlink()
