"""The chain's state as a fold of events, and the validation pipeline that guards it.

``ChainIndex`` is the generic materialised view every chain has: which objects exist, where their
newest event lies (the position of its record in the log), their parent links,
authorisations and the public keys seen. Domain-specific views (the file tree) plug in as
``Indexer``s and see each accepted event after it is applied.

A transaction is a run of events closed by a *seal* event that carries one signature per write
key over ``signed_digest`` (domain/trust.py: the chain id, the events' hashes and the seal's own
metadata). What may stand in an event or a seal is an allow-list (``ShapeValidator``).
Nothing of a transaction is applied until the whole of it validates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from domain.errors import BadSignature, MalformedEvent, TransactionRejected, Unauthorised
from domain.events import (
    Authorization,
    DataKey,
    EventHeader,
    LocalSeal,
    Origin,
    Parent,
    PublicKey,
    Signature,
    Timestamp,
    Tombstone,
    Type,
    WriteAny,
    WriteEveryone,
    WriteInherit,
    WriteNobody,
    WriteOption,
    WriteSpecific,
)
from domain.hashing import (
    chain_head,
    genesis_head,
    key_hash,
    local_mac,
    transaction_digest,
)
from domain.trust import signed_digest, transaction_shape

#: verify(public_key, message, signature) -> True when the signature holds
Verifier = Callable[[bytes, bytes, bytes], bool]


class ObjectInfo(msgspec.Struct, array_like=True, gc=False):
    """What the index knows of one live object. (A msgspec struct: compact, created at C speed
    when a checkpoint is loaded, and never walked by the cyclic collector - it holds no cycles.)"""

    key: int
    parent: int | None
    collection: int
    auth: Authorization | None
    type_name: str | None
    #: offset of the record of the object's newest event in the log (-1: not known)
    position: int = -1


@dataclass(frozen=True, slots=True)
class Located:
    """An event with where its data lies (a log locator, opaque to the domain) and, when the
    writer has it at hand, the data's plaintext (so that indexers need not decrypt it again)."""

    header: EventHeader
    locator: Any
    plaintext: bytes | None = None
    #: the decoded plaintext, when the writer has it (spares indexers a decode)
    decoded: Any = None
    #: offset of the event's record in the log (-1: not known); compaction copies by it
    position: int = -1


@dataclass(frozen=True, slots=True)
class Transaction:
    events: tuple[Located, ...]
    seal: EventHeader

    @property
    def signatures(self) -> list[Signature]:
        return [m for m in self.seal.meta if isinstance(m, Signature)]

    @property
    def skipped(self) -> frozenset[int]:
        """Keys of objects this replica did not apply the transaction to (``Origin``)."""
        origin = self.seal.find(Origin)
        return frozenset(origin.skipped) if isinstance(origin, Origin) and origin.skipped else _NONE

    @property
    def applied(self) -> tuple[Located, ...]:
        """The events that change this replica's state: all of them but the skipped ones."""
        skip = self.skipped
        if not skip:
            return self.events
        return tuple(e for e in self.events if event_key(e.header) not in skip)


_NONE: frozenset[int] = frozenset()


def event_key(hdr: EventHeader) -> int | None:
    """The key of the object an event writes or deletes (None: neither)."""
    tomb = hdr.find(Tombstone)
    if tomb is not None:
        return int(tomb.key)
    dk = hdr.find(DataKey)
    return int(dk.key) if dk is not None else None


