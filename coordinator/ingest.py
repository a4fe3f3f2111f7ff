"""Streaming ingest: each update is decoded block by block as it arrives and added, weighted by its samples,
into one float32 buffer per tensor, while its chunks are spooled to disk. An update that turns out bad
midway is taken out again by replaying its spooled blocks, so it is dropped whole and memory never holds
more than the sums and one block per upload in flight.

`FrameStream.take` is the one routine that feeds an update's chunks to a frame assembler: the upload
path, the restart's reload, the close pass and every rollback go through it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from coordinator import spool
from strata import failpoints
from strata.aggregate import FedAvgAccumulator
from strata.errors import FailedPrecondition, InvalidInput
from strata.frames import BlockSink, Expected, FrameAssembler
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


class FrameStream:
    """Feeds the chunks of one update (after its header) to a FrameAssembler and checks the stream's shape:
    tensors in ascending order of name (the close pass reads spooled updates in lockstep by name), an end
    marker that counts them, at least one tensor."""

    def __init__(self, asm: FrameAssembler, check_name: Callable[[str], None] | None = None) -> None:
        self.asm = asm
        self.check_name = check_name
        self.names: list[str] = []  # the tensors completed so far, in order
        self._last = ""

    def take(self, chunk: pb.UpdateChunk) -> bool:
        """One chunk into the assembler (so its blocks reach `on_block`); True at a valid end marker."""
        part = chunk.WhichOneof("part")
        if part == "tensor":
            name = chunk.tensor.name
            if self.check_name is not None:
                self.check_name(name)
            if self._last and name <= self._last:
                raise InvalidInput(
                    f"{name} arrives after {self._last}: send tensors in ascending order of name"
                )
            self._last = name
            done = self.asm.tensor(chunk.tensor)
        elif part == "data":
            done = self.asm.data(chunk.data)
        elif part == "end":
            self.asm.finish()
            if chunk.end.num_tensors != len(self.names):
                raise InvalidInput(
                    f"end marker counts {chunk.end.num_tensors} tensors, {len(self.names)} arrived"
                )
            if not self.names:
                raise InvalidInput("the update carries no tensor")
            return True  # a subset is fine: each tensor is averaged over the updates that carry it
        else:
            raise InvalidInput(f"unexpected {part or 'empty'} part inside an update")
        if done is not None:
            self.names.append(done[0])
        return False


@dataclass
class Received:
    names: set[str]
    payload_bytes: int
    raw_bytes: int
    norm: float
    sq: dict[str, float]  # squared norm per tensor

    @classmethod
    def of(cls, stream: FrameStream) -> Received:
        a = stream.asm
        return cls(set(stream.names), a.payload_bytes, a.raw_bytes, math.sqrt(a.sq), dict(a.tensor_sq))


@dataclass
class Upload:
    """One update being received: its spool file and how many of its blocks are in the sums."""

    writer: spool.SpoolWriter
    weight: float  # of its blocks in the sums as they stream (n_k for FedAvg; 0: they do not stream)
    added: int = 0
    undone: bool = False  # its blocks were taken out of the sums again
    evicted: bool = False  # its round closed before it was complete


def undo(upload: Upload, sums: RoundSums) -> None:
    """Take what a partly received update added out of the sums, once."""
    if not upload.undone:
        upload.writer.flush()
        rollback(upload.writer.tmp, sums, upload.weight, upload.added)
        upload.undone = True


def evict(upload: Upload, sums: RoundSums) -> None:
    """The round closed under this upload: take it out of the sums and refuse the rest of it."""
    undo(upload, sums)
    upload.evicted = True


async def receive(chunks: AsyncIterator[pb.UpdateChunk], sums: RoundSums, upload: Upload) -> Received:
    """Decode, validate and accumulate one update's frames while spooling them; on any failure, take
    them out again."""

    def add(name: str, start: int, values: torch.Tensor) -> None:
        if upload.evicted:
            raise FailedPrecondition("the round closed while this update was uploading")
        if upload.weight:
            sums.add(name, start, values, upload.weight)
            upload.added += 1

    stream = FrameStream(FrameAssembler(sums.expected, on_block=add), sums.check_name)
    try:
        started = False
        async for chunk in chunks:
            upload.writer.write(chunk)
            if stream.take(chunk):
                break
            if not started and chunk.WhichOneof("part") == "data":
                started = True
                failpoints.hit("coordinator.push.receiving")  # once per upload: its first piece is in
        else:
            raise InvalidInput("the stream ended before the end marker")
    except BaseException:
        undo(upload, sums)
        raise
    if upload.evicted:
        raise FailedPrecondition("the round closed while this update was uploading")
    return Received.of(stream)


def replay(
    path: Path,
    expected: dict[str, Expected],
    on_block: BlockSink,
    check_name: Callable[[str], None] | None = None,
    partial: bool = False,
) -> FrameStream:
    """Feed every block of a spooled update to `on_block` again, with the checks it passed on arrival.
    A complete file must end with its end marker; with `partial`, the file of an upload cut off midway,
    replay stops quietly where the stream stops making sense."""
    stream = FrameStream(FrameAssembler(expected, on_block=on_block), check_name)
    try:
        for i, chunk in enumerate(spool.read(path)):
            if i == 0 and chunk.WhichOneof("part") == "header":
                continue
            if i == 0 and not partial:
                raise InvalidInput(f"{path.name} does not start with an update header")
            if stream.take(chunk):
                return stream
    except InvalidInput:
        if not partial:
            raise
        return stream  # the part that was refused: everything before it has been replayed
    if not partial:
        raise InvalidInput(f"{path.name} ends before the end marker")
    return stream


def reload(path: Path, sums: RoundSums, weight: float) -> Received:
    """Add a spooled update to the sums, `weight` × its blocks, with the checks it passed when it arrived:
    an update accepted before a coordinator restart, or (weight 0: checks only) one a private round adds
    clipped when it is complete. A file that fails them leaves the sums as they were (InvalidInput, or
    OSError for a file that cannot be read)."""
    added = 0

    def add(name: str, start: int, values: torch.Tensor) -> None:
        nonlocal added
        if weight:
            sums.add(name, start, values, weight)
            added += 1

    try:
        stream = replay(path, sums.expected, add, sums.check_name)
    except BaseException:
        rollback(path, sums, weight, added)
        raise
    return Received.of(stream)


def rollback(path: Path, sums: RoundSums, weight: float, blocks: int) -> None:
    """Subtract the first `blocks` blocks of a partly received update, replayed from its spool file."""
    if blocks == 0:
        return
    left = blocks

    def subtract(name: str, start: int, values: torch.Tensor) -> None:
        nonlocal left
        if left > 0:
            sums.add(name, start, values, -weight)
            left -= 1

    replay(path, sums.expected, subtract, partial=True)
    if left:
        raise RuntimeError(f"could not replay {left} block(s) from {path} to undo a rejected update")


def blocks_of(path: Path, expected: dict[str, Expected]) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(tensor name, start, decoded values) of each block of a complete spooled update, in order, lazily:
    the close pass reads many updates side by side this way."""
    ready: deque[tuple[str, int, torch.Tensor]] = deque()
    stream = FrameStream(
        FrameAssembler(expected, on_block=lambda name, start, values: ready.append((name, start, values)))
    )
    chunks = spool.read(path)
    first = next(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidInput(f"{path.name} does not start with an update header")
    for chunk in chunks:
        end = stream.take(chunk)
        while ready:
            yield ready.popleft()
        if end:
            return
    raise InvalidInput(f"{path.name} ends before the end marker")
