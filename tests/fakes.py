"""Test doubles that subclass the ports (never ``unittest.mock``), and log surgery for tests.

* ``FastCrypto`` (the Crypto port's twin, adapters/memory/crypto.py, imported here for the many
  tests that name it from here): the real AES-256-GCM, ML-DSA-65 and ML-KEM-768 (a ``PqCrypto``
  it holds), but Argon2id at the smallest cost whatever
  the header asks for. Salt and passcode still go through Argon2id, so a wrong passcode or a
  different salt still gives another key; only the time spent changes.
* ``DeterministicCrypto``: ``FastCrypto`` whose randomness (keys, nonces, chain ids, signing
  keypairs) and signatures are a function of a seed, so that two runs with the same seed write
  byte-identical logs.
* ``LatestEvents``: an indexer that keeps the newest event of each object (to read payloads).
* ``frames`` / ``rewrite_meta``: read the record frames of a raw log and edit a record's meta
  in place with a valid frame CRC - what an attacker who knows the format can do (a plain byte
  flip is caught by the CRC before the chain ever sees it).
"""

from __future__ import annotations

import random
import socket
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.crypto import NONCE
from adapters.memory.crypto import FAST_KDF as FAST_KDF  # re-exported: tests name it here
from adapters.memory.crypto import FastCrypto as FastCrypto
from adapters.redolog_format import FRAME_HEAD, FRAME_PREFIX, FRAME_SIZE, HEADER_FIXED, U32
from domain.chain import ChainIndex, Located

# ML-DSA keygen and signing draw from the OS; a process-wide memo makes them a function of
# (seed, n) and (secret, message) so that equal seeds give equal logs within one test run.
_KEYPAIRS: dict[tuple[int, int], tuple[bytes, bytes]] = {}
_SIGNATURES: dict[tuple[bytes, bytes], bytes] = {}
# ML-KEM keygen and encapsulation draw from the OS too: memoised by (seed, n) and
# (seed, n, public) in the same way
_KEM_KEYPAIRS: dict[tuple[int, int], tuple[bytes, bytes]] = {}
_ENCAPSULATIONS: dict[tuple[int, int, bytes], tuple[bytes, bytes]] = {}


class DeterministicCrypto(FastCrypto):
    """``FastCrypto`` whose every random choice follows ``seed`` (for determinism tests)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self._rng = random.Random(seed)
        self._keypairs = 0
        self._kem_keypairs = 0
        self._encapsulations = 0

    def random(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = self.random(NONCE)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)

    def sign_keypair(self) -> tuple[bytes, bytes]:
        slot = (self.seed, self._keypairs)
        self._keypairs += 1
        pair = _KEYPAIRS.get(slot)
        if pair is None:
            pair = _KEYPAIRS[slot] = super().sign_keypair()
        return pair

    def kem_keypair(self) -> tuple[bytes, bytes]:
        slot = (self.seed, self._kem_keypairs)
        self._kem_keypairs += 1
        pair = _KEM_KEYPAIRS.get(slot)
        if pair is None:
            pair = _KEM_KEYPAIRS[slot] = super().kem_keypair()
        return pair

    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        slot = (self.seed, self._encapsulations, public)
        self._encapsulations += 1
        out = _ENCAPSULATIONS.get(slot)
        if out is None:
            out = _ENCAPSULATIONS[slot] = super().kem_encapsulate(public)
        return out

    def sign(self, secret: bytes, message: bytes) -> bytes:
        sig = _SIGNATURES.get((secret, message))
        if sig is None:
            sig = _SIGNATURES[(secret, message)] = super().sign(secret, message)
        return sig


class LatestEvents:
    """An ``Indexer`` that remembers the newest event of every live object, so that tests can
    read each object's payload back (``ChainIndex`` keeps only locators)."""

    def __init__(self) -> None:
        self.events: dict[int, Located] = {}

    def on_event(self, index: ChainIndex, ev: Located, change: tuple[str, int] | None) -> None:
        if change is None:
            return
        what, key = change
        if what == "put":
            self.events[key] = ev
        else:  # a tombstone deletes the object and everything below it
            self.events = {k: e for k, e in self.events.items() if k in index.objects}