@dataclass(slots=True)
class ChainIndex:
    chain_id: bytes
    root_write: WriteOption
    objects: dict[int, ObjectInfo] = field(default_factory=dict)
    #: parent -> its children: the one child's key itself while there is only one (most
    #: objects have one: a file's one page), a set from the second on (``children_of``)
    children: dict[int, int | set[int]] = field(default_factory=dict)
    public_keys: dict[bytes, bytes] = field(default_factory=dict)
    #: head of the hash chain over every accepted event (see ``chain_head``)
    head: bytes = b""
    #: the head that the newest signature attests to
    attested: bytes = b""

    def __post_init__(self) -> None:
        if not self.head:
            self.head = self.attested = genesis_head(self.chain_id)

    # -- queries -------------------------------------------------------------------------------
    def children_of(self, key: int) -> Iterable[int]:
        """The keys of the objects whose parent is ``key``."""
        kids = self.children.get(key)
        if kids is None:
            return ()
        return (kids,) if isinstance(kids, int) else kids

    def add_child(self, parent: int, key: int) -> None:
        kids = self.children.get(parent)
        if kids is None:
            self.children[parent] = key
        elif isinstance(kids, int):
            if kids != key:
                self.children[parent] = {kids, key}
        else:
            kids.add(key)

    def discard_child(self, parent: int, key: int) -> None:
        kids = self.children.get(parent)
        if kids is None:
            return
        if isinstance(kids, int):
            if kids == key:
                del self.children[parent]
            return
        kids.discard(key)
        if len(kids) == 1:
            self.children[parent] = next(iter(kids))
        elif not kids:
            del self.children[parent]

    def effective_write(
        self, key: int | None, overlay: dict[int, ObjectInfo | None]
    ) -> WriteOption:
        seen = 0
        while key is not None:
            info = overlay[key] if key in overlay else self.objects.get(key)
            if info is None:
                break
            if info.auth is not None and not isinstance(info.auth.write, WriteInherit):
                return info.auth.write
            key = info.parent
            seen += 1
            if seen > 4096:
                raise MalformedEvent("parent links form a cycle")
        return self.root_write

    def adopt(self, other: ChainIndex) -> None:
        """Take ``other``'s whole state in place, so that references to this index stay valid
        (a compacted log's index replaces the old one; a checkpoint's is loaded)."""
        self.chain_id = other.chain_id
        self.root_write = other.root_write
        self.objects = other.objects
        self.children = other.children
        self.public_keys = other.public_keys
        self.head = other.head
        self.attested = other.attested

    # -- fold ----------------------------------------------------------------------------------
    def apply(self, ev: Located) -> tuple[str, int] | None:
        """Apply one accepted event; returns ('put'|'delete', key) or None for key-less events."""
        hdr = ev.header
        self.head = chain_head(self.head, hdr.hash)
        for m in hdr.meta:
            if isinstance(m, PublicKey):
                self.public_keys[key_hash(m.key)] = m.key
        tomb = hdr.find(Tombstone)
        if tomb is not None:
            self._delete(tomb.key)
            return ("delete", tomb.key)
        dk = hdr.find(DataKey)
        if dk is None:
            return None
        old = self.objects.get(dk.key)
        info = _info_from(hdr, dk.key if old is None else old.key, old, ev.position)
        if info.parent is not None:
            # share the parent's key object (an int of 64 bits is 36 bytes, per reference)
            up = self.objects.get(info.parent)
            if up is not None:
                info.parent = up.key
        if old is not None and old.parent != info.parent and old.parent is not None:
            self.discard_child(old.parent, dk.key)
        self.objects[dk.key] = info
        if info.parent is not None:
            self.add_child(info.parent, dk.key)
        return ("put", dk.key)

    def _delete(self, key: int) -> None:
        if key not in self.objects:
            return  # deleting what does not exist changes nothing
        stack = [key]
        while stack:
            k = stack.pop()
            info = self.objects.pop(k, None)
            if info is not None and info.parent is not None:
                self.discard_child(info.parent, k)
            stack.extend(self.children_of(k))
            self.children.pop(k, None)


def _info_from(
    hdr: EventHeader, key: int, old: ObjectInfo | None, position: int = -1
) -> ObjectInfo:
    parent = hdr.find(Parent)
    auth = hdr.find(Authorization)
    typ = hdr.find(Type)
    if parent is None and old is not None:
        pk, coll = old.parent, old.collection
    else:
        pk, coll = (parent.parent, parent.collection) if parent is not None else (None, 0)
    return ObjectInfo(
        key=key,
        parent=pk,
        collection=coll,
        auth=shared(auth) if auth is not None else (old.auth if old is not None else None),
        type_name=shared(typ.name) if typ is not None else (old.type_name if old else None),
        position=position,
    )


#: one object per distinct value of what many objects repeat (authorisations, type names); its
#: size is bounded: a value seen after it is full is kept as it is (equal, only not shared)
_SHARED: dict[Any, Any] = {}
_SHARED_MAX = 4096
_T = TypeVar("_T")


