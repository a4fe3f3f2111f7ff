"""The delta codec: round trips per encoding, block layout, hostile blocks, error feedback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from strata import codec
from strata.codec import Codec, CodecError, decode, decode_block, encode
from strata.feedback import with_feedback

SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4), (0,), (4, 0), (1000, 37), (5000,)]


def _rand(shape: tuple[int, ...], seed: int = 0, scale: float = 1e-3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("block", [1 << 20, 64])
def test_fp32_is_exact(shape: tuple[int, ...], block: int) -> None:
    x = _rand(shape)
    enc = encode(x, Codec("fp32", block_elements=block))
    assert len(enc.blocks) == codec.num_blocks(x.numel(), enc.block_elements)
    assert torch.equal(decode(enc), x)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("block", [1 << 20, 64])
def test_bf16_rounds_each_value_to_bfloat16(shape: tuple[int, ...], block: int) -> None:
    x = _rand(shape)
    y = decode(encode(x, Codec("bf16", block_elements=block)))
    assert torch.equal(y, x.to(torch.bfloat16).to(torch.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("block", [1 << 20, 64])
def test_int8_error_is_at_most_half_a_step_of_its_group(shape: tuple[int, ...], block: int) -> None:
    x = _rand(shape)
    enc = encode(x, Codec("int8", block_elements=block))
    y = decode(enc)
    assert y.shape == x.shape
    if x.numel() == 0:
        return
    g = enc.group_elements
    flat, out = x.reshape(-1), y.reshape(-1)
    for start in range(0, flat.numel(), g):
        grp = flat[start : start + g]
        step = float(grp.abs().max()) / 127
        assert float((grp - out[start : start + g]).abs().max()) <= step / 2 * (1 + 1e-5) + 1e-12


def test_int8_groups_are_rows_for_matrices() -> None:
    assert codec.group_size((30522, 384)) == 384
    assert codec.group_size((384,)) == codec.DEFAULT_GROUP
    assert codec.group_size((4, 100_000)) == codec.DEFAULT_GROUP
    assert codec.group_size(()) == 1
    # blocks hold whole rows
    enc = encode(_rand((1000, 384)), Codec("int8", block_elements=10_000))
    assert enc.block_elements % 384 == 0


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (1000, 37), (5000,)], ids=str)
def test_topk_keeps_the_largest_entries_per_block(fraction: float, shape: tuple[int, ...]) -> None:
    x = _rand(shape, seed=3)
    enc = encode(x, Codec("topk", topk_fraction=fraction, block_elements=1 << 20))
    y = decode(enc).reshape(-1)
    flat = x.reshape(-1)
    kept = y != 0
    k = codec.topk_count(flat.numel(), fraction)
    assert int(kept.sum()) == k
    assert torch.equal(y[kept], flat[kept].to(torch.bfloat16).float())
    if k < flat.numel():
        assert float(flat[~kept].abs().max()) <= float(flat[kept].abs().min())


def test_lossy_encodings_shrink_real_looking_deltas() -> None:
    x = _rand((2000, 256), seed=5)
    raw = x.numel() * 4
    ratio = {e: raw / encode(x, Codec(e)).payload_bytes for e in codec.ENCODINGS}
    assert ratio["bf16"] > 1.8 and ratio["int8"] > 3.5 and ratio["topk"] > 12
    assert ratio["fp32"] >= 1.0


@pytest.mark.parametrize(
    ("encoding", "raw", "n", "message"),
    [
        ("fp32", b"\0" * 7, 2, "decodes to 7 bytes"),
        ("bf16", b"\0" * 5, 2, "decodes to 5 bytes"),
        ("int8", b"\0" * 4 + b"\1", 2, "decodes to 5 bytes"),
        ("int8", np.array([-1.0], "<f4").tobytes() + b"\1\1", 2, "invalid int8 scale"),
        ("int8", np.array([np.nan], "<f4").tobytes() + b"\1\1", 2, "invalid int8 scale"),
        ("topk", b"\1\0", 4, "without its count"),
        ("topk", np.array([9], "<u4").tobytes(), 4, "claims 9 entries of 4"),
        ("topk", np.array([1], "<u4").tobytes(), 4, "decodes to 4 bytes"),
        (
            "topk",
            np.array([1], "<u4").tobytes() + codec.shuffle(np.array([4], "<u4")) + b"\0\0",
            4,
            "out of range",
        ),
        (
            "topk",
            np.array([2], "<u4").tobytes() + codec.shuffle(np.array([1, 0], "<u4")) + b"\0" * 4,
            4,
            "not strictly increasing",
        ),
        ("nope", b"", 1, "unknown encoding"),
    ],
)
def test_hostile_blocks_are_refused(encoding: str, raw: bytes, n: int, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_block(raw, encoding, n, 2 if encoding == "int8" else 1)


def test_decompress_never_exceeds_its_bound() -> None:
    bomb = codec.compress(bytes(10 << 20), 3)
    with pytest.raises(CodecError, match="expands beyond"):
        codec.decompress(bomb, 16)
    with pytest.raises(CodecError, match="corrupt"):
        codec.decompress(b"\x28\xb5\x2f\xfd garbage", 16)
    flipped = bytearray(codec.compress(b"abc" * 100, 3))
    flipped[-2] ^= 0xFF  # zstd's own checksum catches a corrupted block
    with pytest.raises(CodecError):
        codec.decompress(bytes(flipped), 300)


def test_codec_validates_its_parameters() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        Codec("int4")
    with pytest.raises(ValueError, match="topk_fraction"):
        Codec("topk", topk_fraction=0)
    with pytest.raises(ValueError, match="block_elements"):
        Codec(block_elements=0)


@pytest.mark.parametrize("encoding", ["bf16", "int8", "topk"])
def test_error_feedback_delays_the_error_instead_of_losing_it(encoding: str) -> None:
    """Sending the same delta R times: with feedback the decoded sum tracks the true sum."""
    c = Codec(encoding, topk_fraction=0.1)
    delta = {"w": _rand((300, 64), seed=7)}
    true_sum = torch.zeros(300, 64)
    sent_ef, sent_plain = torch.zeros(300, 64), torch.zeros(300, 64)
    residual: dict[str, torch.Tensor] = {}
    rounds = 30
    for _ in range(rounds):
        true_sum += delta["w"]
        enc, residual = with_feedback(delta, residual, c)
        sent_ef += decode(enc["w"])
        sent_plain += decode(encode(delta["w"], c))
        # the invariant: what was sent plus what is held back is exactly what was produced
        torch.testing.assert_close(sent_ef + residual["w"], true_sum, atol=1e-5, rtol=1e-5)
    err_ef = float((sent_ef - true_sum).norm() / true_sum.norm())
    err_plain = float((sent_plain - true_sum).norm() / true_sum.norm())
    assert err_ef < err_plain
    assert err_ef < 0.2  # only the last residual is missing: it shrinks relative to the sum as rounds go on


def test_lossless_encoding_keeps_no_residual_and_stale_residuals_are_ignored() -> None:
    enc, residual = with_feedback({"w": torch.ones(3)}, {"w": torch.ones(5)}, Codec("fp32"))
    assert residual == {} and torch.equal(decode(enc["w"]), torch.ones(3))


def test_fuzz_decode_block_raises_only_codec_errors() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(
        raw=st.binary(max_size=200), encoding=st.sampled_from(codec.ENCODINGS), n=st.integers(1, 40)
    )
    def run(raw: bytes, encoding: str, n: int) -> None:
        try:
            out = decode_block(raw, encoding, n, 1)
        except CodecError:
            return
        assert out.numel() == n and out.dtype == torch.float32

    run()


def test_block_counts() -> None:
    assert codec.num_blocks(0, 10) == 0
    assert codec.num_blocks(10, 10) == 1
    assert codec.num_blocks(11, 10) == 2
    assert codec.block_layout(100, 7) == 98
    assert codec.block_layout(5, 7) == 7
    assert math.isclose(codec.decoded_bound("int8", 10, 3), 4 * 4 + 10)
