"""Streaming aggregation: each update is decoded block by block as it arrives and added, weighted by its
samples, into one float32 buffer per tensor, while its chunks are spooled to disk. An update that
turns out bad midway is taken out again by replaying its spooled blocks, so it is dropped whole and
memory never holds more than the sums and one block per upload in flight.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from coordinator import spool
from strata import failpoints
from strata.aggregate import FedAvgAccumulator
from strata.errors import FailedPrecondition, InvalidInput
from strata.frames import Expected, FrameAssembler
from strata.proto.v1 import coordinator_pb2 as pb


class RoundSums(FedAvgAccumulator):
    """The round's float32 sums, shaped after the tensors the coordinator expects.

    With targeted layers, `expected` holds only the round's blocks; `outside` maps each other tensor of the
    model to its block, so an update carrying one is refused with a message that says why.
    """

    def __init__(
        self,
        expected: dict[str, Expected],
        outside: Mapping[str, str] | None = None,
        round_number: int = 0,
        trains: Sequence[str] = (),
    ) -> None:
        super().__init__({name: e.shape for name, e in expected.items()}, dtype=torch.float32)
        self.expected = expected
        self.outside = dict(outside or {})
        self.round_number = round_number
        self.trains = tuple(trains)

    def check_name(self, name: str) -> None:
        block = self.outside.get(name)
        if block is not None:
            raise InvalidInput(
                f"{name} belongs to block {block}, which round {self.round_number} does not train "
                f"(it trains {', '.join(self.trains)})"
            )


@dataclass
class Received:
    names: set[str]
    payload_bytes: int
    raw_bytes: int
    norm: float
    sq: dict[str, float]  # squared norm per tensor


@dataclass
class Upload:
    """One update being received: its spool file and how many of its blocks are in the sums."""

    writer: spool.SpoolWriter
    num_samples: int
    added: int = 0
    undone: bool = False  # its blocks were taken out of the sums again
    evicted: bool = False  # its round closed before it was complete


def undo(upload: Upload, sums: RoundSums) -> None:
    """Take what a partly received update added out of the sums, once."""
    if not upload.undone:
        upload.writer.flush()
        rollback(upload.writer.tmp, sums, upload.num_samples, upload.added)
        upload.undone = True


def evict(upload: Upload, sums: RoundSums) -> None:
    """The round closed under this upload: take it out of the sums and refuse the rest of it."""
    undo(upload, sums)
    upload.evicted = True


async def receive(chunks: AsyncIterator[pb.UpdateChunk], sums: RoundSums, upload: Upload) -> Received:
    """Decode, validate and accumulate one update's frames; on any failure, take them out again."""

    def add(name: str, start: int, values: torch.Tensor) -> None:
        if upload.evicted:
            raise FailedPrecondition("the round closed while this update was uploading")
        sums.add(name, start, values, float(upload.num_samples))
        upload.added += 1

    asm = FrameAssembler(sums.expected, on_block=add)
    try:
        names = await _consume(chunks, asm, upload.writer, sums)
    except BaseException:
        undo(upload, sums)
        raise
    if upload.evicted:
        raise FailedPrecondition("the round closed while this update was uploading")
    return Received(names, asm.payload_bytes, asm.raw_bytes, math.sqrt(asm.sq), asm.tensor_sq)


async def _consume(
    chunks: AsyncIterator[pb.UpdateChunk], asm: FrameAssembler, writer: spool.SpoolWriter, sums: RoundSums
) -> set[str]:
    names: set[str] = set()
    started = False
    async for chunk in chunks:
        writer.write(chunk)
        if _take(chunk, asm, sums, names):
            return names
        if not started and chunk.WhichOneof("part") == "data":
            started = True
            failpoints.hit("coordinator.push.receiving")  # once per upload: its first piece is in
    raise InvalidInput("the stream ended before the end marker")


def _take(chunk: pb.UpdateChunk, asm: FrameAssembler, sums: RoundSums, names: set[str]) -> bool:
    """One chunk after the update's header, into `asm` (and so the sums); True at the end marker."""
    part = chunk.WhichOneof("part")
    if part == "tensor":
        sums.check_name(chunk.tensor.name)
        done = asm.tensor(chunk.tensor)
    elif part == "data":
        done = asm.data(chunk.data)
    elif part == "end":
        asm.finish()
        if chunk.end.num_tensors != len(names):
            raise InvalidInput(f"end marker counts {chunk.end.num_tensors} tensors, {len(names)} arrived")
        if not names:
            raise InvalidInput("the update carries no tensor")
        return True  # a subset is fine: each tensor is averaged over the updates that carry it
    else:
        raise InvalidInput(f"unexpected {part or 'empty'} part inside an update")
    if done is not None:
        names.add(done[0])
    return False


def reload(path: Path, sums: RoundSums, num_samples: int) -> Received:
    """Add an update accepted before a coordinator restart to the reopened round's sums again, from its
    spool file, with the checks it passed when it arrived; a file that fails them leaves the sums as
    they were (InvalidInput, or OSError for a file that cannot be read)."""
    added = 0

    def add(name: str, start: int, values: torch.Tensor) -> None:
        nonlocal added
        sums.add(name, start, values, float(num_samples))
        added += 1

    asm = FrameAssembler(sums.expected, on_block=add)
    names: set[str] = set()
    try:
        chunks = spool.read(path)
        first = next(chunks, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput(f"{path.name} does not start with an update header")
        if not any(_take(chunk, asm, sums, names) for chunk in chunks):
            raise InvalidInput(f"{path.name} ends before the end marker")
    except BaseException:
        rollback(path, sums, num_samples, added)
        raise
    return Received(names, asm.payload_bytes, asm.raw_bytes, math.sqrt(asm.sq), asm.tensor_sq)


def remove(path: Path, sums: RoundSums, num_samples: int) -> None:
    """Subtract every block of a complete spooled update (one refused after it was accepted)."""

    def subtract(name: str, start: int, values: torch.Tensor) -> None:
        sums.add(name, start, values, -float(num_samples))

    replay(path, FrameAssembler(sums.expected, on_block=subtract))


def feed(path: Path, asm: FrameAssembler) -> Iterator[None]:
    """Feed the frames of a complete spooled update to `asm` (its on_block sees each block again), pausing
    after each chunk so a caller can take the blocks as they come."""
    for chunk in spool.read(path):
        part = chunk.WhichOneof("part")
        if part == "tensor":
            asm.tensor(chunk.tensor)
        elif part == "data":
            asm.data(chunk.data)
        yield
    asm.finish()


def replay(path: Path, asm: FrameAssembler) -> None:
    """Feed every frame of a complete spooled update to `asm` at once."""
    for _ in feed(path, asm):
        pass


def rollback(path: Path, sums: RoundSums, num_samples: int, blocks: int) -> None:
    """Subtract the first `blocks` blocks of a partly received update, replayed from its spool file."""
    if blocks == 0:
        return
    left = blocks

    def subtract(name: str, start: int, values: torch.Tensor) -> None:
        nonlocal left
        if left > 0:
            sums.add(name, start, values, -float(num_samples))
            left -= 1

    asm = FrameAssembler(sums.expected, on_block=subtract)
    for chunk in spool.read(path):
        if left == 0:
            break
        part = chunk.WhichOneof("part")
        try:
            if part == "tensor":
                asm.tensor(chunk.tensor)
            elif part == "data":
                asm.data(chunk.data)
        except InvalidInput:
            break  # the part that was refused: everything before it has been replayed
    if left:
        raise RuntimeError(f"could not replay {left} block(s) from {path} to undo a rejected update")