# --- log surgery -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    """One record frame of a raw log (see docs/adr/0003-redo-log-format.md)."""

    position: int
    flags: int
    fmt: int
    meta: bytes
    data_offset: int
    data_len: int

    @property
    def meta_offset(self) -> int:
        return self.position + FRAME_SIZE

    @property
    def end(self) -> int:
        return self.data_offset + self.data_len

    @property
    def commit(self) -> bool:
        return bool(self.flags & 0x01)


def header_end(raw: bytes | bytearray) -> int:
    body_len: int = HEADER_FIXED.unpack_from(raw, 0)[2]
    return HEADER_FIXED.size + body_len + U32.size


def frames(raw: bytes | bytearray) -> list[Frame]:
    """Every frame of an intact log, in order."""
    out: list[Frame] = []
    pos = header_end(raw)
    while pos < len(raw):
        _, flags, fmt, meta_len, data_len, _, _ = FRAME_HEAD.unpack_from(raw, pos)
        meta = bytes(raw[pos + FRAME_SIZE : pos + FRAME_SIZE + meta_len])
        data_offset = pos + FRAME_SIZE + meta_len
        out.append(Frame(pos, flags, fmt, meta, data_offset, data_len))
        pos = data_offset + data_len
    return out


def fix_crc(raw: bytearray, position: int) -> None:
    """Recompute the CRC of the frame at ``position`` after its head or meta was edited."""
    prefix = bytes(raw[position : position + FRAME_PREFIX.size])
    meta_len = FRAME_HEAD.unpack_from(raw, position)[3]
    meta = bytes(raw[position + FRAME_SIZE : position + FRAME_SIZE + meta_len])
    U32.pack_into(raw, position + FRAME_PREFIX.size, zlib.crc32(meta, zlib.crc32(prefix)))


def rewrite_meta(raw: bytearray, frame: Frame, meta: bytes) -> None:
    """Replace ``frame``'s meta with ``meta`` of the same length and fix the frame's CRC."""
    if len(meta) != len(frame.meta):
        raise ValueError("rewrite_meta keeps every offset: the new meta must be as long")
    raw[frame.meta_offset : frame.meta_offset + len(meta)] = meta
    fix_crc(raw, frame.position)


# --- state comparison (compaction, checkpoints) --------------------------------------------------
def _normal(value: object) -> object:
    """Locators replaced by the hashes they name (positions change when a log is rewritten;
    the bytes they point at must not)."""
    from application.ports import DataRef

    if isinstance(value, DataRef):
        return ("data", value.data_hash, value.length)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_normal(v) for v in value)
    return value


def chain_state(session: object, view: object) -> dict[str, object]:
    """Everything a replay materialises, independent of where records lie in the log: the chain
    index's objects (without positions), its public keys, and every field of the view (page
    locators as the hashes of the data they name)."""
    import dataclasses

    index = session.index  # type: ignore[attr-defined]
    objects = {k: (o.parent, o.collection, o.auth, o.type_name) for k, o in index.objects.items()}
    children = {k: frozenset(index.children_of(k)) for k in index.children}
    out: dict[str, object] = {
        "objects": objects,
        "children": children,
        "public_keys": dict(index.public_keys),
    }
    for f in dataclasses.fields(view):  # type: ignore[arg-type]
        value = _normal(getattr(view, f.name))
        if isinstance(value, dict):
            # a count that went back to 0, a page table emptied by a truncation: a replay of
            # another history (a compacted log) does not leave these behind; they mean nothing
            value = {k: v for k, v in value.items() if v or v is None or f.name == "dirs"}
        out[f"view.{f.name}"] = value
    return out


def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on (just released: nothing answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
