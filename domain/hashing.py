"""Hashes of the datachain: SHA-256 (hardware-accelerated here: ~1.7 GB/s, against ~0.4 GB/s for
BLAKE2b), each use domain-separated by a prefix; keyed hashes are HMAC-SHA-256. 256-bit digests
keep a 128-bit margin against quantum search."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from hashlib import sha256
from typing import Any

DIGEST_SIZE = 32
EMPTY_HASH = sha256(b"").digest()


def sha256_of(data: bytes) -> bytes:
    """The SHA-256 digest of ``data`` (32 bytes): the hash of an event's meta and of its data."""
    return sha256(data).digest()


def hasher() -> Any:
    """An incremental state of ``sha256_of`` (``update``/``digest``)."""
    return sha256()


def event_hash(meta_hash: bytes, data_hash: bytes) -> bytes:
    """H(H(meta) || H(data)), as in the original."""
    return sha256(meta_hash + data_hash).digest()


def transaction_digest(chain_id: bytes, event_hashes: Iterable[bytes]) -> bytes:
    """What one signature or seal covers: the chain's id and the ordered hashes of a
    transaction's events, and their count.

    The chain id is part of the digest so that a transaction copied into another chain never
    validates there; the order and count are part of it so that no event can be added, removed
    or moved.
    """
    state = sha256(b"wasmer-dfs/tx/v1\0")
    state.update(chain_id)
    count = 0
    for eh in event_hashes:
        state.update(eh)
        count += 1
    state.update(count.to_bytes(8, "little"))
    return state.digest()


def key_hash(key: bytes) -> bytes:
    """The public name of a key: used in authorisations and signatures, never the key itself."""
    return sha256(b"wasmer-dfs/key\0" + key).digest()


def derive_u64(*parts: int) -> int:
    """A deterministic 63-bit primary key from other keys (used for file pages)."""
    data = b"".join(p.to_bytes(8, "little", signed=False) for p in parts)
    value = int.from_bytes(sha256(b"wasmer-dfs/pk\0" + data).digest()[:8], "little")
    return (value >> 1) | 2  # never 0 or 1 (reserved)


def chain_head(previous: bytes, event: bytes) -> bytes:
    """The next head of the chain's hash chain: every event extends it, so a signature over
    the head attests to the whole history before it."""
    return sha256(b"wasmer-dfs/head\0" + previous + event).digest()


def genesis_head(chain_id: bytes) -> bytes:
    return sha256(b"wasmer-dfs/genesis\0" + chain_id).digest()


def seal_key(read_key: bytes) -> bytes:
    """The key of local seals, derived from (never equal to) the chain's read key."""
    return hmac.digest(read_key, b"wasmer-dfs/local-seal-key", "sha256")


def local_mac(key: bytes, head: bytes, digest: bytes) -> bytes:
    """The local seal of a transaction whose events follow ``head``."""
    return hmac.digest(key, b"wasmer-dfs/local-seal\0" + head + digest, "sha256")


def checkpoint_key(read_key: bytes) -> bytes:
    """The key that seals a chain's checkpoints, derived from (never equal to) the read key."""
    return hmac.digest(read_key, b"wasmer-dfs/checkpoint-key/v1", "sha256")