def shared(value: _T) -> _T:
    """The one stored object equal to ``value`` (``value`` itself the first time): a million
    objects then hold one ``Authorization`` and one ``"inode"`` instead of a million of each."""
    try:
        found = _SHARED.get(value)
    except TypeError:  # unhashable (a WriteAny holds a list): not shared
        return value
    if found is not None:
        return found  # type: ignore[no-any-return]
    if len(_SHARED) < _SHARED_MAX:
        _SHARED[value] = value
    return value


# --- validation pipeline -----------------------------------------------------------------------
class Validator(Protocol):
    def validate(self, index: ChainIndex, tx: Transaction) -> None:
        """Raise a DomainError when the transaction must be refused."""


class Indexer(Protocol):
    def on_event(self, index: ChainIndex, ev: Located, change: tuple[str, int] | None) -> None:
        """See an accepted event after the chain index applied it."""


class Authenticator(Protocol):
    def signers(self, index: ChainIndex, tx: Transaction) -> set[bytes]:
        """The key hashes that vouch for ``tx``; raise a DomainError for a bad proof."""


@dataclass(frozen=True, slots=True)
class ShapeValidator:
    """The allow-list of domain/trust.py: what may stand in each event and on the seal.
    ``local``: a transaction of a replica's own log (its seals may carry bookkeeping)."""

    local: bool = False

    def validate(self, index: ChainIndex, tx: Transaction) -> None:
        transaction_shape((e.header for e in tx.events), tx.seal, local=self.local)


@dataclass(frozen=True, slots=True)
class SignatureValidator:
    """Every signature verifies and covers exactly this transaction on this chain, its seal
    included (``signed_digest``) - or, for a transaction with no events (an attestation), the
    head of the chain at that point. ``legacy``: a chain created before header version 2, whose
    older signatures cover the events only (domain/trust.py says why that is still safe)."""

    verify: Verifier
    legacy: bool = False

    def signers(self, index: ChainIndex, tx: Transaction) -> set[bytes]:
        hashes = [e.header.hash for e in tx.events]
        digest = signed_digest(index.chain_id, hashes, tx.seal.meta, index.head)
        old = b""
        if self.legacy:
            old = transaction_digest(index.chain_id, hashes) if hashes else index.head
        keys = dict(index.public_keys)
        for e in tx.events:
            for m in e.header.meta:
                if isinstance(m, PublicKey):
                    keys[key_hash(m.key)] = m.key
        signers: set[bytes] = set()
        for sig in tx.signatures:
            if sig.digest != digest and not (old and sig.digest == old):
                raise BadSignature(
                    "a signature covers other events than this transaction's (or another seal)"
                )
            pk = keys.get(sig.public_key_hash)
            if pk is None:
                raise BadSignature("a signature names a public key the chain does not hold")
            if not self.verify(pk, sig.digest, sig.signature):
                raise BadSignature("a signature does not verify")
            signers.add(sig.public_key_hash)
        return signers

    def validate(self, index: ChainIndex, tx: Transaction) -> None:
        self.signers(index, tx)


@dataclass(frozen=True, slots=True)
class LocalSealAuthenticator:
    """A replica's own transactions, sealed with a key only holders of the read key have; a valid
    seal vouches as the chain's root key (whose secret the same read key unlocks). The seal also
    covers the chain's head before the transaction, so a sealed transaction cannot be replayed
    at another position of the chain."""

    seal_key: bytes
    grants: bytes

    def signers(self, index: ChainIndex, tx: Transaction) -> set[bytes]:
        seal = tx.seal.find(LocalSeal)
        if seal is None:
            return set()
        digest = transaction_digest(index.chain_id, (e.header.hash for e in tx.events))
        if local_mac(self.seal_key, index.head, digest) != seal.mac:
            raise BadSignature("a local seal does not match its transaction")
        return {self.grants}


def _allowed(option: WriteOption, signers: set[bytes]) -> bool:
    if isinstance(option, WriteEveryone):
        return True
    if isinstance(option, WriteNobody):
        return False
    if isinstance(option, WriteSpecific):
        return option.key_hash in signers
    if isinstance(option, WriteAny):
        return any(k in signers for k in option.key_hashes)
    return False


