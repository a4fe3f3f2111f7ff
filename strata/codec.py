"""Delta codec: fp32, bf16, int8 (absmax scale per group), top-k and low-rank factors (strata.lowrank_codec),
each byte-shuffled and zstd-compressed in independent blocks of about 1M elements. Pure functions of tensors and bytes; no I/O.

Every decoder is given the largest output its block may have (from the header's shape, never from the
payload) and refuses anything else, so a corrupt or hostile block cannot make it allocate more.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

from strata import lowrank_codec
from strata.names import DEFAULT_LOWRANK_RANK, ENCODINGS  # noqa: E402 - re-exported

LOSSLESS = frozenset({"fp32"})
BLOCK_ELEMENTS = 1 << 18  # 1 MB of fp32: a block in flight per upload stays small
MAX_GROUP = 8192
DEFAULT_GROUP = 512


class CodecError(ValueError):
    """A block that cannot be decoded as its header says (the caller adds the tensor's name)."""


@dataclass(frozen=True, slots=True)
class Codec:
    """How to encode: the encoding, the top-k share, the zstd level, the block size and the low-rank rank."""

    encoding: str = "fp32"
    topk_fraction: float = 0.1
    level: int = 1
    block_elements: int = BLOCK_ELEMENTS
    rank: int = DEFAULT_LOWRANK_RANK

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError("topk_fraction must be in (0, 1]")
        if self.block_elements < 1:
            raise ValueError("block_elements must be positive")
        if not 1 <= self.rank <= lowrank_codec.MAX_RANK:
            raise ValueError(f"rank must be in [1, {lowrank_codec.MAX_RANK}]")

    @property
    def lossy(self) -> bool:
        return self.encoding not in LOSSLESS


def group_size(shape: tuple[int, ...]) -> int:
    """int8 scale groups: a row (the last dimension) when it is of a sensible length, else 512 elements."""
    if not shape:
        return 1
    last = shape[-1]
    return last if 1 <= last <= MAX_GROUP and len(shape) >= 2 else DEFAULT_GROUP


def block_layout(block_elements: int, group: int) -> int:
    """Elements per block: whole groups, about block_elements of them."""
    return max(group, (block_elements // group) * group)


def num_blocks(numel: int, block_elements: int) -> int:
    return math.ceil(numel / block_elements) if numel else 0


# ---------------------------------------------------------------- byte shuffling


def shuffle(a: np.ndarray) -> bytes:
    """Split the bytes of each element into planes (all first bytes, then all second bytes, ...)."""
    size = a.dtype.itemsize
    if size == 1:
        return a.tobytes()
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, size).T).tobytes()


def unshuffle(buf: bytes | memoryview, dtype: np.dtype, n: int) -> np.ndarray:
    """Undo shuffle(): each byte plane is copied into its place in the elements, one strided pass per
    plane into a fresh array (no temporaries: about twice as fast as shifts and ors)."""
    size = np.dtype(dtype).itemsize
    raw = np.frombuffer(buf, dtype=np.uint8, count=n * size)
    if size == 1:
        return raw.view(dtype).copy()
    out = np.empty(n, dtype=np.dtype(dtype).newbyteorder("<"))
    lanes = out.view(np.uint8).reshape(n, size)
    for i, plane in enumerate(raw.reshape(size, n)):
        lanes[:, i] = plane
    return out


def _bf16_planes_to_f32(buf: bytes | memoryview, n: int) -> torch.Tensor:
    """Shuffled bfloat16 values to float32: the planes interleaved back into bfloat16s, then torch's
    vectorised widening (a bfloat16 is the top half of a float32)."""
    return torch.from_numpy(unshuffle(buf, np.dtype("<i2"), n)).view(torch.bfloat16).float()


# ---------------------------------------------------------------- encoders (one block of flat fp32 values)


def _bf16_bits(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def topk_count(n: int, fraction: float) -> int:
    return min(n, max(1, math.ceil(fraction * n))) if n else 0


def encode_block(x: torch.Tensor, encoding: str, group: int, fraction: float) -> bytes:
    """The uncompressed, shuffled bytes of one block of flat float32 values."""
    if encoding == "fp32":
        return shuffle(x.numpy())
    if encoding == "bf16":
        return shuffle(_bf16_bits(x))
    if encoding == "int8":
        groups = x.reshape(-1, group) if x.numel() % group == 0 else None
        if groups is None:  # a last, shorter group
            pad = torch.zeros(math.ceil(x.numel() / group) * group, dtype=torch.float32)
            pad[: x.numel()] = x
            groups = pad.reshape(-1, group)
        scale = groups.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = (
            torch.clamp(torch.round(groups / safe[:, None]), -127, 127)
            .to(torch.int8)
            .reshape(-1)[: x.numel()]
        )
        return shuffle(scale.numpy()) + q.numpy().tobytes()
    if encoding == "topk":
        k = topk_count(x.numel(), fraction)
        idx = (
            torch.topk(x.abs(), k, sorted=False).indices.sort().values
            if k < x.numel()
            else torch.arange(x.numel())
        )
        gaps = torch.diff(idx, prepend=torch.zeros(1, dtype=idx.dtype)) if k else idx
        if k:
            gaps[0] = idx[0]
        head = np.array([k], dtype="<u4").tobytes()
        return head + shuffle(gaps.numpy().astype("<u4")) + shuffle(_bf16_bits(x[idx]))
    raise CodecError(f"unknown encoding {encoding!r}")


def decoded_bound(encoding: str, n: int, group: int) -> int:
    """The largest number of bytes a block of n elements may decompress to."""
    if encoding == "fp32":
        return 4 * n
    if encoding == "bf16":
        return 2 * n
    if encoding == "int8":
        return 4 * math.ceil(n / group) + n
    if encoding == "topk":
        return 4 + 6 * n
    if encoding == "lowrank":
        return lowrank_codec.decoded_bound(n, group)
    raise CodecError(f"unknown encoding {encoding!r}")


def decode_block(raw: bytes, encoding: str, n: int, group: int) -> torch.Tensor:
    """Flat float32 values of one block from its decompressed bytes; checks every size and index."""
    if encoding == "fp32":
        _expect(len(raw), 4 * n)
        return torch.from_numpy(unshuffle(raw, np.dtype("<f4"), n))
    if encoding == "bf16":
        _expect(len(raw), 2 * n)
        return _bf16_planes_to_f32(raw, n)
    if encoding == "int8":
        ng = math.ceil(n / group)
        _expect(len(raw), 4 * ng + n)
        scale = torch.from_numpy(unshuffle(raw[: 4 * ng], np.dtype("<f4"), ng))
        q = torch.from_numpy(np.frombuffer(raw, dtype=np.int8, count=n, offset=4 * ng).astype(np.float32))
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise CodecError("invalid int8 scale")
        if n % group == 0:
            return q.reshape(-1, group).mul_(scale[:, None]).reshape(-1)  # in place: q is a fresh array
        return (q.reshape(-1) * torch.repeat_interleave(scale, group)[:n]).contiguous()
    if encoding == "topk":
        if len(raw) < 4:
            raise CodecError("top-k block without its count")
        k = int(np.frombuffer(raw, dtype="<u4", count=1)[0])
        if k > n:
            raise CodecError(f"top-k block claims {k} entries of {n}")
        _expect(len(raw), 4 + 6 * k)
        gaps = unshuffle(memoryview(raw)[4 : 4 + 4 * k], np.dtype("<u4"), k).astype(np.int64)
        if k > 1 and int(gaps[1:].min()) < 1:
            raise CodecError("top-k indices are not strictly increasing")
        idx = np.cumsum(gaps)
        if k and int(idx[-1]) >= n:
            raise CodecError("top-k index out of range")
        values = _bf16_planes_to_f32(memoryview(raw)[4 + 4 * k :], k)
        out = torch.zeros(n, dtype=torch.float32)
        out[torch.from_numpy(idx)] = values
        return out
    if encoding == "lowrank":
        return _decode_lowrank(raw, n, group)
    raise CodecError(f"unknown encoding {encoding!r}")


def _decode_lowrank(raw: bytes, n: int, cols: int) -> torch.Tensor:
    """A block of whole rows: rank r, Qᵀ (r × cols) and the block's rows of P (rows × r), as P Qᵀ."""
    if cols < 1 or n % cols:
        raise CodecError(f"a low-rank block of {n} elements is not whole rows of {cols}")
    rows = n // cols
    if len(raw) < 4:
        raise CodecError("low-rank block without its rank")
    r = int(np.frombuffer(raw, dtype="<u4", count=1)[0])
    if r > min(cols, lowrank_codec.MAX_RANK):
        raise CodecError(f"low-rank block claims rank {r} for rows of {cols}")
    _expect(len(raw), lowrank_codec.block_size(r, rows, cols))
    if not r:
        return torch.zeros(n, dtype=torch.float32)
    view = memoryview(raw)
    qt = _bf16_planes_to_f32(view[4 : 4 + 2 * r * cols], r * cols).reshape(r, cols)
    p = _bf16_planes_to_f32(view[4 + 2 * r * cols :], r * rows).reshape(rows, r)
    return (p @ qt).reshape(-1)


def _expect(got: int, want: int) -> None:
    if got != want:
        raise CodecError(f"block decodes to {got} bytes, {want} expected")


# ---------------------------------------------------------------- blocks <-> zstd


def compress(raw: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(raw)


def decompress(block: bytes | bytearray | memoryview, bound: int) -> bytes:
    """Decompress one zstd frame to at most `bound` bytes, whatever its header claims (no bombs)."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(block, read_across_frames=False)
        raw = reader.read(bound + 1) if bound else reader.read(1)
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt block ({exc})") from None
    if len(raw) > bound:
        raise CodecError(f"block expands beyond the {bound} bytes its shape allows")
    return raw


@dataclass(frozen=True, slots=True)
class Encoded:
    """One tensor encoded: its layout and its compressed blocks."""

    encoding: str
    shape: tuple[int, ...]
    block_elements: int
    group_elements: int
    topk_fraction: float
    blocks: list[bytes]

    @property
    def payload_bytes(self) -> int:
        return sum(len(b) for b in self.blocks)


def encode(tensor: torch.Tensor, codec: Codec) -> Encoded:
    """Encode a tensor block by block (its values as float32). `lowrank` encodes a tensor whose factors
    would not be smaller than its int8 values as int8."""
    flat = tensor.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    shape = tuple(tensor.shape)
    if codec.encoding == "lowrank":
        if lowrank_codec.worth_it(shape, codec.rank):
            return _encode_lowrank(flat, shape, codec)
        codec = dataclasses.replace(codec, encoding="int8")
    group = group_size(shape) if codec.encoding == "int8" else 1
    per = block_layout(codec.block_elements, group)
    blocks = [
        compress(encode_block(flat[s : s + per], codec.encoding, group, codec.topk_fraction), codec.level)
        for s in range(0, flat.numel(), per)
    ]
    return Encoded(codec.encoding, shape, per, group, codec.topk_fraction, blocks)


def _encode_lowrank(flat: torch.Tensor, shape: tuple[int, ...], codec: Codec) -> Encoded:
    mn = lowrank_codec.matrix_shape(shape)
    assert mn is not None
    m, n = mn
    p, q = lowrank_codec.factors(flat.reshape(m, n), codec.rank)
    head = np.array([p.shape[1]], dtype="<u4").tobytes() + shuffle(_bf16_bits(q.T.contiguous()))
    blocks = [
        compress(head + shuffle(_bf16_bits(p[a:b].contiguous())), codec.level)
        for a, b in lowrank_codec.row_bands(m, n)
    ]
    per = lowrank_codec.block_rows(n, m) * n
    return Encoded("lowrank", shape, per, n, codec.topk_fraction, blocks)


def decode(enc: Encoded) -> torch.Tensor:
    """The float32 tensor an Encoded stands for (what the receiver will apply)."""
    numel = math.prod(enc.shape) if enc.shape else 1
    out = torch.empty(numel, dtype=torch.float32)
    for i, block in enumerate(enc.blocks):
        start = i * enc.block_elements
        n = min(enc.block_elements, numel - start)
        raw = decompress(block, decoded_bound(enc.encoding, n, enc.group_elements))
        out[start : start + n] = decode_block(raw, enc.encoding, n, enc.group_elements)
    return out.reshape(enc.shape)


def roundtrip(tensor: torch.Tensor, codec: Codec) -> tuple[Encoded, torch.Tensor]:
    """Encode, and decode again: what a lossy encoding really sends (for error feedback)."""
    enc = encode(tensor, codec)
    return enc, decode(enc)
