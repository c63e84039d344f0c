"""Events of the datachain: a list of metadata plus optional data.

Metadata travels in clear (authenticated by the transaction's signature) because the chain server
must check authorisation without any key; everything a user would call content - names, modes,
link targets, file bytes - lives in the event's data, which is encrypted. See docs/adr/0004.

Versioning: metadata is stored in an envelope ``{"v": N, "meta": [...]}``. ``upcast`` rewrites
the plain builtins of every older version to the current one before they are typed, so old logs
always replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from domain.errors import MalformedEvent
from domain.formats import Format, convert, decode_raw, encode
from domain.hashing import EMPTY_HASH, event_hash, sha256_of

META_VERSION = 1


# --- read and write authorisation -------------------------------------------------------------
class ReadInherit(msgspec.Struct, tag="Inherit", frozen=True, array_like=True):
    pass


class ReadEveryone(msgspec.Struct, tag="Everyone", frozen=True, array_like=True):
    pass


class ReadSpecific(msgspec.Struct, tag="Specific", frozen=True, array_like=True):
    key_hash: bytes


ReadOption = ReadInherit | ReadEveryone | ReadSpecific


class WriteInherit(msgspec.Struct, tag="Inherit", frozen=True, array_like=True):
    pass


class WriteEveryone(msgspec.Struct, tag="Everyone", frozen=True, array_like=True):
    pass


class WriteNobody(msgspec.Struct, tag="Nobody", frozen=True, array_like=True):
    pass


class WriteSpecific(msgspec.Struct, tag="Specific", frozen=True, array_like=True):
    key_hash: bytes


class WriteAny(msgspec.Struct, tag="Any", frozen=True, array_like=True):
    key_hashes: list[bytes]


WriteOption = WriteInherit | WriteEveryone | WriteNobody | WriteSpecific | WriteAny


# --- metadata kinds ---------------------------------------------------------------------------
class DataKey(msgspec.Struct, tag="Data", frozen=True, array_like=True):
    """This event carries (a new version of) the object with this primary key."""

    key: int


class Tombstone(msgspec.Struct, tag="Tombstone", frozen=True, array_like=True):
    """The object with this key, and every object below it, is deleted."""

    key: int


class Authorization(msgspec.Struct, tag="Authorization", frozen=True, array_like=True):
    read: ReadOption
    write: WriteOption


class Confidentiality(msgspec.Struct, tag="Confidentiality", frozen=True, array_like=True):
    """The data is encrypted with an object key, wrapped (AES-GCM) by the read key named here."""

    key_hash: bytes
    wrapped_key: bytes


class Parent(msgspec.Struct, tag="Parent", frozen=True, array_like=True):
    parent: int
    collection: int


class Timestamp(msgspec.Struct, tag="Timestamp", frozen=True, array_like=True):
    ms: int


class Signature(msgspec.Struct, tag="Signature", frozen=True, array_like=True):
    """One signature per write key per transaction over ``transaction_digest``."""

    public_key_hash: bytes
    digest: bytes
    signature: bytes


class LocalSeal(msgspec.Struct, tag="LocalSeal", frozen=True, array_like=True):
    """A keyed hash over ``transaction_digest`` with a key derived from the chain's read key.

    It lets a replica trust its own writes at fsync speed (no signature per close); it proves
    knowledge of the read key only, so it is never accepted from another node.
    """

    mac: bytes


class SignWith(msgspec.Struct, tag="SignWith", frozen=True, array_like=True):
    key_hashes: list[bytes]


class PublicKey(msgspec.Struct, tag="PublicKey", frozen=True, array_like=True):
    key: bytes


class EncryptedPrivateKey(msgspec.Struct, tag="EncryptedPrivateKey", frozen=True, array_like=True):
    public_key_hash: bytes
    key_hash: bytes  # the read key that wraps it
    wrapped: bytes


class Type(msgspec.Struct, tag="Type", frozen=True, array_like=True):
    name: str


class Chunk(msgspec.Struct, tag="Chunk", frozen=True, array_like=True):
    """Position of a page within its parent object (file contents)."""

    index: int


class Nonce(msgspec.Struct, tag="Nonce", frozen=True, array_like=True):
    """Random bytes that make an event unique where nothing else does (a deletion, data in
    clear): the chain server refuses an event it holds already as a replay, so two equal events
    written by two replicas - or twice by one - must never hash alike."""

    value: bytes


class Origin(msgspec.Struct, tag="Origin", frozen=True, array_like=True):
    """On the seal of a transaction a replica received from the chain server (docs/adr/0009):
    ``end`` is the server's log position after it; ``skipped`` the keys of objects this replica
    did not apply it to (its own unconfirmed change to them comes later in the server's order),
    so that a replay repeats the decision. ``head``: the server-order head after it (the hash
    chain over every event of the server's chain up to ``end``; empty: not known), which the
    attestations the server streams later must match (docs/adr/0016)."""

    end: int
    skipped: list[int]
    head: bytes = b""


class Uploaded(msgspec.Struct, tag="Uploaded", frozen=True, array_like=True):
    """A replica's marker (an empty transaction): its local transactions up to log position
    ``upto`` are in the server's chain, which then ended at ``server_end`` (-1: not known), with
    the server-order head ``head`` there (empty: not known; docs/adr/0016)."""

    upto: int
    server_end: int
    head: bytes = b""


Meta = (
    DataKey
    | Tombstone
    | Authorization
    | Confidentiality
    | Parent
    | Timestamp
    | Signature
    | LocalSeal
    | SignWith
    | PublicKey
    | EncryptedPrivateKey
    | Type
    | Chunk
    | Nonce
    | Origin
    | Uploaded
)


class MetaEnvelope(msgspec.Struct, frozen=True, array_like=True):
    v: int
    meta: list[Meta]


# --- upcasters --------------------------------------------------------------------------------
Upcaster = Callable[[Any, Format], Any]
#: version N -> function turning raw builtins of version N into version N + 1
UPCASTERS: dict[int, Upcaster] = {}


def _envelope_version(raw: Any, fmt: Format) -> int:
    if fmt is Format.BINCODE:
        if isinstance(raw, list) and raw and isinstance(raw[0], int):
            return raw[0]
    elif isinstance(raw, dict) and isinstance(raw.get("v"), int):
        return int(raw["v"])
    raise MalformedEvent("metadata envelope has no version")


def upcast(raw: Any, fmt: Format) -> Any:
    version = _envelope_version(raw, fmt)
    if version > META_VERSION:
        raise MalformedEvent(f"metadata version {version} is newer than this program")
    if version < 1 or any(v not in UPCASTERS for v in range(version, META_VERSION)):
        raise MalformedEvent(f"unknown metadata version {version}")
    while version < META_VERSION:
        raw = UPCASTERS[version](raw, fmt)
        version += 1
    return raw


# --- encoded events ---------------------------------------------------------------------------
def encode_meta(meta: list[Meta], fmt: Format) -> bytes:
    return encode(MetaEnvelope(v=META_VERSION, meta=meta), fmt)


def decode_meta(data: bytes, fmt: Format) -> list[Meta]:
    try:
        raw = upcast(decode_raw(data, fmt), fmt)
        return convert(raw, MetaEnvelope, fmt).meta
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise MalformedEvent(f"undecodable metadata: {exc}") from None
    except RecursionError:
        raise MalformedEvent("undecodable metadata: nested too deeply") from None


class EventHeader:
    """An event as the chain sees it: decoded metadata, its bytes, and the hash of its data.
    Hashes and a by-kind table are computed once, at construction (immutable afterwards)."""

    __slots__ = ("_kinds", "data_hash", "fmt", "hash", "meta", "meta_bytes", "meta_hash")

    def __init__(
        self, *, meta: tuple[Meta, ...], meta_bytes: bytes, data_hash: bytes, fmt: Format
    ) -> None:
        self.meta = meta
        self.meta_bytes = meta_bytes
        self.data_hash = data_hash
        self.fmt = fmt
        self.meta_hash = sha256_of(meta_bytes)
        self.hash = event_hash(self.meta_hash, data_hash)
        self._kinds: dict[type[Any], Meta] = {}
        for m in meta:
            self._kinds.setdefault(type(m), m)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventHeader) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"EventHeader({list(self.meta)!r}, hash={self.hash.hex()[:12]})"

    def find(self, kind: type[Any]) -> Any:
        return self._kinds.get(kind)

    @property
    def key(self) -> int | None:
        d = self._kinds.get(DataKey)
        return d.key if isinstance(d, DataKey) else None

    @property
    def has_data(self) -> bool:
        return self.data_hash != EMPTY_HASH


def make_header(meta: list[Meta], fmt: Format, data: bytes | None) -> EventHeader:
    mb = encode_meta(meta, fmt)
    return EventHeader(
        meta=tuple(meta), meta_bytes=mb, data_hash=sha256_of(data) if data else EMPTY_HASH, fmt=fmt
    )


def parse_header(meta_bytes: bytes, fmt: int, data_hash: bytes) -> EventHeader:
    try:
        f = Format(fmt)
    except ValueError:
        raise MalformedEvent(f"unknown format byte {fmt}") from None
    meta = decode_meta(meta_bytes, f)
    check_shape(meta)
    return EventHeader(meta=tuple(meta), meta_bytes=meta_bytes, data_hash=data_hash, fmt=f)


_SINGLE = (
    DataKey,
    Tombstone,
    Authorization,
    Confidentiality,
    Parent,
    Timestamp,
    Type,
    Chunk,
    LocalSeal,
    Nonce,
    Origin,
    Uploaded,
)


def check_shape(meta: list[Meta]) -> None:
    """Structural rules every event obeys, whoever wrote it."""
    seen: set[type[Any]] = set()
    for m in meta:
        if isinstance(m, _SINGLE):
            if type(m) in seen:
                raise MalformedEvent(f"{type(m).__name__} appears twice in one event")
            seen.add(type(m))
    if DataKey in seen and Tombstone in seen:
        raise MalformedEvent("an event cannot both write and delete an object")
    for m in meta:
        if isinstance(m, DataKey | Tombstone) and not (0 < m.key < 2**64):
            raise MalformedEvent(f"primary key {m.key} out of range")
        if isinstance(m, Parent) and not (0 < m.parent < 2**64 and 0 <= m.collection < 2**64):
            raise MalformedEvent("parent link out of range")
        if isinstance(m, Chunk) and m.index < 0:
            raise MalformedEvent("negative chunk index")