@dataclass(frozen=True, slots=True)
class AuthorizationValidator:
    """Each write is checked against the authorisation stored before it: an update needs the
    object's current write key, a creation its parent's (or the chain root's)."""

    authenticators: Sequence[Authenticator]

    def validate(self, index: ChainIndex, tx: Transaction) -> None:
        signers: set[bytes] = set()
        for auth in self.authenticators:
            signers |= auth.signers(index, tx)
        overlay: dict[int, ObjectInfo | None] = {}
        born: dict[int, set[int]] = {}  # parent -> children created or moved in by this tx

        def exists(k: int) -> bool:
            return overlay[k] is not None if k in overlay else k in index.objects

        def require(option: WriteOption, key: int) -> None:
            if not _allowed(option, signers):
                what = f"write to object {key}" if key else "an attestation of the chain"
                raise Unauthorised(f"{what} is not authorised by its signers")

        if not tx.events:
            # an attestation vouches for the whole chain: only who may write at its root
            if tx.signatures:
                require(index.root_write, 0)
            return
        skipped = tx.skipped
        for ev in tx.events:
            hdr = ev.header
            tomb = hdr.find(Tombstone)
            dk = hdr.find(DataKey)
            key = tomb.key if tomb is not None else (dk.key if dk is not None else None)
            if key is None:
                raise MalformedEvent("an event must write or delete one object")
            parent = hdr.find(Parent)
            existing = overlay[key] if key in overlay else index.objects.get(key)
            if key in skipped:
                # a replica does not apply this event (its own change to the object comes later
                # in the server's order, or the object's parent is gone here): it is still
                # checked against what this replica knows, and changes nothing of the overlay
                if existing is not None:
                    require(index.effective_write(key, overlay), key)
                elif tomb is None:
                    require(index.effective_write(parent.parent if parent else None, overlay), key)
                continue
            if tomb is not None:
                if existing is None:
                    continue  # deleting what does not exist changes nothing
                require(index.effective_write(key, overlay), key)
                # the deletion cascades to every descendant, as the index will apply it
                stack = [key]
                while stack:
                    k = stack.pop()
                    overlay[k] = None
                    stack.extend(c for c in index.children_of(k) if exists(c))
                    stack.extend(c for c in born.pop(k, ()) if exists(c))
                continue
            if parent is not None and not exists(parent.parent):
                raise MalformedEvent(f"object {key} names a parent that does not exist")
            if existing is not None:
                require(index.effective_write(key, overlay), key)
                if parent is not None and parent.parent != existing.parent:
                    # moving an object also needs the right to write below its new parent
                    require(index.effective_write(parent.parent, overlay), key)
            else:
                require(index.effective_write(parent.parent if parent else None, overlay), key)
            info = _info_from(hdr, key, existing)
            overlay[key] = info
            if info.parent is not None:
                born.setdefault(info.parent, set()).add(key)


@dataclass(frozen=True, slots=True)
class TimestampValidator:
    """Events stamped further in the future than the tolerance are refused (``now`` is given)."""

    now_ms: int
    tolerance_ms: int

    def validate(self, index: ChainIndex, tx: Transaction) -> None:
        for hdr in (*(e.header for e in tx.events), tx.seal):
            ts = hdr.find(Timestamp)
            if ts is not None and ts.ms > self.now_ms + self.tolerance_ms:
                raise TransactionRejected("an event is stamped too far in the future")


@dataclass(slots=True)
class Pipeline:
    validators: Sequence[Validator]
    indexers: list[Indexer] = field(default_factory=list)

    def check(self, index: ChainIndex, tx: Transaction) -> None:
        for v in self.validators:
            try:
                v.validate(index, tx)
            except TransactionRejected:
                raise
            except (BadSignature, Unauthorised, MalformedEvent) as exc:
                raise TransactionRejected(str(exc)) from exc

    def apply(self, index: ChainIndex, events: Iterable[Located]) -> None:
        for ev in events:
            change = index.apply(ev)
            for ix in self.indexers:
                ix.on_event(index, ev, change)

    def accept(self, index: ChainIndex, tx: Transaction) -> None:
        self.check(index, tx)
        if not tx.events and tx.signatures:
            index.attested = index.head
        self.apply(index, tx.applied)
