"""What may stand where in a transaction (an allow-list), and what a signature covers.

Every transaction that crosses the wire - a client's commit to the server, a record the server
streams to a replica - is checked against the same allow-list, by the server and by every
replica, before anything else looks at it (docs/adr/0015-trust-allow-list.md):

- an *event* carries exactly one ``DataKey`` or ``Tombstone`` (it writes or deletes one object;
  nothing else may change a chain), and otherwise only the kinds in ``EVENT_KINDS``;
- a *seal* (the last record) carries only ``Signature``s (at most one per key) and a
  ``Timestamp``; a transaction with no events (an attestation of the chain's head) needs a
  signature;
- the replica bookkeeping kinds (``LocalSeal``, ``Origin``, ``Uploaded``) never cross the wire:
  they are allowed on the seals of a local log only;
- every field is within its bounds (key hashes of 32 bytes, nonces and names short, keys and
  signatures of bounded size), so that no peer can make another hold or hash absurd values.

What a signature covers (``signed_digest``): the chain's id, the ordered hashes of the
transaction's events and their count, and the seal's own metadata apart from the signatures and
the local bookkeeping - so that no event can be added, removed, moved or copied to another chain,
and no seal field can be changed or added, without breaking every signature. An attestation (no
events) covers the head of the chain's hash chain instead of events. Chains created before
version 2 of the chain header were signed over the events only (``transaction_digest``): their
signatures stay valid (``legacy``), since the only seal field a wire seal may carry besides
signatures is its timestamp, which can only make a transaction be refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from domain.errors import MalformedEvent
from domain.events import (
    Authorization,
    Chunk,
    Confidentiality,
    DataKey,
    EncryptedPrivateKey,
    EventHeader,
    LocalSeal,
    Meta,
    Nonce,
    Origin,
    Parent,
    PublicKey,
    ReadSpecific,
    Signature,
    Timestamp,
    Tombstone,
    Type,
    Uploaded,
    WriteAny,
    WriteSpecific,
    encode_meta,
)
from domain.formats import Format
from domain.hashing import DIGEST_SIZE, hasher

#: the kinds an event may carry (one of DataKey or Tombstone is required)
EVENT_KINDS: frozenset[type[Any]] = frozenset(
    {
        DataKey,
        Tombstone,
        Authorization,
        Confidentiality,
        Parent,
        Timestamp,
        PublicKey,
        EncryptedPrivateKey,
        Type,
        Chunk,
        Nonce,
    }
)
#: the kinds a seal that crosses the wire may carry
WIRE_SEAL_KINDS: frozenset[type[Any]] = frozenset({Signature, Timestamp})
#: replica bookkeeping: on the seals of a local log only, never on the wire
BOOKKEEPING_KINDS: frozenset[type[Any]] = frozenset({LocalSeal, Origin, Uploaded})
LOCAL_SEAL_KINDS: frozenset[type[Any]] = WIRE_SEAL_KINDS | BOOKKEEPING_KINDS
#: seal kinds no signature covers (the signatures themselves, and local bookkeeping)
_UNSIGNED_SEAL_KINDS: frozenset[type[Any]] = frozenset({Signature}) | BOOKKEEPING_KINDS

# bounds of fields (bytes unless said otherwise)
MAX_PUBLIC_KEY = 4096  # ML-DSA-87 public keys are 2,592 bytes
MAX_SIGNATURE = 8192  # ML-DSA-87 signatures are 4,627 bytes
MAX_WRAPPED = 4096
MAX_NONCE = 64
MAX_TYPE_NAME = 64
MAX_ANY_KEYS = 256
MAX_SKIPPED = 1_000_000
MAX_U63 = 2**63 - 1


def event_shape(hdr: EventHeader) -> None:
    """The allow-list of an event (not a seal); ``MalformedEvent`` with the reason."""
    for m in hdr.meta:
        if type(m) not in EVENT_KINDS:
            raise MalformedEvent(f"{type(m).__name__} is not allowed in an event")
        _bounds(m)
    if (hdr.find(DataKey) is None) == (hdr.find(Tombstone) is None):
        raise MalformedEvent("an event must write (Data) or delete (Tombstone) exactly one object")


def seal_shape(seal: EventHeader, *, events: int, local: bool) -> None:
    """The allow-list of a seal: ``local`` for a seal of a local log (bookkeeping allowed)."""
    allowed = LOCAL_SEAL_KINDS if local else WIRE_SEAL_KINDS
    keys: set[bytes] = set()
    for m in seal.meta:
        if type(m) not in allowed:
            if isinstance(m, LocalSeal):
                raise MalformedEvent(
                    "a local seal is never accepted from the wire (it proves knowledge of the"
                    " read key only): seal the transaction with a signature"
                )
            if type(m) in BOOKKEEPING_KINDS:
                raise MalformedEvent(
                    f"{type(m).__name__} is a replica's own bookkeeping and never crosses the wire"
                )
            where = "a seal" if local else "a seal from the wire"
            raise MalformedEvent(f"{type(m).__name__} is not allowed on {where}")
        _bounds(m)
        if isinstance(m, Signature):
            if m.public_key_hash in keys:
                raise MalformedEvent("a seal carries two signatures of one key")
            keys.add(m.public_key_hash)
    if not events and not keys and not local:
        raise MalformedEvent("a transaction without events must carry a signature")


def transaction_shape(events: Iterable[EventHeader], seal: EventHeader, *, local: bool) -> None:
    n = 0
    for hdr in events:
        event_shape(hdr)
        n += 1
    seal_shape(seal, events=n, local=local)


def _hash32(value: bytes, what: str) -> None:
    if len(value) != DIGEST_SIZE:
        raise MalformedEvent(f"{what} must be {DIGEST_SIZE} bytes, not {len(value)}")


def _bounds(m: Meta) -> None:
    if isinstance(m, Timestamp):
        if not 0 <= m.ms <= MAX_U63:
            raise MalformedEvent("timestamp out of range")
    elif isinstance(m, Signature):
        _hash32(m.public_key_hash, "a signature's key hash")
        _hash32(m.digest, "a signature's digest")
        if not 0 < len(m.signature) <= MAX_SIGNATURE:
            raise MalformedEvent("a signature of impossible size")
    elif isinstance(m, PublicKey):
        if not 0 < len(m.key) <= MAX_PUBLIC_KEY:
            raise MalformedEvent("a public key of impossible size")
    elif isinstance(m, Confidentiality):
        _hash32(m.key_hash, "a read key hash")
        if not 0 < len(m.wrapped_key) <= MAX_WRAPPED:
            raise MalformedEvent("a wrapped key of impossible size")
    elif isinstance(m, EncryptedPrivateKey):
        _hash32(m.public_key_hash, "a key hash")
        _hash32(m.key_hash, "a read key hash")
        if len(m.wrapped) > MAX_WRAPPED:
            raise MalformedEvent("a wrapped private key of impossible size")
    elif isinstance(m, Nonce):
        if not 0 < len(m.value) <= MAX_NONCE:
            raise MalformedEvent("a nonce of impossible size")
    elif isinstance(m, Type):
        if not 0 < len(m.name) <= MAX_TYPE_NAME:
            raise MalformedEvent("a type name of impossible length")
    elif isinstance(m, Chunk):
        if m.index > MAX_U63:
            raise MalformedEvent("chunk index out of range")
    elif isinstance(m, Authorization):
        for opt in (m.read, m.write):
            if isinstance(opt, ReadSpecific | WriteSpecific):
                _hash32(opt.key_hash, "an authorised key hash")
            elif isinstance(opt, WriteAny):
                if not 0 < len(opt.key_hashes) <= MAX_ANY_KEYS:
                    raise MalformedEvent("an authorisation names too many or no keys")
                for kh in opt.key_hashes:
                    _hash32(kh, "an authorised key hash")
    elif isinstance(m, Origin) and len(m.skipped) > MAX_SKIPPED:
        raise MalformedEvent("too many skipped objects")


# --- what a signature covers ---------------------------------------------------------------------
def signed_seal_meta(seal: Sequence[Meta]) -> list[Meta]:
    """The part of a seal's metadata that its signatures cover."""
    return [m for m in seal if type(m) not in _UNSIGNED_SEAL_KINDS]


def signed_digest(
    chain_id: bytes, event_hashes: Iterable[bytes], seal: Sequence[Meta], head: bytes = b""
) -> bytes:
    """What a signature (or a local seal) of a transaction covers, in chain-header version 2:
    the chain id, the ordered event hashes and their count, and the seal's signed metadata
    (canonically encoded, whatever format the seal's record is in). A transaction without events
    is an attestation: it covers ``head``, the chain's head before it, instead."""
    state = hasher()
    state.update(b"wasmer-dfs/tx/v2\0")
    state.update(len(chain_id).to_bytes(2, "little") + chain_id)
    count = 0
    for eh in event_hashes:
        state.update(eh)
        count += 1
    state.update(count.to_bytes(8, "little"))
    if not count:
        state.update(b"attest\0" + head)
    covered = encode_meta(signed_seal_meta(seal), Format.BINCODE)
    state.update(len(covered).to_bytes(8, "little") + covered)
    digest: bytes = state.digest()
    return digest
