"""Self-describing tensor and file frames: encode, split into ≤1 MiB chunks, reassemble, validate.

A frame is a header (name, shape, dtype, encoding, payload size, CRC-32) followed by its payload in
pieces. The decoder checks every size against the header before it allocates, refuses NaN and Inf,
and names the tensor in every error.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

from strata.errors import InvalidInput
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import tensor_pb2

CHUNK_BYTES = 1 << 20
ENCODINGS = ("fp32",)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
MAX_ELEMENTS = 1 << 34  # a sanity ceiling on one tensor; real bounds come from the expected model
MAX_FILE_BYTES = 256 << 20
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode_tensor(
    name: str, tensor: torch.Tensor, encoding: str = "fp32", level: int = 3
) -> tuple[tensor_pb2.TensorHeader, bytes]:
    """Encode one tensor: its values as little-endian fp32, then zstd. Returns (header, payload)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    t = tensor.detach().to("cpu", torch.float32).contiguous()
    payload = zstandard.ZstdCompressor(level=level).compress(t.numpy().reshape(-1).data.cast("B"))
    header = tensor_pb2.TensorHeader(
        name=name,
        shape=list(t.shape),
        dtype=dtype_name(tensor.dtype),
        encoding=encoding,
        payload_bytes=len(payload),
        crc32=zlib.crc32(payload),
    )
    return header, payload


@dataclass(frozen=True, slots=True)
class Expected:
    """What a receiver knows a tensor must look like (from its own copy of the model)."""

    shape: tuple[int, ...]
    dtype: str


def check_header(header: tensor_pb2.TensorHeader, expected: dict[str, Expected] | None) -> int:
    """Validate a tensor header before any payload is read; returns the decoded size in bytes."""
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
    raw_bytes = numel * 4
    # zstd never expands incompressible data by more than a small margin; refuse claims beyond that
    if header.payload_bytes > raw_bytes + raw_bytes // 64 + 1024:
        raise InvalidInput(
            f"{name}: payload of {header.payload_bytes} bytes is larger than its tensor can need"
        )
    return raw_bytes


def decode_tensor(
    header: tensor_pb2.TensorHeader, payload: bytes, expected: dict[str, Expected] | None = None
) -> torch.Tensor:
    """Decode a frame's payload into a tensor of the header's dtype, checking size, CRC and finiteness."""
    raw_bytes = check_header(header, expected)
    name = header.name
    if len(payload) != header.payload_bytes:
        raise InvalidInput(f"{name}: payload has {len(payload)} bytes, header says {header.payload_bytes}")
    if zlib.crc32(payload) != header.crc32:
        raise InvalidInput(f"{name}: checksum mismatch")
    raw = _decompress_bounded(name, payload, raw_bytes)
    shape = tuple(int(d) for d in header.shape)
    values = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).reshape(shape).to(DTYPES[header.dtype])
    # check after the cast: a finite fp32 value can overflow a 16-bit dtype
    if not bool(torch.isfinite(values).all()):
        raise InvalidInput(f"{name}: contains NaN or Inf")
    return values


def _decompress_bounded(name: str, payload: bytes, raw_bytes: int) -> bytes:
    """Decompress at most raw_bytes + 1 bytes, whatever the frame claims: a zstd bomb never expands."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=False)
        raw = reader.read(raw_bytes + 1) if raw_bytes else reader.read(1)
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"{name}: corrupt payload ({exc})") from None
    if len(raw) != raw_bytes:
        raise InvalidInput(
            f"{name}: payload decodes to {'more than ' if len(raw) > raw_bytes else ''}{len(raw)} bytes, shape needs {raw_bytes}"
        )
    return raw


def pieces(payload: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    view = memoryview(payload)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


def file_header(name: str, data: bytes) -> pb.FileHeader:
    return pb.FileHeader(name=name, size=len(data), crc32=zlib.crc32(data))


class FrameAssembler:
    """Reassembles tensor and file frames from a stream of (header | data) parts.

    Feed each part with `tensor()`, `file()` or `data()`; a completed frame is returned by the call
    that completes it. `finish()` refuses a stream that stops inside a frame.
    """

    def __init__(
        self, expected: dict[str, Expected] | None = None, max_file_bytes: int = MAX_FILE_BYTES
    ) -> None:
        self.expected = expected
        self.max_file_bytes = max_file_bytes
        self._tensor: tensor_pb2.TensorHeader | None = None
        self._file: pb.FileHeader | None = None
        self._buf = bytearray()
        self._need = 0
        self.seen: set[str] = set()
        self.payload_bytes = 0

    def _start(self, name: str, need: int) -> None:
        if self._tensor is not None or self._file is not None:
            raise InvalidInput(f"{name}: a new frame started before the previous one ended")
        if name in self.seen:
            raise InvalidInput(f"{name}: sent twice")
        self.seen.add(name)
        self._buf = bytearray()
        self._need = need

    def tensor(self, header: tensor_pb2.TensorHeader) -> tuple[str, torch.Tensor] | None:
        check_header(header, self.expected)
        self._start(header.name, header.payload_bytes)
        self._tensor = header
        return self._complete() if self._need == 0 else None

    def file(self, header: pb.FileHeader) -> tuple[str, bytes] | None:
        if not _FILE_NAME.fullmatch(header.name) or header.name.startswith("."):
            raise InvalidInput(f"file name {header.name!r} is not a plain file name")
        if header.size > self.max_file_bytes:
            raise InvalidInput(f"{header.name}: file of {header.size} bytes exceeds the limit")
        self._start(header.name, header.size)
        self._file = header
        return self._complete_file() if self._need == 0 else None

    def data(self, piece: bytes) -> tuple[str, torch.Tensor] | tuple[str, bytes] | None:
        if self._tensor is None and self._file is None:
            raise InvalidInput("data outside a frame")
        name = self._tensor.name if self._tensor is not None else self._file.name  # type: ignore[union-attr]
        if len(self._buf) + len(piece) > self._need:
            raise InvalidInput(f"{name}: more payload than the header announced")
        self._buf += piece
        self.payload_bytes += len(piece)
        if len(self._buf) < self._need:
            return None
        return self._complete() if self._tensor is not None else self._complete_file()

    def _complete(self) -> tuple[str, torch.Tensor]:
        header = self._tensor
        assert header is not None
        self._tensor = None
        tensor = decode_tensor(header, bytes(self._buf), self.expected)
        self._buf = bytearray()
        return header.name, tensor

    def _complete_file(self) -> tuple[str, bytes]:
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
            name = self._tensor.name if self._tensor is not None else self._file.name  # type: ignore[union-attr]
            raise InvalidInput(f"{name}: the stream ended inside this frame")


def expected_of(tensors: dict[str, torch.Tensor]) -> dict[str, Expected]:
    return {n: Expected(tuple(t.shape), dtype_name(t.dtype)) for n, t in tensors.items()}
