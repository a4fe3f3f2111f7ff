"""Ingest benchmark: N simulated workers stream deltas of a model of over 100M parameters to a real
coordinator process on loopback. Reports raw-delta GB ingested per coordinator CPU-second, as a ratio
to single-core zstd decompression in the same run, and the coordinator's peak memory above its idle
level, as a multiple of the model's fp32 size.

    python bench/ingest.py [--workers 1 8 32] [--encodings fp32 bf16 int8] [--layers 14]

The workers are threads of this process sending a pre-encoded delta (Gaussian noise: the hardest case
for compression) over real gRPC; the coordinator validates, decodes, accumulates and spools every
update, then aggregates and checkpoints, exactly as in a federation.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import torch
import zstandard
from safetensors import safe_open

from bench.common import cpu_seconds, machine, rss_bytes, write_report
from strata import codec, synthetic
from strata.codec import Codec
from strata.frames import header_of, pieces
from strata.memory import tune_malloc
from strata.modeling import make_tiny_model_dir
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc

TOKEN = "bench-token-0123456789"


class Sampler(threading.Thread):
    """Peak RSS of a process, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.01)


def build_model(path: Path, layers: int) -> tuple[Path, dict[str, tuple[int, ...]]]:
    texts = [e.text for e in synthetic.generate(2000, seed=0)]
    make_tiny_model_dir(
        path, texts, synthetic.LABELS, hidden_size=768, num_layers=layers, num_heads=12, max_len=128
    )
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if "position_ids" not in k}  # noqa: SIM118 - safe_open is not iterable
    return path, shapes


def encode_delta(shapes: dict[str, tuple[int, ...]], encoding: str) -> tuple[list[pb.UpdateChunk], int, int]:
    """The update stream after its header, and its payload and raw sizes."""
    g = torch.Generator().manual_seed(0)
    c = Codec(encoding, topk_fraction=0.1)
    chunks, payload, raw = [], 0, 0
    for name in sorted(shapes):
        t = torch.randn(shapes[name], generator=g) * 1e-4
        enc = codec.encode(t, c)
        chunks.append(pb.UpdateChunk(tensor=header_of(name, t, enc)))
        for block in enc.blocks:
            chunks.extend(pb.UpdateChunk(data=p) for p in pieces(block))
        payload += enc.payload_bytes
        raw += t.numel() * 4
    chunks.append(pb.UpdateChunk(end=pb.UpdateEnd(num_tensors=len(shapes))))
    return chunks, payload, raw


def zstd_speed(shapes: dict[str, tuple[int, ...]]) -> float:
    """Single-core zstd-1 decompression of the raw fp32 delta, MB of output per second."""
    g = torch.Generator().manual_seed(1)
    blobs = []
    for name in sorted(shapes)[:40]:
        blobs.append(
            zstandard.ZstdCompressor(level=1).compress(
                (torch.randn(shapes[name], generator=g) * 1e-4).numpy().tobytes()
            )
        )
    d = zstandard.ZstdDecompressor()
    size = sum(len(d.decompress(b)) for b in blobs)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for b in blobs:
            d.decompress(b)
        best = min(best, time.perf_counter() - t)
    return size / best / 1e6


def in_process(
    shapes: dict[str, tuple[int, ...]], chunks: list[pb.UpdateChunk], raw: int, tmp: Path
) -> float:
    """The coordinator's decode-and-accumulate path on the same chunks without gRPC: GB per CPU-second."""
    import asyncio

    from coordinator import spool
    from coordinator.ingest import RoundSums, Upload, receive
    from strata.frames import Expected

    sums = RoundSums({k: Expected(v, "float32") for k, v in shapes.items()})

    async def feed():  # type: ignore[no-untyped-def]
        for ch in chunks:
            yield ch

    best = float("inf")
    for i in range(2):
        writer = spool.SpoolWriter(tmp / f"inproc-{i}.update")
        t = time.process_time()
        asyncio.run(receive(feed(), sums, Upload(writer, 1)))
        best = min(best, time.process_time() - t)
        writer.abort()
    return raw / best / 1e9


