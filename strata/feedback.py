"""Error feedback for lossy encodings: what one round's encoding loses is sent in the next rounds.

The worker encodes x = Δ + e and keeps e' = x − decode(encode(x)), so quantisation error is delayed,
not lost: over R rounds the decoded sum differs from the true sum by only the last residual.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from strata import codec
from strata.codec import Codec


def with_feedback(
    delta: Mapping[str, torch.Tensor], residual: Mapping[str, torch.Tensor], c: Codec
) -> tuple[dict[str, codec.Encoded], dict[str, torch.Tensor]]:
    """Encode delta + residual per tensor; return the encodings and the new residual.

    A residual whose shape no longer matches its tensor (another model) is ignored. With a lossless
    encoding the new residual is empty.
    """
    encoded: dict[str, codec.Encoded] = {}
    new_residual: dict[str, torch.Tensor] = {}
    for name, d in delta.items():
        x = d.detach().to("cpu", torch.float32)
        e = residual.get(name)
        if e is not None and e.shape == x.shape:
            x = x + e
        enc, sent = codec.roundtrip(x, c)
        encoded[name] = enc
        if c.lossy:
            new_residual[name] = x - sent.reshape(x.shape)
    return encoded, new_residual
