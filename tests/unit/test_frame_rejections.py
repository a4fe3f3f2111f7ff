"""strata.frames refusing bad frames: corrupt payloads, headers that lie, shapes and dtypes that do not
match the model, non-finite values, zstd bombs. Each refusal is an InvalidInput naming the tensor."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
import torch
import zstandard

from strata.errors import InvalidInput
from strata.frames import (
    FrameAssembler,
    check_header,
    decode_tensor,
    encode_tensor,
    expected_of,
    pieces,
)
from tests.frame_helpers import NAME, fp32_payload, rejects, tensor_header


def test_corrupt_payload_byte_is_a_crc_mismatch() -> None:
    header, payload = encode_tensor(NAME, torch.randn(16))
    corrupt = bytearray(payload)
    corrupt[len(corrupt) // 2] ^= 0xFF
    msg = rejects(decode_tensor, header, bytes(corrupt))
    assert "checksum" in msg


def test_corrupt_payload_through_assembler() -> None:
    header, payload = encode_tensor(NAME, torch.randn(16))
    corrupt = bytearray(payload)
    corrupt[-1] ^= 0x01
    asm = FrameAssembler()
    asm.tensor(header)
    rejects(asm.data, bytes(corrupt))


def test_corrupt_zstd_with_matching_crc() -> None:
    payload = b"\x28\xb5\x2f\xfd" + b"\xff" * 20  # zstd magic, garbage frame; CRC made to match
    rejects(decode_tensor, tensor_header(payload, (4,)), payload)


@pytest.mark.parametrize("delta", [-1, 1], ids=["shorter", "longer"])
def test_payload_length_differs_from_header(delta: int) -> None:
    header, payload = encode_tensor(NAME, torch.randn(16))
    bad = payload[:-1] if delta < 0 else payload + b"\x00"
    msg = rejects(decode_tensor, header, bad)
    assert str(header.payload_bytes) in msg


def test_payload_decodes_to_fewer_bytes_than_shape_needs() -> None:
    payload = fp32_payload([1.0, 2.0, 3.0])
    rejects(decode_tensor, tensor_header(payload, (4,)), payload)


def test_payload_decodes_to_more_bytes_than_shape_needs() -> None:
    payload = fp32_payload([1.0, 2.0, 3.0, 4.0, 5.0])
    rejects(decode_tensor, tensor_header(payload, (4,)), payload)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("encoding", "int4", "unknown encoding"),
        ("encoding", "", "unknown encoding"),
        ("dtype", "float64", "unsupported dtype"),
        ("dtype", "int32", "unsupported dtype"),
        ("dtype", "torch.float32", "unsupported dtype"),
    ],
)
def test_header_field_rejections(field: str, value: str, fragment: str) -> None:
    header, payload = encode_tensor(NAME, torch.randn(4))
    setattr(header, field, value)
    msg = rejects(decode_tensor, header, payload)
    assert fragment in msg
    rejects(FrameAssembler().tensor, header)


def test_header_without_name() -> None:
    header, payload = encode_tensor("", torch.randn(4))
    with pytest.raises(InvalidInput, match="without a valid name"):
        decode_tensor(header, payload)


@pytest.mark.parametrize(
    ("sent_shape", "model_shape"),
    [((3, 2), (2, 3)), ((6,), (2, 3)), ((2, 3, 1), (2, 3)), ((), (1,)), ((0,), (4,))],
    ids=str,
)
def test_shape_mismatch_vs_expected(sent_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> None:
    header, payload = encode_tensor(NAME, torch.randn(sent_shape))
    msg = rejects(decode_tensor, header, payload, expected_of({NAME: torch.zeros(model_shape)}))
    assert "shape" in msg


@pytest.mark.parametrize(
    ("sent", "model"),
    [(torch.float32, torch.bfloat16), (torch.float16, torch.float32), (torch.bfloat16, torch.float16)],
    ids=str,
)
def test_dtype_mismatch_vs_expected(sent: torch.dtype, model: torch.dtype) -> None:
    header, payload = encode_tensor(NAME, torch.randn(2, 2).to(sent))
    msg = rejects(decode_tensor, header, payload, expected_of({NAME: torch.zeros(2, 2, dtype=model)}))
    assert "dtype" in msg


def test_unknown_tensor_name() -> None:
    header, payload = encode_tensor("classifier.bias.extra", torch.randn(2))
    msg = rejects(
        decode_tensor, header, payload, expected_of({NAME: torch.zeros(2)}), name="classifier.bias.extra"
    )
    assert "no such tensor" in msg


@pytest.mark.parametrize(
    "values",
    [[1.0, float("nan"), 2.0], [float("inf"), 0.0, 0.0], [0.0, 0.0, float("-inf")]],
    ids=["nan", "inf", "-inf"],
)
def test_non_finite_values_rejected(values: list[float]) -> None:
    payload = fp32_payload(values)
    msg = rejects(decode_tensor, tensor_header(payload, (3,)), payload)
    assert "NaN or Inf" in msg


def test_encoded_nan_tensor_rejected_through_assembler() -> None:
    header, payload = encode_tensor(NAME, torch.tensor([0.0, float("nan")], dtype=torch.bfloat16))
    asm = FrameAssembler()
    asm.tensor(header)
    rejects(asm.data, payload)


def test_value_overflowing_float16_is_rejected() -> None:
    payload = fp32_payload([1e6, 0.0])
    with pytest.raises(InvalidInput):
        decode_tensor(tensor_header(payload, (2,), dtype="float16"), payload)


@pytest.mark.parametrize("extra", [1025, 10_000, 2**40])
def test_payload_bytes_absurdly_larger_than_tensor_needs(extra: int) -> None:
    header, _ = encode_tensor(NAME, torch.randn(4))
    header.payload_bytes = 16 + extra
    header.block_bytes[0] = 16 + extra
    msg = rejects(check_header, header, None)
    assert "larger than its tensor can need" in msg
    rejects(FrameAssembler().tensor, header)


@pytest.mark.parametrize("shape", [(2**40,), (2**20, 2**20), (2**35,), (2**13, 2**13, 2**13, 2**13)], ids=str)
def test_absurdly_large_shape(shape: tuple[int, ...]) -> None:
    header = tensor_header(b"", shape, payload_bytes=100)
    msg = rejects(check_header, header, None)
    assert "absurdly large" in msg
    rejects(FrameAssembler().tensor, header)


def test_zero_dim_beside_huge_dim_is_invalid_input() -> None:
    payload = zstandard.ZstdCompressor().compress(b"")
    with pytest.raises(InvalidInput):
        decode_tensor(tensor_header(payload, (0, 2**63)), payload)


_BOMB = zstandard.ZstdCompressor(level=19).compress(bytes(10 << 20))


def test_zstd_bomb_is_rejected() -> None:
    assert len(_BOMB) < 2000  # small enough to pass the payload-size check for 4 elements
    rejects(decode_tensor, tensor_header(_BOMB, (4,)), _BOMB)


def test_zstd_bomb_without_content_size_is_rejected() -> None:
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=False).compress(bytes(10 << 20))
    for shape in [(4,), (0,)]:
        rejects(decode_tensor, tensor_header(bomb, shape), bomb)


def test_zstd_bomb_does_not_allocate_the_output() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput):
            decode_tensor(tensor_header(_BOMB, (4,)), _BOMB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a 4-element bomb allocated {peak} bytes"


def _frame_declaring(content_size: int) -> bytes:
    """A 16-byte zstd frame whose header claims `content_size` bytes of output."""
    frame = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False).compress(bytes(16))
    assert frame[4] == 0x00  # no content-size field, not single segment: a window descriptor follows
    return frame[:4] + bytes([0xC0, frame[5]]) + struct.pack("<Q", content_size) + frame[6:]


def test_frame_declaring_more_content_than_it_holds() -> None:
    payload = _frame_declaring(10 << 20)
    assert zstandard.get_frame_parameters(payload).content_size == 10 << 20
    rejects(decode_tensor, tensor_header(payload, (4,)), payload)


def test_frame_declaring_huge_content_size_is_invalid_input() -> None:
    payload = _frame_declaring(2**62)
    rejects(decode_tensor, tensor_header(payload, (4,)), payload)


def test_pieces_splits_exactly() -> None:
    data = bytes(range(50))
    chunks = list(pieces(data, chunk_bytes=7))
    assert [len(c) for c in chunks] == [7] * 7 + [1]
    assert b"".join(chunks) == data
    assert list(pieces(b"", chunk_bytes=7)) == []
