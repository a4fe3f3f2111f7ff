"""Self-describing tensor and file frames: encode, split into ≤1 MiB chunks, reassemble, validate.

A tensor frame is a header (name, shape, dtype, encoding, block sizes, payload size, CRC-32) followed
by its payload in pieces. The payload is a run of independently compressed blocks (see
strata/codec.py), so a receiver decodes each block as soon as its bytes are in: memory stays at one
block, whatever the size of the tensor or the model. The decoder checks every size against the
header before it allocates, refuses NaN and Inf, and names the tensor in every error.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from strata import codec
from strata.codec import ENCODINGS, Codec, CodecError
from strata.errors import InvalidInput
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import tensor_pb2

__all__ = ["ENCODINGS", "Codec"]

CHUNK_BYTES = 1 << 20
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
MAX_ELEMENTS = 1 << 34  # a sanity ceiling on one tensor; real bounds come from the expected model
MAX_BLOCK_ELEMENTS = 1 << 22
MAX_FILE_BYTES = 256 << 20
_FILE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

#: called with (tensor name, offset of the block's first element, the block's flat float32 values)
BlockSink = Callable[[str, int, torch.Tensor], None]
#: a completed frame: (name, tensor) or (name, None) when blocks went to a sink, or (name, bytes) for a file
Done = tuple[str, Any] | None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def header_of(
    name: str, tensor: torch.Tensor, enc: codec.Encoded, crc: bool = False
) -> tensor_pb2.TensorHeader:
    """The frame header of an encoded tensor. Every block carries zstd's own content checksum; a CRC-32
    of the whole payload is added only on request (0 means none)."""
    value = 0
    for block in enc.blocks if crc else ():
        value = zlib.crc32(block, value)
    return tensor_pb2.TensorHeader(
        name=name,
        shape=list(enc.shape),
        dtype=dtype_name(tensor.dtype),
        encoding=enc.encoding,
        payload_bytes=enc.payload_bytes,
        crc32=value,
        block_bytes=[len(b) for b in enc.blocks],
        block_elements=enc.block_elements,
        group_elements=enc.group_elements,
        topk_fraction=enc.topk_fraction,
    )


def encode_tensor(
    name: str, tensor: torch.Tensor, encoding: str | Codec = "fp32", level: int = 1
) -> tuple[tensor_pb2.TensorHeader, bytes]:
    """Encode one tensor. Returns (header, payload); the payload is the concatenated blocks."""
    c = encoding if isinstance(encoding, Codec) else Codec(encoding, level=level)
    enc = codec.encode(tensor, c)
    return header_of(name, tensor, enc, crc=True), b"".join(enc.blocks)


@dataclass(frozen=True, slots=True)
class Expected:
    """What a receiver knows a tensor must look like (from its own copy of the model)."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class Layout:
    """A checked header: the sizes a receiver may rely on."""

    numel: int
    block_elements: int
    group: int
    bounds: tuple[int, ...]  # largest decompressed size of each block


def check_header(header: tensor_pb2.TensorHeader, expected: dict[str, Expected] | None) -> Layout:
    """Validate a tensor header before any payload is read."""
    name = header.name
    if not name or len(name) > 512:
        raise InvalidInput("tensor frame without a valid name")
    if header.encoding not in ENCODINGS:
        raise InvalidInput(f"{name}: unknown encoding {header.encoding!r}")
    if header.dtype not in DTYPES:
        raise InvalidInput(f"{name}: unsupported dtype {header.dtype!r}")
    shape = tuple(int(d) for d in header.shape)
    numel = math.prod(shape) if shape else 1
    if numel > MAX_ELEMENTS or any(d > MAX_ELEMENTS for d in shape) or len(shape) > 8:
        raise InvalidInput(f"{name}: shape {shape} is absurdly large")
    if expected is not None:
        want = expected.get(name)
        if want is None:
            raise InvalidInput(f"{name}: no such tensor in the model")
        if shape != want.shape:
            raise InvalidInput(f"{name}: shape {shape} does not match the model's {want.shape}")
        if header.dtype != want.dtype:
            raise InvalidInput(f"{name}: dtype {header.dtype} does not match the model's {want.dtype}")
    per = int(header.block_elements)
    group = int(header.group_elements) if header.encoding in ("int8", "lowrank") else 1
    if header.encoding == "lowrank" and (len(shape) < 2 or group != shape[-1]):
        raise InvalidInput(f"{name}: low-rank rows of {group} elements do not match the shape {shape}")
    if not 1 <= per <= MAX_BLOCK_ELEMENTS:
        raise InvalidInput(f"{name}: block of {per} elements is out of range")
    if not 1 <= group <= per or per % group:
        raise InvalidInput(f"{name}: group of {group} elements does not divide blocks of {per}")
    if header.encoding == "topk" and not 0.0 < header.topk_fraction <= 1.0:
        raise InvalidInput(f"{name}: top-k fraction {header.topk_fraction} is out of range")
    blocks = codec.num_blocks(numel, per)
    if len(header.block_bytes) != blocks:
        raise InvalidInput(f"{name}: {len(header.block_bytes)} blocks announced, its shape needs {blocks}")
    if sum(header.block_bytes) != header.payload_bytes:
        raise InvalidInput(f"{name}: block sizes do not add up to the payload size")
    bounds = []
    for i, size in enumerate(header.block_bytes):
        n = min(per, numel - i * per)
        bound = codec.decoded_bound(header.encoding, n, group)
        # zstd never expands data by more than a small margin; refuse claims beyond that
        if size > bound + bound // 64 + 1024:
            raise InvalidInput(
                f"{name}: payload block {i} of {size} bytes is larger than its tensor can need"
            )
        bounds.append(bound)
    return Layout(numel, per, group, tuple(bounds))


