"""Streaming aggregation without a network: sums per tensor, rollback of a refused update, huge tensors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import torch

from coordinator import spool
from coordinator.ingest import RoundSums, Upload, evict, receive
from coordinator.versions import VersionFiles, count_frames, read_frames, write_frames
from strata import codec
from strata.codec import Codec
from strata.errors import FailedPrecondition, InvalidInput
from strata.frames import CHUNK_BYTES, FrameAssembler, expected_of, header_of, pieces
from strata.proto.v1 import coordinator_pb2 as pb


def stream(delta: dict[str, torch.Tensor], c: Codec) -> list[pb.UpdateChunk]:
    out = [pb.UpdateChunk(header=pb.UpdateHeader(num_samples=1))]
    for name in sorted(delta):
        enc = codec.encode(delta[name], c)
        out.append(pb.UpdateChunk(tensor=header_of(name, delta[name], enc)))
        out += [pb.UpdateChunk(data=p) for b in enc.blocks for p in pieces(b, 1000)]
    out.append(pb.UpdateChunk(end=pb.UpdateEnd(num_tensors=len(delta))))
    return out


async def aiter_of(chunks: Iterable[pb.UpdateChunk]) -> AsyncIterator[pb.UpdateChunk]:
    for ch in chunks:
        yield ch


def ingest(sums: RoundSums, chunks: list[pb.UpdateChunk], n: int, path: Path) -> None:
    writer = spool.SpoolWriter(path)
    writer.write(chunks[0])
    asyncio.run(receive(aiter_of(chunks[1:]), sums, Upload(writer, n)))
    writer.commit()


def model(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(300, 70, generator=g), "b.bias": torch.randn(70, generator=g)}


def test_sums_are_the_sample_weighted_mean_and_a_refused_update_leaves_no_trace(tmp_path: Path) -> None:
    shapes = model(0)
    sums = RoundSums(expected_of(shapes))
    d1, d2 = model(1), model(2)
    ingest(sums, stream(d1, Codec("fp32", block_elements=1000)), 3, tmp_path / "1.update")
    sums.commit(set(d1), 3)
    bad = model(3)
    bad["b.bias"][5] = float("inf")  # the last tensor: "a.weight" is already in the sums when this fails
    with pytest.raises(InvalidInput, match="b.bias"):
        ingest(sums, stream(bad, Codec("fp32", block_elements=1000)), 7, tmp_path / "bad.update")
    ingest(sums, stream(d2, Codec("fp32", block_elements=1000)), 1, tmp_path / "2.update")
    sums.commit(set(d2), 1)
    means = dict(sums.means())
    for name in shapes:
        torch.testing.assert_close(means[name], (3 * d1[name] + d2[name]) / 4, atol=1e-6, rtol=1e-6)


def test_an_evicted_upload_is_taken_out_and_refused(tmp_path: Path) -> None:
    d = model(4)
    sums = RoundSums(expected_of(d))
    chunks = stream(d, Codec("fp32", block_elements=1000))
    writer = spool.SpoolWriter(tmp_path / "e.update")
    upload = Upload(writer, 2)

    async def run() -> None:
        async def slow() -> AsyncIterator[pb.UpdateChunk]:
            for i, ch in enumerate(chunks[1:]):
                if i == len(chunks) // 2:
                    evict(upload, sums)  # the round closes halfway through
                yield ch

        await receive(slow(), sums, upload)

    with pytest.raises(FailedPrecondition, match="closed"):
        asyncio.run(run())
    assert all(float(t.abs().max()) < 1e-6 for t in sums.sums.values())


@pytest.mark.parametrize("encoding", ["fp32", "int8"])
def test_version_files_round_trip(tmp_path: Path, encoding: str) -> None:
    d = model(5)
    c = Codec(encoding, block_elements=4096)
    frames = []
    for name in sorted(d):
        enc = codec.encode(d[name], c)
        frames.append((header_of(name, d[name], enc), enc.blocks))
    path = tmp_path / "update-v000001.frames"
    write_frames(path, frames)
    assert count_frames(path) == 2
    got: dict[str, torch.Tensor] = {}
    asm = FrameAssembler(expected_of(d))
    for part, value in read_frames(path):
        assert part == "tensor" or len(value) <= CHUNK_BYTES  # type: ignore[arg-type]
        done = asm.tensor(value) if part == "tensor" else asm.data(value)  # type: ignore[arg-type]
        if done is not None:
            got[done[0]] = done[1]
    for name in d:
        torch.testing.assert_close(got[name], codec.decode(codec.encode(d[name], c)).reshape(d[name].shape))
    files = VersionFiles(tmp_path / "v")
    for v in range(1, 6):
        files.update(v).write_bytes(b"")
        files.snapshot(v).write_bytes(b"")
    files.prune(current=5, history=2)
    assert sorted(p.name for p in files.dir.iterdir()) == [
        "snapshot-v000005.frames",
        "update-v000004.frames",
        "update-v000005.frames",
    ]


def test_version_files_of_another_format_or_half_written_are_discarded(tmp_path: Path) -> None:
    files = VersionFiles(tmp_path / "v")
    d = model(1)
    enc = codec.encode(d["a.weight"], Codec("fp32"))
    write_frames(files.update(1), [(header_of("a.weight", d["a.weight"], enc), enc.blocks)])
    files.update(2).write_bytes(b"\x10\x00\x00\x00old length-prefixed format")  # an older Strata's file
    (files.dir / ".update-v000003.frames.partial").write_bytes(b"half")
    assert files.discard_after(5) == 2
    assert [p.name for p in files.dir.iterdir()] == ["update-v000001.frames"]
    old_spool = tmp_path / "old.update"  # a spool file in the record format before frame files
    old_spool.write_bytes(b"\x01\x05\x00\x00\x00hello")
    with pytest.raises(OSError, match="not a frame file"):
        list(spool.read(old_spool))


def test_a_tensor_larger_than_protobufs_2_gib_limit_streams_through(tmp_path: Path) -> None:
    """Over 2 GiB of fp32 in one tensor: offsets past 2**31 bytes, blocks decoded as they come."""
    n = ((1 << 31) + (1 << 26)) // 4  # 2.0625 GiB of float32
    big = torch.zeros(n)
    big[-3:] = torch.tensor([-127.0, 64.0, 127.0])  # exact in int8: the group's scale is 1
    sums = RoundSums(expected_of({"big": big}))
    enc = codec.encode(big, Codec("int8"))
    chunks = [
        pb.UpdateChunk(header=pb.UpdateHeader(num_samples=1)),
        pb.UpdateChunk(tensor=header_of("big", big, enc)),
    ]
    chunks += [pb.UpdateChunk(data=p) for b in enc.blocks for p in pieces(b)]
    chunks.append(pb.UpdateChunk(end=pb.UpdateEnd(num_tensors=1)))
    del big, enc
    ingest(sums, chunks, 2, tmp_path / "big.update")
    sums.commit({"big"}, 2)
    ((name, mean),) = list(sums.means())
    assert (
        mean.numel() == n
        and mean[-1] == 127.0
        and mean[-3] == -127.0
        and float(mean[: n - 3].abs().max()) == 0.0
    )


def test_each_tensor_is_averaged_over_the_updates_that_carry_it(tmp_path: Path) -> None:
    d1, d2 = model(6), model(7)
    sums = RoundSums(expected_of(d1))
    ingest(sums, stream(d1, Codec("fp32")), 1, tmp_path / "1.update")
    sums.commit(set(d1), 1)
    only_bias = {"b.bias": d2["b.bias"]}  # this worker froze a.weight: it did not travel
    ingest(sums, stream(only_bias, Codec("fp32")), 3, tmp_path / "2.update")
    sums.commit(set(only_bias), 3)
    means = dict(sums.means())
    torch.testing.assert_close(means["a.weight"], d1["a.weight"])
    torch.testing.assert_close(means["b.bias"], (d1["b.bias"] + 3 * d2["b.bias"]) / 4)
