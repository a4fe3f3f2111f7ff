"""What receiving an update's bytes over gRPC costs a Python server, before any decoding: the floor under
the coordinator's ingest (S11's goal of 1 GB of raw delta per CPU-second).

    python -m bench.transport [--gb 2] [--workers 1 8] [--chunk-kib 1024]

A server process (this module with --serve) takes client-streaming calls of `UpdateChunk(data=...)`
messages, the coordinator's own message type, and does nothing with them but count their bytes. It runs
once as a grpc.aio server (the coordinator's kind: one event loop) and once as a sync server (a thread
pool, the handler iterating the stream in its thread). N client threads in this process stream `--gb`
GB in all on 127.0.0.1. The report gives the server process's CPU seconds per GB received (user + system,
from /proc) for each kind and N. The coordinator's decode, accumulate and spool come on top of this.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from bench.common import cpu_seconds, machine, write_report
from strata.member.client import CHANNEL_OPTIONS
from strata.proto.v1 import coordinator_pb2 as pb

METHOD = "/bench.Transport/Push"


def _listen(server: Any, push: Callable[..., Any]) -> int:
    """Register `push` as bench.Transport/Push on a sync or aio server; the port it listens on."""
    handler = grpc.stream_unary_rpc_method_handler(
        push,
        request_deserializer=pb.UpdateChunk.FromString,
        response_serializer=pb.PushReply.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Transport", {"Push": handler})]
    )
    return int(server.add_insecure_port("127.0.0.1:0"))


def serve(kind: str, port_file: Path) -> None:
    """Serve Push until killed: count the data bytes of every chunk, answer with the total."""
    if kind == "sync":

        def push(requests: Iterator[pb.UpdateChunk], context: grpc.ServicerContext) -> pb.PushReply:
            return pb.PushReply(accepted=True, received_bytes=sum(len(c.data) for c in requests))

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=CHANNEL_OPTIONS)
        port = _listen(server, push)
        server.start()
        port_file.write_text(str(port))
        server.wait_for_termination()
        return

    async def main() -> None:
        async def push(
            requests: AsyncIterator[pb.UpdateChunk], context: grpc.aio.ServicerContext
        ) -> pb.PushReply:
            total = 0
            async for c in requests:
                total += len(c.data)
            return pb.PushReply(accepted=True, received_bytes=total)

        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        port = _listen(server, push)
        await server.start()
        port_file.write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


def measure(kind: str, workers: int, total_bytes: int, chunk: int, work: Path) -> dict[str, float]:
    port_file = work / f"{kind}-{workers}.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.transport", "--serve", kind, "--port-file", str(port_file)]
    )
    try:
        while not port_file.is_file() or not port_file.read_text():
            if proc.poll() is not None:
                raise SystemExit(f"the {kind} server exited with {proc.returncode}")
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        payload = os.urandom(chunk)  # incompressible, as compressed deltas are
        message = pb.UpdateChunk(data=payload)
        per_worker = total_bytes // workers // chunk
        received = [0] * workers

        def client(k: int) -> None:
            with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                call = channel.stream_unary(METHOD, request_serializer=pb.UpdateChunk.SerializeToString,
                                            response_deserializer=pb.PushReply.FromString)  # fmt: skip
                reply = call(iter([message] * per_worker))
                received[k] = reply.received_bytes

        threads = [threading.Thread(target=client, args=(k,)) for k in range(workers)]
        before, started = cpu_seconds(proc.pid), time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.monotonic() - started, cpu_seconds(proc.pid) - before
    finally:
        proc.kill()
        proc.wait()
    gb = sum(received) / 1e9
    if sum(received) != per_worker * chunk * workers:
        raise SystemExit(f"{kind}: {sum(received)} bytes received, {per_worker * chunk * workers} sent")
    # a transfer too small to take one clock tick of CPU has no measurable rate
    per_cpu = gb / cpu if cpu > 0 else float("nan")
    return {
        "gb": gb,
        "cpu": cpu,
        "wall": wall,
        "cpu_per_gb": cpu / gb,
        "gb_per_cpu": per_cpu,
        "gb_per_s": gb / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=2.0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    p.add_argument("--chunk-kib", type=int, default=1024)
    p.add_argument("--serve", choices=["aio", "sync"], help=argparse.SUPPRESS)
    p.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port_file)
        return 0
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    rows = []
    for kind in ("aio", "sync"):
        for n in args.workers:
            m = measure(kind, n, int(args.gb * 1e9), args.chunk_kib << 10, work)
            print(
                f"{kind} {n} workers: {m['cpu_per_gb']:.2f} CPU-s per GB, {m['gb_per_s']:.2f} GB/s",
                flush=True,
            )
            rows.append((kind, n, m))
    lines = [
        "# gRPC transport cost on the server (no decoding)",
        "",
        f"`python -m bench.transport {' '.join(argv if argv is not None else sys.argv[1:])}`; {machine()}. "
        f"{args.gb:g} GB per configuration in chunks of {args.chunk_kib} KiB (UpdateChunk.data, random bytes), "
        "client threads in the benchmark process, the server in its own process on 127.0.0.1.",
        "",
        "| server | workers | GB | server CPU s | server CPU s per GB | GB per CPU-s | GB/s wall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, n, m in rows:
        lines.append(f"| {kind} | {n} | {m['gb']:.2f} | {m['cpu']:.2f} | {m['cpu_per_gb']:.2f} | "
                     f"{m['gb_per_cpu']:.2f} | {m['gb_per_s']:.2f} |")  # fmt: skip
    write_report("transport", "\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
