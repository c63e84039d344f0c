"""Hashes of the datachain: BLAKE2b with 256-bit digests (128-bit post-quantum collision margin)."""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

DIGEST_SIZE = 32
EMPTY_HASH = blake2b(b"", digest_size=DIGEST_SIZE).digest()


def h(data: bytes) -> bytes:
    return blake2b(data, digest_size=DIGEST_SIZE).digest()


def event_hash(meta_hash: bytes, data_hash: bytes) -> bytes:
    """H(H(meta) || H(data)), as in the original."""
    return blake2b(meta_hash + data_hash, digest_size=DIGEST_SIZE).digest()


def transaction_digest(chain_id: bytes, event_hashes: Iterable[bytes]) -> bytes:
    """What one signature covers: the chain's id and the ordered hashes of a transaction's events.

    The chain id is part of the digest so that a transaction copied into another chain never
    validates there; the order and count are part of it so that no event can be added, removed
    or moved.
    """
    state = blake2b(b"wasmer-dfs/tx/v1", digest_size=DIGEST_SIZE)
    state.update(chain_id)
    count = 0
    for eh in event_hashes:
        state.update(eh)
        count += 1
    state.update(count.to_bytes(8, "little"))
    return state.digest()


def key_hash(key: bytes) -> bytes:
    """The public name of a key: used in authorisations and signatures, never the key itself."""
    return blake2b(key, digest_size=DIGEST_SIZE, person=b"wdfs-key").digest()


def derive_u64(*parts: int) -> int:
    """A deterministic 63-bit primary key from other keys (used for file pages)."""
    data = b"".join(p.to_bytes(8, "little", signed=False) for p in parts)
    value = int.from_bytes(blake2b(data, digest_size=8, person=b"wdfs-pk").digest(), "little")
    return (value >> 1) | 2  # never 0 or 1 (reserved)


def chain_head(previous: bytes, event: bytes) -> bytes:
    """The next head of the chain's hash chain: every event extends it, so a signature over
    the head attests to the whole history before it."""
    return blake2b(previous + event, digest_size=DIGEST_SIZE, person=b"wdfs-head").digest()


def genesis_head(chain_id: bytes) -> bytes:
    return blake2b(chain_id, digest_size=DIGEST_SIZE, person=b"wdfs-head").digest()


def seal_key(read_key: bytes) -> bytes:
    """The key of local seals, derived from (never equal to) the chain's read key."""
    return blake2b(
        b"local-seal", key=read_key, digest_size=DIGEST_SIZE, person=b"wdfs-seal"
    ).digest()


def local_mac(key: bytes, digest: bytes) -> bytes:
    return blake2b(digest, key=key, digest_size=DIGEST_SIZE, person=b"wdfs-mac").digest()
