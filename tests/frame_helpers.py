"""Hand-made tensor frames and the rejection check that tests/unit/test_frames.py and
tests/unit/test_frame_rejections.py share."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import zstandard

from strata.codec import shuffle
from strata.errors import InvalidInput
from strata.proto.v1 import tensor_pb2

NAME = "bert.encoder.layer.0.attention.self.query.weight"


def fp32_payload(values: np.ndarray | list[float]) -> bytes:
    """One fp32 block as the codec writes it: byte-shuffled float32 values, then zstd."""
    return zstandard.ZstdCompressor(level=3).compress(shuffle(np.asarray(values, dtype="<f4")))


def tensor_header(
    payload: bytes,
    shape: tuple[int, ...] | list[int],
    name: str = NAME,
    dtype: str = "float32",
    encoding: str = "fp32",
    payload_bytes: int | None = None,
    crc32: int | None = None,
) -> tensor_pb2.TensorHeader:
    return tensor_pb2.TensorHeader(
        name=name,
        shape=list(shape),
        dtype=dtype,
        encoding=encoding,
        payload_bytes=len(payload) if payload_bytes is None else payload_bytes,
        crc32=zlib.crc32(payload) if crc32 is None else crc32,
        # one block holding the whole tensor (a zero-element tensor has none)
        block_bytes=[len(payload)] if math.prod(shape) else [],
        block_elements=max(1, min(math.prod(shape), 1 << 22)),
        group_elements=1,
    )


def rejects(fn, *args, name: str = NAME, **kwargs) -> str:  # type: ignore[no-untyped-def]
    """Call fn, expect InvalidInput whose message names the tensor; return the message."""
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert name in message, f"error {message!r} does not name {name!r}"
    return message