def decode_tensor(
    header: tensor_pb2.TensorHeader, payload: bytes, expected: dict[str, Expected] | None = None
) -> torch.Tensor:
    """Decode a whole frame's payload into a tensor of the header's dtype."""
    if len(payload) != header.payload_bytes:
        raise InvalidInput(
            f"{header.name}: payload has {len(payload)} bytes, header says {header.payload_bytes}"
        )
    asm = FrameAssembler(expected)
    done = asm.tensor(header)
    for piece in pieces(payload):
        done = asm.data(piece) or done
    asm.finish()
    assert done is not None and isinstance(done[1], torch.Tensor)
    return done[1]


def pieces(payload: bytes | memoryview, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    view = memoryview(payload)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


def file_header(name: str, data: bytes) -> pb.FileHeader:
    return pb.FileHeader(name=name, size=len(data), crc32=zlib.crc32(data))


class _TensorState:
    """A tensor frame being received: which block comes next and the bytes of it so far."""

    def __init__(self, header: tensor_pb2.TensorHeader, layout: Layout, collect: bool) -> None:
        self.header = header
        self.layout = layout
        self.block = 0
        self.buf = bytearray()
        self.crc = 0
        self.received = 0
        self.out = torch.empty(layout.numel, dtype=torch.float32) if collect else None


class FrameAssembler:
    """Reassembles tensor and file frames from a stream of (header | data) parts.

    Feed each part with `tensor()`, `file()` or `data()`. Each tensor block is decoded as soon as it is
    complete and handed to `on_block` if one is given; otherwise the tensor is collected and returned
    by the call that completes it (as `(name, tensor)`; with `on_block`, as `(name, None)`).
    `finish()` refuses a stream that stops inside a frame.
    """

    def __init__(
        self,
        expected: dict[str, Expected] | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        on_block: BlockSink | None = None,
    ) -> None:
        self.expected = expected
        self.max_file_bytes = max_file_bytes
        self.on_block = on_block
        self._tensor: _TensorState | None = None
        self._file: pb.FileHeader | None = None
        self._buf = bytearray()
        self.seen: set[str] = set()
        self.payload_bytes = 0
        self.raw_bytes = 0  # fp32 bytes of the tensors decoded so far
        self.sq = 0.0  # squared L2 norm of everything decoded so far
        self.tensor_sq: dict[str, float] = {}  # the same, per tensor

    def _start(self, name: str) -> None:
        if self._tensor is not None or self._file is not None:
            raise InvalidInput(f"{name}: a new frame started before the previous one ended")
        if name in self.seen:
            raise InvalidInput(f"{name}: sent twice")
        self.seen.add(name)

    def tensor(self, header: tensor_pb2.TensorHeader) -> Done:
        layout = check_header(header, self.expected)
        self._start(header.name)
        self._tensor = _TensorState(header, layout, collect=self.on_block is None)
        return self._finish_tensor() if header.payload_bytes == 0 else None

    def file(self, header: pb.FileHeader) -> Done:
        if not _FILE_NAME.fullmatch(header.name) or header.name.startswith("."):
            raise InvalidInput(f"file name {header.name!r} is not a plain file name")
        if header.size > self.max_file_bytes:
            raise InvalidInput(f"{header.name}: file of {header.size} bytes exceeds the limit")
        self._start(header.name)
        self._file = header
        self._buf = bytearray()
        return self._finish_file() if header.size == 0 else None

    def data(self, piece: bytes) -> Done:
        if self._tensor is not None:
            return self._tensor_data(self._tensor, piece)
        if self._file is not None:
            if len(self._buf) + len(piece) > self._file.size:
                raise InvalidInput(f"{self._file.name}: more data than the header announced")
            self._buf += piece
            self.payload_bytes += len(piece)
            return self._finish_file() if len(self._buf) == self._file.size else None
        raise InvalidInput("data outside a frame")

    def _tensor_data(self, st: _TensorState, piece: bytes) -> tuple[str, torch.Tensor | None] | None:
        h = st.header
        if st.received + len(piece) > h.payload_bytes:
            raise InvalidInput(f"{h.name}: more payload than the header announced")
        st.received += len(piece)
        if h.crc32:
            st.crc = zlib.crc32(piece, st.crc)
        self.payload_bytes += len(piece)
        view = memoryview(piece)
        while view:
            size = h.block_bytes[st.block]
            if not st.buf and len(view) >= size:  # a whole block in this piece: decode it in place
                self._decode_block(st, view[:size])
                view = view[size:]
                continue
            need = size - len(st.buf)
            st.buf += view[:need]
            view = view[need:]
            if len(st.buf) == size:
                self._decode_block(st, st.buf)
        return self._finish_tensor() if st.received == h.payload_bytes else None

    def _decode_block(self, st: _TensorState, block: bytes | bytearray | memoryview) -> None:
        h, lay, i = st.header, st.layout, st.block
        start = i * lay.block_elements
        n = min(lay.block_elements, lay.numel - start)
        try:
            raw = codec.decompress(block, lay.bounds[i])
            values = codec.decode_block(raw, h.encoding, n, lay.group)
        except CodecError as exc:
            raise InvalidInput(f"{h.name}: {exc}") from None
        # One BLAS pass gives the squared norm and, almost always, the finiteness check: NaN and Inf
        # propagate into it. Only when it overflows are the values checked one by one.
        sq = float(torch.dot(values, values))
        if not math.isfinite(sq):
            if not bool(torch.isfinite(values).all()):
                raise InvalidInput(f"{h.name}: contains NaN or Inf")
            sq = float(values.double().pow(2).sum())  # finite values beyond 1e19
        dtype = DTYPES[h.dtype]  # a finite fp32 value can still overflow a 16-bit dtype
        if dtype != torch.float32 and not bool(torch.isfinite(values.to(dtype)).all()):
            raise InvalidInput(f"{h.name}: contains NaN or Inf")
        self.sq += sq
        self.tensor_sq[h.name] = self.tensor_sq.get(h.name, 0.0) + sq
        st.buf = bytearray()
        st.block += 1
        self.raw_bytes += 4 * n
        if st.out is not None:
            st.out[start : start + n] = values
        elif self.on_block is not None:
            self.on_block(h.name, start, values)

    def _finish_tensor(self) -> tuple[str, torch.Tensor | None]:
        st = self._tensor
        assert st is not None
        self._tensor = None
        if st.block != len(st.header.block_bytes):
            raise InvalidInput(f"{st.header.name}: payload ended inside a block")
        if st.header.crc32 and st.crc != st.header.crc32:
            raise InvalidInput(f"{st.header.name}: checksum mismatch")
        if st.out is None:
            return st.header.name, None
        shape = tuple(int(d) for d in st.header.shape)
        return st.header.name, st.out.reshape(shape).to(DTYPES[st.header.dtype])

    def _finish_file(self) -> tuple[str, bytes]:
        header = self._file
        assert header is not None
        self._file = None
        data = bytes(self._buf)
        self._buf = bytearray()
        if zlib.crc32(data) != header.crc32:
            raise InvalidInput(f"{header.name}: checksum mismatch")
        return header.name, data

    def finish(self) -> None:
        if self._tensor is not None or self._file is not None:
            name = self._tensor.header.name if self._tensor is not None else self._file.name  # type: ignore[union-attr]
            raise InvalidInput(f"{name}: the stream ended inside this frame")


def add_update(param: torch.Tensor, values: torch.Tensor, start: int = 0) -> None:
    """param[start:start+n] += values, in the parameter's dtype, on its device: the one operation that
    applies a global update, on the coordinator and on every worker alike, so their copies stay equal."""
    flat = param.data.view(-1)
    flat[start : start + values.numel()].add_(values.reshape(-1).to(device=flat.device, dtype=flat.dtype))


def expected_of(tensors: dict[str, torch.Tensor]) -> dict[str, Expected]:
    return {n: Expected(tuple(t.shape), dtype_name(t.dtype)) for n, t in tensors.items()}
