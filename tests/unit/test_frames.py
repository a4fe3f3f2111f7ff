"""Unit tests for strata.frames: tensor/file frame encoding and reassembly, and fuzzing. The rejection
paths: tests/unit/test_frame_rejections.py."""

from __future__ import annotations

import zlib

import pytest
import torch

from strata.errors import InvalidInput
from strata.frames import (
    Expected,
    FrameAssembler,
    decode_tensor,
    encode_tensor,
    expected_of,
    file_header,
    pieces,
)
from tests.frame_helpers import NAME, fp32_payload, rejects, tensor_header

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
    rejects(asm.data, b"{}", name="config.json")


def test_assembler_file_over_limit() -> None:
    asm = FrameAssembler(max_file_bytes=10)
    rejects(asm.file, file_header("big.bin", b"x" * 11), name="big.bin")


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
    rejects(asm.tensor, other, name="other")
    asm2 = FrameAssembler()
    asm2.tensor(header)
    rejects(asm2.file, file_header("config.json", b"{}"), name="config.json")


def test_same_tensor_twice() -> None:
    t = torch.randn(3)
    header, payload = encode_tensor(NAME, t)
    asm = FrameAssembler()
    asm.tensor(header)
    asm.data(payload)
    rejects(asm.tensor, header)


def test_same_file_twice() -> None:
    asm = FrameAssembler()
    asm.file(file_header("config.json", b""))
    rejects(asm.file, file_header("config.json", b""), name="config.json")


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
    rejects(asm.finish)


def test_finish_inside_a_file_frame() -> None:
    asm = FrameAssembler()
    asm.file(file_header("vocab.txt", b"abcdef"))
    asm.data(b"abc")
    rejects(asm.finish, name="vocab.txt")


def test_assembler_payload_longer_than_announced() -> None:
    header, payload = encode_tensor(NAME, torch.randn(8))
    asm = FrameAssembler()
    asm.tensor(header)
    msg = rejects(asm.data, payload + b"\x00")
    assert "more payload" in msg


def test_assembler_file_longer_than_announced() -> None:
    asm = FrameAssembler()
    asm.file(file_header("vocab.txt", b"abc"))
    rejects(asm.data, b"abcd", name="vocab.txt")


def test_assembler_checks_header_against_expected_before_payload() -> None:
    model = {NAME: torch.zeros(2, 3)}
    header, _ = encode_tensor(NAME, torch.zeros(3, 2))
    rejects(FrameAssembler(expected_of(model)).tensor, header)


# ---------------------------------------------------------------------------------------------- fuzz


def test_fuzz_random_payload_decodes_or_is_invalid_input() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    zstd_prefix = st.sampled_from([b"", b"\x28\xb5\x2f\xfd", fp32_payload([1.0, 2.0])[:6]])

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
        header = tensor_header(payload, shape, dtype=dtype, crc32=None if crc_ok else zlib.crc32(payload) ^ 1)
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
