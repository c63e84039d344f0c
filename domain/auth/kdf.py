"""HKDF-SHA-256 (RFC 5869): turns a KEM shared secret or a password key into independent keys,
each bound to what it is for by ``info``."""

from __future__ import annotations

import hmac

HASH_BYTES = 32
MAX_LENGTH = 255 * HASH_BYTES


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """``length`` bytes of output keying material from input keying material ``ikm``.

    An empty ``salt`` means HashLen zeros, as the RFC says; ``length`` is at most 8160."""
    if not 0 < length <= MAX_LENGTH:
        raise ValueError(f"HKDF length {length} outside 1..{MAX_LENGTH}")
    prk = hmac.digest(salt or bytes(HASH_BYTES), ikm, "sha256")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]
