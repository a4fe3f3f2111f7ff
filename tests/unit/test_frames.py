"""Unit tests for strata.frames: tensor/file frame encoding, reassembly and every rejection path."""

from __future__ import annotations

import math
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
import zstandard

from strata.codec import shuffle
from strata.errors import InvalidInput
from strata.frames import (
    Expected,
    FrameAssembler,
    check_header,
    decode_tensor,
    encode_tensor,
    expected_of,
    file_header,
    pieces,
)
from strata.proto.v1 import tensor_pb2

NAME = "bert.encoder.layer.0.attention.self.query.weight"


def _fp32_payload(values: np.ndarray | list[float]) -> bytes:
    """One fp32 block as the codec writes it: byte-shuffled float32 values, then zstd."""
    return zstandard.ZstdCompressor(level=3).compress(shuffle(np.asarray(values, dtype="<f4")))


def _header(
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


def _rejects(fn, *args, name: str = NAME, **kwargs) -> str:  # type: ignore[no-untyped-def]
    """Call fn, expect InvalidInput whose message names the tensor; return the message."""
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert name in message, f"error {message!r} does not name {name!r}"
    return message


# ---------------------------------------------------------------------------------------------- round trip

SHAPES = [
    (),
    (1,),
    (7,),
    (3, 5),
    (2, 3, 4),
    (0,),
    (4, 0),
    (0, 3, 2),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_encode_decode_round_trip(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    tensor = torch.randn(shape, generator=gen).to(dtype)
    header, payload = encode_tensor(NAME, tensor)
    assert header.name == NAME
    assert tuple(header.shape) == shape
    assert header.dtype == str(dtype).removeprefix("torch.")
    assert header.encoding == "fp32"
    assert header.payload_bytes == len(payload)
    assert header.crc32 == zlib.crc32(payload)
    out = decode_tensor(header, payload, expected_of({NAME: tensor}))
    assert out.dtype == dtype
    assert out.shape == tensor.shape
    assert torch.equal(out, tensor)


def test_encode_rejects_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        encode_tensor(NAME, torch.zeros(2), encoding="int4")


def test_expected_of_records_shape_and_dtype() -> None:
    got = expected_of({"a": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.zeros(())})
    assert got == {"a": Expected((2, 3), "bfloat16"), "b": Expected((), "float32")}


# ---------------------------------------------------------------------------------------------- assembler


def test_assembler_reassembles_tensor_from_many_small_pieces() -> None:
    tensor = torch.randn(9, 11)
    header, payload = encode_tensor(NAME, tensor)
    chunks = list(pieces(payload, chunk_bytes=7))
    assert len(chunks) > 5
    assert b"".join(chunks) == payload
    asm = FrameAssembler(expected_of({NAME: tensor}))
    assert asm.tensor(header) is None
    results = [asm.data(c) for c in chunks]
    assert all(r is None for r in results[:-1])
    name, out = results[-1]  # type: ignore[misc]
    assert name == NAME
    assert torch.equal(out, tensor)
    assert asm.payload_bytes == len(payload)
    asm.finish()


def test_assembler_handles_several_tensors_and_files() -> None:
    tensors = {"a": torch.randn(4), "b": torch.randn(2, 2).to(torch.bfloat16)}
    files = {"config.json": b'{"hidden_size": 32}', "vocab.txt": b"[PAD]\n[UNK]\n" * 50}
    asm = FrameAssembler(expected_of(tensors))
    got: dict[str, object] = {}
    for name, t in tensors.items():
        header, payload = encode_tensor(name, t)
        assert asm.tensor(header) is None
        for piece in pieces(payload, chunk_bytes=7):
            done = asm.data(piece)
            if done is not None:
                got[done[0]] = done[1]
    for name, data in files.items():
        assert asm.file(file_header(name, data)) is None
        for piece in pieces(data, chunk_bytes=7):
            done = asm.data(piece)
            if done is not None:
                got[done[0]] = done[1]
    asm.finish()
    assert set(got) == set(tensors) | set(files)
    for name, t in tensors.items():
        assert torch.equal(got[name], t)  # type: ignore[arg-type]
    for name, data in files.items():
        assert got[name] == data
    assert asm.seen == set(got)


def test_assembler_empty_file_completes_on_header() -> None:
    asm = FrameAssembler()
    assert asm.file(file_header("empty.txt", b"")) == ("empty.txt", b"")
    asm.finish()


def test_assembler_file_checksum_mismatch() -> None:
    asm = FrameAssembler()
    header = file_header("config.json", b"{}")
    header.crc32 ^= 1
    asm.file(header)
    _rejects(asm.data, b"{}", name="config.json")


def test_assembler_file_over_limit() -> None:
    asm = FrameAssembler(max_file_bytes=10)
    _rejects(asm.file, file_header("big.bin", b"x" * 11), name="big.bin")


@pytest.mark.parametrize(
    "bad_name",
    ["../etc/passwd", "a/b.json", "/abs.json", "..", ".", ".hidden", "", "x" * 129, "sp ace.txt", "a\\b"],
)
def test_assembler_refuses_unsafe_file_names(bad_name: str) -> None:
    asm = FrameAssembler()
    with pytest.raises(InvalidInput, match="not a plain file name"):
        asm.file(file_header(bad_name, b"data"))


def test_assembler_refuses_file_name_with_trailing_newline() -> None:
    with pytest.raises(InvalidInput):
        FrameAssembler().file(file_header("config.json\n", b"{}"))


@pytest.mark.parametrize(
    "good_name", ["config.json", "vocab.txt", "tokenizer_config.json", "a-b_c.1.model", "a..b"]
)
def test_assembler_accepts_plain_file_names(good_name: str) -> None:
    asm = FrameAssembler()
    assert asm.file(file_header(good_name, b"")) == (good_name, b"")


def test_new_frame_before_previous_ended() -> None:
    t = torch.randn(5)
    header, payload = encode_tensor(NAME, t)
    other, _ = encode_tensor("other", t)
    asm = FrameAssembler()
    asm.tensor(header)
    asm.data(payload[:1])
    _rejects(asm.tensor, other, name="other")
    asm2 = FrameAssembler()
    asm2.tensor(header)
    _rejects(asm2.file, file_header("config.json", b"{}"), name="config.json")


def test_same_tensor_twice() -> None:
    t = torch.randn(3)
    header, payload = encode_tensor(NAME, t)
    asm = FrameAssembler()
    asm.tensor(header)
    asm.data(payload)
    _rejects(asm.tensor, header)


def test_same_file_twice() -> None:
    asm = FrameAssembler()
    asm.file(file_header("config.json", b""))
    _rejects(asm.file, file_header("config.json", b""), name="config.json")


def test_data_outside_a_frame() -> None:
    asm = FrameAssembler()
    with pytest.raises(InvalidInput, match="outside a frame"):
        asm.data(b"abc")
    header, payload = encode_tensor(NAME, torch.randn(3))
    asm.tensor(header)
    asm.data(payload)
    with pytest.raises(InvalidInput, match="outside a frame"):
        asm.data(b"x")


def test_finish_inside_a_tensor_frame() -> None:
    header, payload = encode_tensor(NAME, torch.randn(8))
    asm = FrameAssembler()
    asm.tensor(header)
    asm.data(payload[:-1])
    _rejects(asm.finish)


def test_finish_inside_a_file_frame() -> None:
    asm = FrameAssembler()
    asm.file(file_header("vocab.txt", b"abcdef"))
    asm.data(b"abc")
    _rejects(asm.finish, name="vocab.txt")


def test_assembler_payload_longer_than_announced() -> None:
    header, payload = encode_tensor(NAME, torch.randn(8))
    asm = FrameAssembler()
    asm.tensor(header)
    msg = _rejects(asm.data, payload + b"\x00")
    assert "more payload" in msg


def test_assembler_file_longer_than_announced() -> None:
    asm = FrameAssembler()
    asm.file(file_header("vocab.txt", b"abc"))
    _rejects(asm.data, b"abcd", name="vocab.txt")


def test_assembler_checks_header_against_expected_before_payload() -> None:
    model = {NAME: torch.zeros(2, 3)}
    header, _ = encode_tensor(NAME, torch.zeros(3, 2))
    _rejects(FrameAssembler(expected_of(model)).tensor, header)


# ---------------------------------------------------------------------------------------------- rejections


def test_corrupt_payload_byte_is_a_crc_mismatch() -> None:
    header, payload = encode_tensor(NAME, torch.randn(16))
    corrupt = bytearray(payload)
    corrupt[len(corrupt) // 2] ^= 0xFF
    msg = _rejects(decode_tensor, header, bytes(corrupt))
    assert "checksum" in msg


def test_corrupt_payload_through_assembler() -> None:
    header, payload = encode_tensor(NAME, torch.randn(16))
    corrupt = bytearray(payload)
    corrupt[-1] ^= 0x01
    asm = FrameAssembler()
    asm.tensor(header)
    _rejects(asm.data, bytes(corrupt))


def test_corrupt_zstd_with_matching_crc() -> None:
    payload = b"\x28\xb5\x2f\xfd" + b"\xff" * 20  # zstd magic, garbage frame; CRC made to match
    _rejects(decode_tensor, _header(payload, (4,)), payload)


@pytest.mark.parametrize("delta", [-1, 1], ids=["shorter", "longer"])
def test_payload_length_differs_from_header(delta: int) -> None:
    header, payload = encode_tensor(NAME, torch.randn(16))
    bad = payload[:-1] if delta < 0 else payload + b"\x00"
    msg = _rejects(decode_tensor, header, bad)
    assert str(header.payload_bytes) in msg


def test_payload_decodes_to_fewer_bytes_than_shape_needs() -> None:
    payload = _fp32_payload([1.0, 2.0, 3.0])
    _rejects(decode_tensor, _header(payload, (4,)), payload)


def test_payload_decodes_to_more_bytes_than_shape_needs() -> None:
    payload = _fp32_payload([1.0, 2.0, 3.0, 4.0, 5.0])
    _rejects(decode_tensor, _header(payload, (4,)), payload)


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
    msg = _rejects(decode_tensor, header, payload)
    assert fragment in msg
    _rejects(FrameAssembler().tensor, header)


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
    msg = _rejects(decode_tensor, header, payload, expected_of({NAME: torch.zeros(model_shape)}))
    assert "shape" in msg


@pytest.mark.parametrize(
    ("sent", "model"),
    [(torch.float32, torch.bfloat16), (torch.float16, torch.float32), (torch.bfloat16, torch.float16)],
    ids=str,
)
def test_dtype_mismatch_vs_expected(sent: torch.dtype, model: torch.dtype) -> None:
    header, payload = encode_tensor(NAME, torch.randn(2, 2).to(sent))
    msg = _rejects(decode_tensor, header, payload, expected_of({NAME: torch.zeros(2, 2, dtype=model)}))
    assert "dtype" in msg


def test_unknown_tensor_name() -> None:
    header, payload = encode_tensor("classifier.bias.extra", torch.randn(2))
    msg = _rejects(
        decode_tensor, header, payload, expected_of({NAME: torch.zeros(2)}), name="classifier.bias.extra"
    )
    assert "no such tensor" in msg


@pytest.mark.parametrize(
    "values",
    [[1.0, float("nan"), 2.0], [float("inf"), 0.0, 0.0], [0.0, 0.0, float("-inf")]],
    ids=["nan", "inf", "-inf"],
)
def test_non_finite_values_rejected(values: list[float]) -> None:
    payload = _fp32_payload(values)
    msg = _rejects(decode_tensor, _header(payload, (3,)), payload)
    assert "NaN or Inf" in msg


def test_encoded_nan_tensor_rejected_through_assembler() -> None:
    header, payload = encode_tensor(NAME, torch.tensor([0.0, float("nan")], dtype=torch.bfloat16))
    asm = FrameAssembler()
    asm.tensor(header)
    _rejects(asm.data, payload)


def test_value_overflowing_float16_is_rejected() -> None:
    payload = _fp32_payload([1e6, 0.0])
    with pytest.raises(InvalidInput):
        decode_tensor(_header(payload, (2,), dtype="float16"), payload)


@pytest.mark.parametrize("extra", [1025, 10_000, 2**40])
def test_payload_bytes_absurdly_larger_than_tensor_needs(extra: int) -> None:
    header, _ = encode_tensor(NAME, torch.randn(4))
    header.payload_bytes = 16 + extra
    header.block_bytes[0] = 16 + extra
    msg = _rejects(check_header, header, None)
    assert "larger than its tensor can need" in msg
    _rejects(FrameAssembler().tensor, header)


@pytest.mark.parametrize("shape", [(2**40,), (2**20, 2**20), (2**35,), (2**13, 2**13, 2**13, 2**13)], ids=str)
def test_absurdly_large_shape(shape: tuple[int, ...]) -> None:
    header = _header(b"", shape, payload_bytes=100)
    msg = _rejects(check_header, header, None)
    assert "absurdly large" in msg
    _rejects(FrameAssembler().tensor, header)


def test_zero_dim_beside_huge_dim_is_invalid_input() -> None:
    payload = zstandard.ZstdCompressor().compress(b"")
    with pytest.raises(InvalidInput):
        decode_tensor(_header(payload, (0, 2**63)), payload)


_BOMB = zstandard.ZstdCompressor(level=19).compress(bytes(10 << 20))


def test_zstd_bomb_is_rejected() -> None:
    assert len(_BOMB) < 2000  # small enough to pass the payload-size check for 4 elements
    _rejects(decode_tensor, _header(_BOMB, (4,)), _BOMB)


def test_zstd_bomb_without_content_size_is_rejected() -> None:
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=False).compress(bytes(10 << 20))
    for shape in [(4,), (0,)]:
        _rejects(decode_tensor, _header(bomb, shape), bomb)


def test_zstd_bomb_does_not_allocate_the_output() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput):
            decode_tensor(_header(_BOMB, (4,)), _BOMB)
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
    _rejects(decode_tensor, _header(payload, (4,)), payload)


def test_frame_declaring_huge_content_size_is_invalid_input() -> None:
    payload = _frame_declaring(2**62)
    _rejects(decode_tensor, _header(payload, (4,)), payload)


def test_pieces_splits_exactly() -> None:
    data = bytes(range(50))
    chunks = list(pieces(data, chunk_bytes=7))
    assert [len(c) for c in chunks] == [7] * 7 + [1]
    assert b"".join(chunks) == data
    assert list(pieces(b"", chunk_bytes=7)) == []


# ---------------------------------------------------------------------------------------------- fuzz


def test_fuzz_random_payload_decodes_or_is_invalid_input() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    zstd_prefix = st.sampled_from([b"", b"\x28\xb5\x2f\xfd", _fp32_payload([1.0, 2.0])[:6]])

    @hypothesis.settings(max_examples=60, deadline=None, database=None)
    @hypothesis.given(
        prefix=zstd_prefix,
        body=st.binary(max_size=64),
        shape=st.lists(st.integers(min_value=0, max_value=8), max_size=3),
        dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
        crc_ok=st.booleans(),
    )
    def check(prefix: bytes, body: bytes, shape: list[int], dtype: str, crc_ok: bool) -> None:
        payload = prefix + body
        header = _header(payload, shape, dtype=dtype, crc32=None if crc_ok else zlib.crc32(payload) ^ 1)
        try:
            out = decode_tensor(header, payload)
        except InvalidInput:
            return
        assert tuple(out.shape) == tuple(shape)
        assert out.dtype == getattr(torch, dtype)

    check()


def test_fuzz_valid_frames_with_random_values_round_trip() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None, database=None)
    @hypothesis.given(
        values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=20),
        chunk=st.integers(min_value=1, max_value=40),
    )
    def check(values: list[float], chunk: int) -> None:
        tensor = torch.tensor(values, dtype=torch.float32)
        header, payload = encode_tensor(NAME, tensor)
        asm = FrameAssembler(expected_of({NAME: tensor}))
        done = asm.tensor(header)
        for piece in pieces(payload, chunk_bytes=chunk):
            assert done is None
            done = asm.data(piece)
        assert done is not None
        assert torch.equal(done[1], tensor)
        asm.finish()

    check()
