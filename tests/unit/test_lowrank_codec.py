"""The `lowrank` encoding: best rank-r factors in bfloat16, blocks of whole rows, the int8 fallback,
hostile blocks and headers, error feedback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strata import codec, lowrank_codec
from strata.codec import Codec, CodecError, decode, decode_block, encode
from strata.errors import InvalidInput
from strata.feedback import with_feedback
from strata.frames import check_header, decode_tensor, header_of


def _low_rank(m: int, n: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) * 1e-3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape", [(64, 48), (300, 20), (2, 30, 40)], ids=str)
def test_a_matrix_of_the_codecs_rank_comes_back_up_to_bfloat16_rounding(shape: tuple[int, ...]) -> None:
    x = _low_rank(int(np.prod(shape[:-1])), shape[-1], 4).reshape(shape)
    enc = encode(x, Codec("lowrank", rank=4))
    assert enc.encoding == "lowrank" and enc.group_elements == shape[-1]
    m, n = lowrank_codec.matrix_shape(shape) or (0, 0)
    assert enc.payload_bytes < 2 * 4 * (m + n) + 200  # r(m + n) bfloat16 values, compressed
    assert _rel(decode(enc), x) < 1e-2


def test_the_factors_are_the_best_rank_r_approximation() -> None:
    """Eckart–Young: no rank-r matrix is closer than the truncated SVD; the randomised one is as close."""
    g = torch.Generator().manual_seed(3)
    x = _low_rank(200, 80, 6, seed=1) + torch.randn(200, 80, generator=g) * 2e-5
    p, q = lowrank_codec.factors(x, 6)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    best = (u[:, :6] * s[:6]) @ vh[:6]
    assert float((p @ q.T - x).norm()) <= float((best - x).norm()) * 1.001
    assert float(p.norm()) == pytest.approx(float(q.norm()), rel=1e-3)  # √Σ on each side
    # seeded: the same input gives the same bytes, and torch's global generator is not touched
    state = torch.get_rng_state()
    assert encode(x, Codec("lowrank", rank=6)).blocks == encode(x, Codec("lowrank", rank=6)).blocks
    assert torch.equal(state, torch.get_rng_state())


def test_vectors_and_matrices_too_small_to_gain_go_as_int8() -> None:
    for shape in [(384,), (2, 384), (16, 16)]:
        x = torch.randn(shape) * 1e-3
        enc = encode(x, Codec("lowrank", rank=8))
        assert enc.encoding == "int8", shape
        torch.testing.assert_close(decode(enc), decode(encode(x, Codec("int8"))))
    assert lowrank_codec.worth_it((384, 384), 8) and not lowrank_codec.worth_it((384, 384), 96)


def test_a_matrix_too_large_for_one_block_travels_in_bands_of_whole_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lowrank_codec, "MAX_BLOCK", 40 * 32)  # 40 rows of 32 per block
    x = _low_rank(130, 32, 3)
    enc = encode(x, Codec("lowrank", rank=3))
    assert len(enc.blocks) == 4 and enc.block_elements == 40 * 32
    assert _rel(decode(enc), x) < 1e-2
    # each band decodes alone: the last one (10 rows) to exactly its rows of the whole
    raw = codec.decompress(enc.blocks[-1], codec.decoded_bound("lowrank", 10 * 32, 32))
    torch.testing.assert_close(decode_block(raw, "lowrank", 10 * 32, 32), decode(enc).reshape(-1)[120 * 32 :])


def test_a_frame_round_trips_and_a_lying_header_is_refused() -> None:
    x = _low_rank(50, 24, 2)
    enc = encode(x, Codec("lowrank", rank=2))
    header = header_of("w", x, enc)
    payload = b"".join(enc.blocks)
    torch.testing.assert_close(decode_tensor(header, payload), decode(enc))
    header.group_elements = 12  # rows of another width than the shape's
    with pytest.raises(InvalidInput, match="do not match the shape"):
        check_header(header, None)
    vec = header_of("v", torch.zeros(6), enc)
    vec.shape[:] = [1200]
    with pytest.raises(InvalidInput, match="do not match the shape"):
        check_header(vec, None)


@pytest.mark.parametrize(
    ("raw", "n", "cols", "message"),
    [
        (b"\1\0", 8, 4, "without its rank"),
        (np.array([5], "<u4").tobytes(), 8, 4, "claims rank 5"),
        (np.array([1], "<u4").tobytes() + b"\0" * 4, 8, 4, "decodes to 8 bytes, 16 expected"),
        (b"", 9, 4, "not whole rows"),
    ],
)
def test_hostile_low_rank_blocks_are_refused(raw: bytes, n: int, cols: int, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_block(raw, "lowrank", n, cols)


def test_rank_zero_is_a_zero_block_and_the_rank_is_validated() -> None:
    assert torch.equal(decode_block(np.array([0], "<u4").tobytes(), "lowrank", 8, 4), torch.zeros(8))
    for bad in (0, 1025):
        with pytest.raises(ValueError, match="rank must be"):
            Codec("lowrank", rank=bad)


def test_error_feedback_sends_a_full_rank_delta_over_rounds() -> None:
    """A full-rank delta sent again and again at rank 4: what is sent plus what is held back is exactly
    what was produced, and the held-back part stays bounded, so the sent sum converges to the true one."""
    g = torch.Generator().manual_seed(5)
    delta = {"w": torch.randn(120, 40, generator=g) * 1e-3}
    c = Codec("lowrank", rank=4)
    residual: dict[str, torch.Tensor] = {}
    sent = torch.zeros(120, 40)
    errors = []
    for t in range(1, 61):
        enc, residual = with_feedback(delta, residual, c)
        sent += decode(enc["w"])
        torch.testing.assert_close(sent + residual["w"], t * delta["w"], atol=1e-5, rtol=1e-4)
        errors.append(_rel(sent, t * delta["w"]))
    plain = _rel(decode(encode(delta["w"], c)), delta["w"])
    assert errors[-1] < plain / 3 and errors[-1] < errors[19]
