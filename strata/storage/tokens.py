"""Worker and read tokens are stored only as SHA-256 hashes; both services hash the same way."""

from __future__ import annotations

import hashlib


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