def run_one(
    model_dir: Path, workdir: Path, n: int, encoding: str, chunks: list[pb.UpdateChunk], raw: int
) -> dict[str, float]:
    port_file = workdir / "port"
    env = os.environ | {"STRATA_COORDINATOR_WORKER_TOKENS": TOKEN}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "strata.cli",
            "--log-level",
            "WARNING",
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--database-url",
            f"sqlite:///{workdir / 'c.db'}",
            "--data-dir",
            str(workdir / "d"),
            "--model",
            str(model_dir),
            "--labels",
            ",".join(synthetic.LABELS),
            "--rounds",
            "1",
            "--min-workers",
            str(n),
            "--min-updates",
            str(n),
            "--round-timeout",
            "1800",
            "--encoding",
            encoding,
            "--linger-seconds",
            "0",
            "--task-poll-seconds",
            "2",
            "--rate-limit",  # every simulated worker shares the bench's one token
            "0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not port_file.is_file():
        if proc.poll() is not None:
            raise SystemExit(f"coordinator failed:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.1)
    time.sleep(1.0)
    idle = rss_bytes(proc.pid)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    md = (("authorization", f"Bearer {TOKEN}"),)
    ready = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                wid = stub.Join(pb.JoinRequest(name=f"w{i}", num_samples=100), metadata=md).worker_id
                task = stub.GetTask(pb.TaskRequest(worker_id=wid, wait_seconds=60), metadata=md)
                while task.kind != pb.Task.TRAIN:
                    task = stub.GetTask(pb.TaskRequest(worker_id=wid, wait_seconds=60), metadata=md)
                ready.wait()
                head = pb.UpdateChunk(
                    header=pb.UpdateHeader(
                        worker_id=wid,
                        round=task.round,
                        base_version=task.model_version,
                        base_hash=task.model_hash,
                        num_samples=100,
                        num_tensors=0,
                    )
                )
                stub.PushUpdate(iter([head, *chunks]), metadata=md, timeout=1800)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            ready.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    sampler = Sampler(proc.pid)
    sampler.start()
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    for t in threads:
        t.join()
    cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
    ingest_peak = sampler.peak
    proc.wait(timeout=600)
    sampler.running = False
    if errors:
        raise errors[0]
    return {
        "cpu": cpu1 - cpu0,
        "wall": t1 - t0,
        "raw": raw * n,
        "idle": idle,
        "ingest_peak": ingest_peak,
        "round_peak": sampler.peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--encodings", nargs="+", default=["fp32", "bf16", "int8"])
    ap.add_argument("--layers", type=int, default=14, help="transformer layers of the BERT-base-wide model")
    args = ap.parse_args()
    tune_malloc()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, shapes = build_model(Path(tmp) / "model", args.layers)
        params = sum(math.prod(s) for s in shapes.values())
        model_bytes = params * 4
        zspeed = zstd_speed(shapes)
        rows = []
        torch.set_num_threads(1)
        for encoding in args.encodings:
            chunks, payload, raw = encode_delta(shapes, encoding)
            local = in_process(shapes, chunks, raw, Path(tmp))
            rows.append(
                f"| {encoding} | in-process, no gRPC | {raw / payload:.2f} | {raw / 1e9:.1f} | – | {local:.2f} | "
                f"{local * 1e3 / zspeed:.2f} | – | – | – |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
            for n in args.workers:
                work = Path(tmp) / f"{encoding}-{n}"
                work.mkdir()
                r = run_one(model_dir, work, n, encoding, chunks, raw)
                gbps = r["raw"] / r["cpu"] / 1e9
                rows.append(
                    f"| {encoding} | {n} | {raw / payload:.2f} | {r['raw'] / 1e9:.1f} | {r['cpu']:.1f} | {gbps:.2f} | "
                    f"{gbps * 1e3 / zspeed:.2f} | {r['raw'] / r['wall'] / 1e9:.2f} | "
                    f"{(r['ingest_peak'] - r['idle']) / model_bytes:.2f} | {(r['round_peak'] - r['idle']) / model_bytes:.2f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
            del chunks
    lines = [
        "# Coordinator ingest",
        "",
        f"`python bench/ingest.py {' '.join(sys.argv[1:])}`; machine: {machine()}.",
        f"Model: BERT-style, hidden 768, {args.layers} layers, {params / 1e6:.1f}M parameters ({model_bytes / 1e6:.0f} MB fp32). "
        "Workers and coordinator share the machine's cores.",
        f"Baseline, same run: single-core zstd-1 decompression of raw fp32 deltas at {zspeed:,.0f} MB/s.",
        "",
        "| encoding | workers | ratio to fp32 | raw GB in | coordinator CPU s | raw GB per CPU-s | vs zstd | raw GB/s wall | "
        "peak RSS above idle while ingesting (× model) | … over the whole round (× model) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "The in-process rows run the coordinator's own decode, validate, accumulate and spool path on the same "
        "chunks without gRPC (one update, best of two): the difference to the rows below is the cost of the "
        "grpc.aio message path and the loopback socket. The whole round includes aggregation: the mean is encoded, applied, written as the version's update "
        "file and checkpointed.",
        "",
    ]
    write_report("ingest", "\n".join(lines))


if __name__ == "__main__":
    main()
