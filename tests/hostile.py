"""A hostile client's toolkit, built from the project's own codec: transactions that a peer
without the chain's keys - or a writer breaking the allow-list - can put on the wire.

``forgeries`` returns named forged transactions, each with the words the server's refusal must
contain. Nothing here is accepted by an honest server (tests/mount/test_hostile_client.py sends
every one to a real ``wasmer-dfs serve``); tests/property/test_mutations.py mutates valid
transactions at random instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from application.ports import Crypto
from application.wire_tx import header_of
from domain.events import (
    Authorization,
    Chunk,
    Confidentiality,
    DataKey,
    EncryptedPrivateKey,
    LocalSeal,
    Meta,
    MetaEnvelope,
    Nonce,
    Origin,
    Parent,
    PublicKey,
    ReadEveryone,
    Signature,
    SignWith,
    Timestamp,
    Tombstone,
    Type,
    Uploaded,
    WriteEveryone,
    encode_meta,
    make_header,
)
from domain.formats import Format, encode
from domain.fs.model import COLL_INODES, ROOT_INO, TYPE_INODE
from domain.hashing import EMPTY_HASH, event_hash, key_hash, sha256_of
from domain.trust import signed_digest
from domain.wire import CommitRecord

F = Format.BINCODE


@dataclass(frozen=True)
class Forgery:
    name: str
    records: list[CommitRecord]
    #: a regular expression the server's reason must match
    reason: str
    #: refused by the frame codec: the server ends the connection (``Fatal``) with the reason
    fatal: bool = False


def record(meta: Sequence[Meta], data: bytes | None = None) -> CommitRecord:
    hdr = make_header(list(meta), F, data)
    return CommitRecord(hdr.meta_bytes, int(F), data)


@dataclass
class Signer:
    """Signs transactions of one chain with one key pair (the chain's root key, or a key the
    attacker made up)."""

    crypto: Crypto
    chain_id: bytes
    public: bytes
    secret: bytes

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.public)

    def seal(self, events: Sequence[CommitRecord], extra: Sequence[Meta] = ()) -> CommitRecord:
        """A seal over ``events`` carrying ``extra`` besides the signature (signed too)."""
        covered = [Timestamp(1), *extra]
        # hashed without parsing, so that malformed events can be signed too
        hashes = [
            event_hash(sha256_of(r.meta), sha256_of(r.data) if r.data else EMPTY_HASH)
            for r in events
        ]
        digest = signed_digest(self.chain_id, hashes, covered)
        sig = Signature(self.key_hash, digest, self.crypto.sign(self.secret, digest))
        return record([sig, *covered])

    def tx(self, events: Sequence[CommitRecord], extra: Sequence[Meta] = ()) -> list[CommitRecord]:
        return [*events, self.seal(events, extra)]


def every_kind(public: bytes, key: int) -> dict[str, Meta]:
    """One instance of every metadata kind there is (``key``: an object that exists)."""
    h32 = bytes(range(32))
    return {
        "DataKey": DataKey(key),
        "Tombstone": Tombstone(key),
        "Authorization": Authorization(ReadEveryone(), WriteEveryone()),
        "Confidentiality": Confidentiality(h32, b"w" * 60),
        "Parent": Parent(ROOT_INO, COLL_INODES),
        "Timestamp": Timestamp(2),
        "Signature": Signature(h32, h32, b"s" * 64),
        "LocalSeal": LocalSeal(h32),
        "SignWith": SignWith([h32]),
        "PublicKey": PublicKey(public),
        "EncryptedPrivateKey": EncryptedPrivateKey(h32, h32, b""),
        "Type": Type("blob"),
        "Chunk": Chunk(0),
        "Nonce": Nonce(b"n" * 8),
        "Origin": Origin(0, [key]),
        "Uploaded": Uploaded(0, 0),
    }


#: kinds allowed in an event, and on a seal from the wire (domain/trust.py)
EVENT_OK = {
    "DataKey",
    "Tombstone",
    "Authorization",
    "Confidentiality",
    "Parent",
    "Timestamp",
    "PublicKey",
    "EncryptedPrivateKey",
    "Type",
    "Chunk",
    "Nonce",
}
SEAL_OK = {"Signature", "Timestamp"}


def forgeries(
    root: Signer,
    mallory: Signer,
    stranger: Signer,
    confirmed: list[CommitRecord],
    file_inode: int,
    fresh_key: Callable[[], int],
) -> list[Forgery]:
    """Every forged transaction of the catalogue.

    ``root`` holds the chain's root key (a writer breaking the allow-list), ``mallory`` a key she
    made up, ``stranger`` the root key of another chain; ``confirmed`` is a transaction the
    server holds already; ``file_inode`` an object that exists."""
    out: list[Forgery] = []

    def new_event(*extra: Meta, key: int | None = None) -> list[Meta]:
        k = fresh_key() if key is None else key
        return [DataKey(k), Type("blob"), Timestamp(3), Nonce(b"%08d" % k), *extra]

    def add(name: str, records: list[CommitRecord], reason: str, fatal: bool = False) -> None:
        out.append(Forgery(name, records, reason, fatal))

    kinds = every_kind(mallory.public, file_inode)
    # 1. every metadata kind in every position, on an otherwise valid, root-signed transaction
    for name, m in kinds.items():
        if name not in EVENT_OK:
            ev = record([*new_event(), m])
            add(f"{name} in an event", root.tx([ev]), "not allowed in an event")
            good = record(new_event())
            add(f"{name} in a second event", root.tx([good, ev]), "not allowed in an event")
        if name not in SEAL_OK:
            ev = record(new_event())
            why = {
                "LocalSeal": "local seal is never accepted",
                "Origin": "never crosses the wire",
                "Uploaded": "never crosses the wire",
            }.get(name, "not allowed on a seal from the wire")
            add(f"{name} on the seal", root.tx([ev], [m]), why)
    # 2. unsigned writes, the bookkeeping route of finding 1 included
    tomb_root = record([Tombstone(ROOT_INO), Type(TYPE_INODE), Timestamp(3), Nonce(b"r" * 8)])
    tomb_file = record([Tombstone(file_inode), Type(TYPE_INODE), Timestamp(3), Nonce(b"f" * 8)])
    add("unsigned tombstone of the root", [tomb_root, record([Timestamp(4)])], "not authorised")
    add(
        "unsigned tombstone of the root, skipped by Origin",
        [tomb_root, record([Timestamp(4), Origin(0, [ROOT_INO])])],
        "never crosses the wire",
    )
    add(
        "unsigned tombstone of a file, skipped by Origin",
        [tomb_file, record([Origin(10**6, [file_inode])])],
        "never crosses the wire",
    )
    junk = record([Timestamp(3), Nonce(b"junk0001")], b"data of nobody")
    add("unsigned event naming no object", [junk, record([Timestamp(4)])], "exactly one object")
    add(
        "unsigned event naming no object, with Uploaded",
        [junk, record([Uploaded(0, 0), Timestamp(4)])],
        "never crosses the wire|exactly one object",
    )
    add("unsigned new object", [record(new_event()), record([Timestamp(4)])], "not authorised")
    add("seal only, unsigned", [record([Timestamp(4)])], "must carry a signature")
    # 3. keys the attacker made up
    own = record(new_event(PublicKey(mallory.public)))
    add("a key she made up, introduced and used", mallory.tx([own]), "not authorised")
    add("signed by a key the chain does not hold", mallory.tx([record(new_event())]), "not hold")
    add(
        "attestation by a key the chain does not hold",
        [mallory.seal([])],
        "covers other events|not hold|attested already",
    )
    add(
        "her own key over the root's tombstone",
        mallory.tx([record([*new_event(PublicKey(mallory.public))]), tomb_root]),
        "not authorised",
    )
    # 4. wrongly signed
    ev = record(new_event())
    seal = header_of(root.seal([ev]))
    sig = seal.find(Signature)
    flipped = Signature(
        sig.public_key_hash, sig.digest, bytes([sig.signature[0] ^ 1]) + sig.signature[1:]
    )
    add("a flipped signature byte", [ev, record([flipped, Timestamp(1)])], "does not verify")
    named_root = Signature(
        root.key_hash, sig.digest, mallory.crypto.sign(mallory.secret, sig.digest)
    )
    add(
        "her signature under the root's name",
        [ev, record([named_root, Timestamp(1)])],
        "does not verify",
    )
    add(
        "the seal's timestamp changed after signing",
        [ev, record([sig, Timestamp(99)])],
        "covers other events",
    )
    add(
        "a seal field added after signing",
        [ev, record([sig, Timestamp(1), Uploaded(1, 1)])],
        "never crosses",
    )
    add(
        "a signature from another transaction",
        [record(new_event()), root.seal([ev])],
        "covers other events",
    )
    add(
        "a root signature twice",
        [ev, record([sig, sig, Timestamp(1)])],
        "two signatures of one key",
    )
    # 5. another chain, replays, order, truncation, duplication
    add(
        "a transaction of another chain",
        stranger.tx([record(new_event())]),
        "covers other events|not hold",
    )
    add("a replayed transaction", list(confirmed), "already in the chain")
    a, b = record(new_event()), record(new_event())
    both = root.tx([a, b])
    add("events reordered", [b, a, both[-1]], "covers other events")
    add("an event dropped", [b, both[-1]], "covers other events")
    add("an event duplicated", [a, a, b, both[-1]], "already in the chain")
    add("the seal dropped", [a, b], "seal")
    add("no records at all", [], "length >= 1", fatal=True)
    add(
        "data on the seal",
        [a, CommitRecord(both[-1].meta, both[-1].fmt, b"x")],
        "has data",
        fatal=True,
    )
    # 6. writes to objects it holds no key for
    add("her signature on a file's tombstone", mallory.tx([tomb_file]), "not hold")
    upd = record([DataKey(file_inode), Type(TYPE_INODE), Timestamp(3), Nonce(b"u" * 8)], b"forged")
    add("an unsigned rewrite of a file", [upd, record([Timestamp(4)])], "not authorised")
    add("her signature on a file's rewrite", mallory.tx([upd]), "not hold")
    # 7. oversized and malformed fields
    add("a 100 KB nonce", root.tx([record([*new_event()[:3], Nonce(b"n" * 100_000)])]), "nonce")
    add(
        "a 10,000-character type",
        root.tx([record([DataKey(fresh_key()), Type("t" * 10_000), Nonce(b"n" * 8)])]),
        "type name",
    )
    add(
        "a 1 MB public key", root.tx([record(new_event(PublicKey(b"k" * 1_000_000)))]), "public key"
    )
    add(
        "a 5-byte key hash",
        root.tx([record(new_event(Confidentiality(b"12345", b"w")))]),
        "32 bytes",
    )
    add(
        "primary key 0",
        root.tx([record([DataKey(0), Type("blob"), Nonce(b"z" * 8)])]),
        "out of range",
    )
    add("a negative chunk", root.tx([record(new_event(Chunk(-1)))]), "negative chunk")
    add(
        "a parent that does not exist",
        root.tx([record(new_event(Parent(fresh_key(), 1)))]),
        "parent",
    )
    garbage = [CommitRecord(b"\xc1\xff\x00garbage", int(F), None), root.seal([])]
    add("undecodable metadata", garbage, "malformed")
    add("an unknown format byte", [CommitRecord(a.meta, 99, None), root.seal([])], "format")
    future = CommitRecord(encode(MetaEnvelope(v=99, meta=new_event()), F), int(F), None)
    add("metadata of version 99", [future, root.seal([])], "newer than this program")
    both_kinds = record([DataKey(fresh_key()), Tombstone(file_inode), Nonce(b"b" * 8)])
    add("one event writing and deleting", root.tx([both_kinds]), "both write and delete")
    return out


def encoded(meta: Sequence[Meta]) -> bytes:
    return encode_meta(list(meta), F)
