"""A chain session: opens or creates a chain on a redo log, replays and validates it, and writes
new events - encrypted, hashed, and sealed per transaction with one ML-DSA signature.

Encryption (see docs/adr/0004): the passcode gives the chain's read key through salted Argon2id
(salt and cost in the log header). Every object has its own random key, wrapped by the read key
and carried in the event's ``Confidentiality`` metadata; event data is AES-256-GCM under the
object key, with the chain id and the metadata hash as associated data, so data cannot be moved
to another event, object or chain without detection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec

from application.ports import (
    Clock,
    Crypto,
    CryptoError,
    DataRef,
    KdfParams,
    LogError,
    LogRecord,
    RedoLog,
    RedoLogFactory,
    ScannedRecord,
)
from application.snapshot import no_gc
from domain.chain import (
    Authenticator,
    AuthorizationValidator,
    ChainIndex,
    Indexer,
    LocalSealAuthenticator,
    Located,
    Pipeline,
    ShapeValidator,
    SignatureValidator,
    Transaction,
)
from domain.errors import DomainError
from domain.events import (
    Confidentiality,
    DataKey,
    EncryptedPrivateKey,
    EventHeader,
    LocalSeal,
    Meta,
    Nonce,
    Parent,
    PublicKey,
    Signature,
    Timestamp,
    Tombstone,
    Type,
    WriteEveryone,
    WriteOption,
    WriteSpecific,
    encode_meta,
    make_header,
    parse_header,
)
from domain.formats import Format
from domain.hashing import (
    EMPTY_HASH,
    checkpoint_key,
    h,
    key_hash,
    local_mac,
    seal_key,
    transaction_digest,
)
from domain.trust import signed_digest

CHAIN_KEY_OBJECT = 2
TYPE_CHAIN_KEY = "chain-key"
#: 2: signatures cover the seal's metadata too (domain/trust.py); version 1 chains keep their
#: older signatures valid
HEADER_VERSION = 2
KEY_CHECK = b"wasmer-dfs/key-check/v1"
#: random bytes that make an event without encrypted data unique (``Nonce``)
NONCE_BYTES = 8

_log = logging.getLogger("wasmer_dfs.session")


class SessionError(Exception):
    """Opening or using a chain failed; the message is meant for a human."""


class WrongPasscode(SessionError):
    pass


class ChainMismatch(SessionError):
    pass


class ChainIntegrityError(SessionError):
    pass


#: Argon2id costs a chain header may demand (docs/adr/0014): they admit every cost this program
#: writes (DEFAULT_KDF, the tests' (1, 8, 1)) and refuse a header - maybe a hostile server's -
#: that would make a mount spend gigabytes or hours deriving a key
KDF_ITERATIONS = (1, 64)
KDF_MEMORY_KIB = (8, 4 * 1024 * 1024)  # 8 KiB .. 4 GiB
KDF_LANES = (1, 64)
KDF_SALT_BYTES = (16, 64)


class KdfHeader(msgspec.Struct, frozen=True):
    salt: bytes
    iterations: int
    memory_kib: int
    lanes: int

    def params(self) -> KdfParams:
        return KdfParams(self.salt, self.iterations, self.memory_kib, self.lanes)

    def check(self) -> None:
        """``ChainIntegrityError`` when a cost or the salt lies outside sane bounds (checked
        before any key is derived)."""
        for what, value, (low, high) in (
            ("iterations", self.iterations, KDF_ITERATIONS),
            ("memory (KiB)", self.memory_kib, KDF_MEMORY_KIB),
            ("lanes", self.lanes, KDF_LANES),
            ("salt length", len(self.salt), KDF_SALT_BYTES),
        ):
            if not low <= value <= high:
                raise ChainIntegrityError(
                    f"the chain header asks for Argon2id {what} {value}, outside {low}..{high}:"
                    " refused before deriving any key (a damaged or hostile header)"
                )
        if self.memory_kib < 8 * self.lanes:
            raise ChainIntegrityError(
                f"the chain header asks for Argon2id memory {self.memory_kib} KiB with"
                f" {self.lanes} lanes (at least 8 KiB a lane): refused"
            )


class ChainHeader(msgspec.Struct, frozen=True):
    version: int
    chain_id: bytes
    name: str
    created_ms: int
    encrypted: bool
    kdf: KdfHeader | None
    key_check: bytes
    root_key_hash: bytes | None
    page_size: int
    #: the --configured-for preset the chain was created with (docs/adr/0014); a remount
    #: without --configured-for keeps it. None: a chain from before presets were recorded.
    configured_for: str | None = None

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, body: bytes) -> ChainHeader:
        try:
            hdr = msgspec.msgpack.decode(body, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ChainIntegrityError(f"the chain header is unreadable: {exc}") from None
        if hdr.version > HEADER_VERSION:
            raise ChainIntegrityError(
                f"chain header version {hdr.version} is newer than this program"
            )
        return hdr

    @property
    def root_write(self) -> WriteOption:
        if self.root_key_hash is None:
            return WriteEveryone()
        return WriteSpecific(self.root_key_hash)


@dataclass(frozen=True, slots=True)
class ObjectKey:
    key: bytes
    conf: Confidentiality


@dataclass(frozen=True, slots=True)
class Formats:
    meta: Format = Format.BINCODE
    data: Format = Format.BINCODE


DEFAULT_KDF = (3, 64 * 1024, 4)  # iterations, memory KiB, lanes: ~0.16 s here


@runtime_checkable
class Rebuildable(Indexer, Protocol):
    """An indexer whose state can be rebuilt beside it and taken over in place (compaction
    rebuilds the state from the new log off the event loop), and saved in a checkpoint."""

    def fork(self, session: ChainSession) -> Rebuildable:
        """A new, empty indexer of the same kind that reads through ``session``."""

    def adopt(self, other: Rebuildable) -> None:
        """Take the state of ``other`` (a fork) in place: references to this indexer's state
        held elsewhere (the file-system service's view) stay valid."""

    def export_state(self) -> bytes | None:
        """The state as bytes for a checkpoint, or None when it cannot be saved."""

    def import_state(self, blob: bytes | memoryview) -> None:
        """Load ``export_state``'s bytes into this (empty) indexer; ValueError when unusable."""


class ChainSession:
    def __init__(
        self,
        log: RedoLog,
        header: ChainHeader,
        crypto: Crypto,
        clock: Clock,
        read_key: bytes | None,
        formats: Formats,
        indexers: Sequence[Indexer] = (),
    ) -> None:
        self.log = log
        self.header = header
        self.crypto = crypto
        self.clock = clock
        self.formats = formats
        self._read_key = read_key
        self._read_key_hash = key_hash(read_key) if read_key is not None else b""
        self.index = ChainIndex(chain_id=header.chain_id, root_write=header.root_write)
        self._seal_key = seal_key(read_key) if read_key is not None else None
        authenticators: list[Authenticator] = [
            SignatureValidator(crypto.verify, legacy=header.version < 2)
        ]
        if self._seal_key is not None and header.root_key_hash is not None:
            authenticators.append(LocalSealAuthenticator(self._seal_key, header.root_key_hash))
        self.pipeline = Pipeline(
            validators=[ShapeValidator(local=True), AuthorizationValidator(authenticators)],
            indexers=list(indexers),
        )
        self._unwrapped: dict[bytes, bytes] = {}
        self._signing: tuple[bytes, bytes] | None = None  # (public key hash, secret key)
        self._pending: list[bytes] = []
        self._pending_keys: set[int] = set()
        #: called after each local transaction is sealed: (first position, end, object keys)
        self.on_commit: Callable[[int, int, frozenset[int]], None] | None = None
        self.pending_since: float | None = None
        self.pending_bytes = 0
        self._closed = False
        self._tx_head = b""
        self._tx_start = -1
        #: position of the first record of the last committed transaction (-1: none yet)
        self.last_tx_start = -1
        #: where the replay at ``start`` began (None: from the first record)
        self.replayed_from: int | None = None
        #: follows a replay: ("scan", position reached, committed end)
        self.progress: Callable[[str, int, int], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        logs: RedoLogFactory,
        chain: str,
        passcode: bytes | None,
        crypto: Crypto,
        clock: Clock,
        formats: Formats,
        page_size: int,
        indexers: Sequence[Indexer] = (),
        kdf: tuple[int, int, int] = DEFAULT_KDF,
        configured_for: str | None = None,
    ) -> ChainSession:
        chain_id = crypto.random(16)
        read_key: bytes | None = None
        kdf_hdr: KdfHeader | None = None
        key_check = b""
        root_hash: bytes | None = None
        public = secret = b""
        if passcode is not None:
            kdf_hdr = KdfHeader(crypto.random(16), *kdf)
            read_key = crypto.derive_key(passcode, kdf_hdr.params())
            key_check = crypto.seal(read_key, KEY_CHECK, chain_id)
            public, secret = crypto.sign_keypair()
            root_hash = key_hash(public)
        header = ChainHeader(
            version=HEADER_VERSION,
            chain_id=chain_id,
            name=chain,
            created_ms=clock.now_ms(),
            encrypted=passcode is not None,
            kdf=kdf_hdr,
            key_check=key_check,
            root_key_hash=root_hash,
            page_size=page_size,
            configured_for=configured_for,
        )
        log = logs.create(chain, header.encode())
        session = cls(log, header, crypto, clock, read_key, formats, indexers)
        if read_key is not None and root_hash is not None:
            session._signing = (root_hash, secret)
            okey = session.new_object_key()
            sealed_secret = crypto.seal(okey.key, secret, chain_id)
            session.write(
                CHAIN_KEY_OBJECT,
                type_name=TYPE_CHAIN_KEY,
                payload=None,
                raw_data=sealed_secret,
                okey=okey,
                extra=[
                    PublicKey(public),
                    EncryptedPrivateKey(root_hash, session._read_key_hash, b""),
                ],
            )
            session.commit(sign=True)
            session.attest()
            session.log.sync()
        return session

    @classmethod
    def open(
        cls,
        logs: RedoLogFactory,
        chain: str,
        passcode: bytes | None,
        crypto: Crypto,
        clock: Clock,
        formats: Formats,
        indexers: Sequence[Indexer] = (),
        read_only: bool = False,
        resume_at: int | None = None,
        check_name: bool = True,
    ) -> ChainSession:
        """Open an existing chain. ``resume_at``: a committed end known from a checkpoint, so
        that the log checks only what follows it for a torn tail (see ``RedoLogFactory.open``).
        ``check_name``: refuse a log whose header names another chain (a replica's header is
        the server's, named by whoever created the chain: no check)."""
        header = ChainHeader.decode(logs.read_header(chain))
        if check_name and header.name != chain:
            raise ChainMismatch(
                f"this log belongs to chain {header.name!r}, not {chain!r}"
                f" (chain id {header.chain_id.hex()})"
            )
        read_key = cls.check_passcode(header, passcode, crypto)
        log = logs.open(chain, read_only=read_only, resume_at=resume_at)
        return cls(log, header, crypto, clock, read_key, formats, indexers)

    @classmethod
    def create_replica(
        cls,
        logs: RedoLogFactory,
        chain: str,
        header_body: bytes,
        passcode: bytes | None,
        crypto: Crypto,
        clock: Clock,
        formats: Formats,
        indexers: Sequence[Indexer] = (),
    ) -> ChainSession:
        """An empty local replica of a chain whose header (the chain server's) is given; its
        events, the genesis included, arrive by replication."""
        header = ChainHeader.decode(header_body)
        read_key = cls.check_passcode(header, passcode, crypto)
        log = logs.create(chain, header_body)
        return cls(log, header, crypto, clock, read_key, formats, indexers)

    def start(
        self,
        restore: Callable[[ChainSession], int | None] | None = None,
        *,
        key_optional: bool = False,
    ) -> int:
        """Replay the log through the pipeline (validating it) and load the signing key;
        returns the number of transactions replayed.

        ``restore`` may load the state from a checkpoint and return the log position it
        corresponds to: then only the records after it are replayed. If that replay fails, the
        state is reset and the whole log is replayed (the log is the truth, never the
        checkpoint). ``key_optional``: a replica may not have received the chain's key object
        yet (then ``load_signing_key`` follows the initial sync)."""
        try:
            start = restore(self) if restore is not None else None
            try:
                with no_gc():
                    count = self.replay(start)
            except ChainIntegrityError as exc:
                if start is None:
                    raise
                _log.debug("replay after the checkpoint failed (%s): replaying the whole log", exc)
                self.reset()
                with no_gc():
                    count = self.replay()
            if self._read_key is not None and (
                not key_optional or CHAIN_KEY_OBJECT in self.index.objects
            ):
                self.load_signing_key()
        except BaseException:
            self.log.close()
            raise
        return count

    def reset(self) -> None:
        """Forget the replayed state (index and indexers) in place."""
        self.index.adopt(
            ChainIndex(chain_id=self.header.chain_id, root_write=self.header.root_write)
        )
        for ix in self.pipeline.indexers:
            if not isinstance(ix, Rebuildable):
                raise SessionError(f"{type(ix).__name__} cannot be reset")
            ix.adopt(ix.fork(self))
        self.last_tx_start = -1
        self.replayed_from = None

    @staticmethod
    def check_passcode(header: ChainHeader, passcode: bytes | None, crypto: Crypto) -> bytes | None:
        if not header.encrypted:
            if passcode is not None:
                raise SessionError(
                    "this chain was created with --no-auth and is not encrypted: mount it with"
                    " --no-auth (no passcode)"
                )
            return None
        if passcode is None:
            raise SessionError("this chain is encrypted: a passcode is needed to mount it")
        if header.kdf is None:
            raise ChainIntegrityError("the chain header has no key-derivation parameters")
        header.kdf.check()
        read_key = crypto.derive_key(passcode, header.kdf.params())
        try:
            if crypto.open(read_key, header.key_check, header.chain_id) != KEY_CHECK:
                raise CryptoError("key check mismatch")
        except CryptoError:
            raise WrongPasscode(
                "wrong passcode: it does not open this chain (nothing was changed)"
            ) from None
        return read_key

    def load_signing_key(self) -> None:
        """Unseal the chain's signing key from its key object (after a replay)."""
        info = self.index.objects.get(CHAIN_KEY_OBJECT)
        if info is None or info.type_name != TYPE_CHAIN_KEY or self.header.root_key_hash is None:
            raise ChainIntegrityError("the chain's signing key is missing from the log")
        try:
            rec = self.log.read_record(info.position)
        except LogError as exc:
            raise ChainIntegrityError(f"the chain's signing key is unreadable: {exc}") from None
        hdr = self._parse(rec)
        conf = hdr.find(Confidentiality)
        ref = rec.data
        if hdr.key != CHAIN_KEY_OBJECT or not isinstance(conf, Confidentiality) or ref is None:
            raise ChainIntegrityError("the chain's signing key is not sealed")
        try:
            secret = self.crypto.open(
                self.unwrap(conf), self.log.read_data(ref), self.header.chain_id
            )
        except CryptoError:
            raise ChainIntegrityError("the chain's signing key does not decrypt") from None
        self._signing = (self.header.root_key_hash, secret)

    def add_indexer(self, indexer: Indexer) -> None:
        self.pipeline.indexers.append(indexer)

    @property
    def log_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self.log.close()

    # -- replay --------------------------------------------------------------------------------
    def transactions(self, start: int | None = None) -> Iterator[Transaction]:
        """Committed transactions from ``start`` (the position of a transaction's first
        record; default the start of the log). ``last_tx_start`` follows them."""
        events: list[Located] = []
        first = -1
        progress, end = self.progress, self.log.committed_end
        for n, rec in enumerate(self.log.scan(start)):
            if progress is not None and not n & 4095:
                progress("scan", rec.position, end)
            hdr = self._parse(rec)
            if first < 0:
                first = rec.position
            if rec.commit:
                self.last_tx_start = first
                first = -1
                yield Transaction(events=tuple(events), seal=hdr)
                events = []
            else:
                events.append(Located(hdr, rec.data, position=rec.position))

    def parse(self, rec: ScannedRecord) -> EventHeader:
        """The event (or seal) of a record; ``ChainIntegrityError`` when it is malformed."""
        return self._parse(rec)

    def _parse(self, rec: ScannedRecord) -> EventHeader:
        data_hash = rec.data.data_hash if rec.data is not None else h(b"")
        try:
            return parse_header(rec.meta, rec.fmt, data_hash)
        except DomainError as exc:
            raise ChainIntegrityError(f"record at offset {rec.position}: {exc}") from None

    def replay(self, start: int | None = None) -> int:
        """Validate and apply the committed transactions from ``start`` (default: all)."""
        count = 0
        self.replayed_from = start
        try:
            for tx in self.transactions(start):
                self.pipeline.accept(self.index, tx)
                count += 1
        except DomainError as exc:
            raise ChainIntegrityError(f"the log fails validation: {exc}") from None
        except LogError as exc:
            raise ChainIntegrityError(str(exc)) from None
        return count

    # -- keys ----------------------------------------------------------------------------------
    @property
    def encrypted(self) -> bool:
        return self._read_key is not None

    def new_object_key(self) -> ObjectKey:
        if self._read_key is None:
            raise SessionError("no read key: the chain is not encrypted")
        key = self.crypto.random(32)
        wrapped = self.crypto.seal(self._read_key, key, self.header.chain_id)
        self._unwrapped[wrapped] = key
        return ObjectKey(key, Confidentiality(self._read_key_hash, wrapped))

    def unwrap(self, conf: Confidentiality) -> bytes:
        key = self._unwrapped.get(conf.wrapped_key)
        if key is None:
            if self._read_key is None or conf.key_hash != self._read_key_hash:
                raise ChainIntegrityError("data is encrypted for a key this session lacks")
            try:
                key = self.crypto.open(self._read_key, conf.wrapped_key, self.header.chain_id)
            except CryptoError:
                raise ChainIntegrityError("an object key does not unwrap") from None
            self._unwrapped[conf.wrapped_key] = key
        return key

    def object_key(self, conf: Confidentiality) -> ObjectKey:
        return ObjectKey(self.unwrap(conf), conf)

    # -- data ----------------------------------------------------------------------------------
    def read_payload(self, hdr: EventHeader, ref: DataRef) -> bytes:
        """The plaintext of an event's data (read from disk, verified, decrypted)."""
        conf = hdr.find(Confidentiality)
        okey = self.object_key(conf) if isinstance(conf, Confidentiality) else None
        return self.read_sealed(ref, hdr.meta_hash, okey)

    def read_sealed(self, ref: DataRef, meta_hash: bytes, okey: ObjectKey | None) -> bytes:
        """Data at ``ref`` of the event whose metadata hashes to ``meta_hash``, decrypted."""
        try:
            raw = self.log.read_data(ref)
        except LogError as exc:
            raise ChainIntegrityError(str(exc)) from None
        return self._open_sealed(raw, ref.offset, meta_hash, okey)

    def open_payload(self, hdr: EventHeader, raw: bytes, offset: int = -1) -> bytes:
        """The plaintext of an event's data given its bytes as stored (``ChainIntegrityError``
        when they do not authenticate)."""
        conf = hdr.find(Confidentiality)
        okey = self.object_key(conf) if isinstance(conf, Confidentiality) else None
        return self._open_sealed(raw, offset, hdr.meta_hash, okey)

    def _open_sealed(
        self, raw: bytes, offset: int, meta_hash: bytes, okey: ObjectKey | None
    ) -> bytes:
        if okey is None:
            if self._read_key is not None:
                raise ChainIntegrityError("unencrypted data in an encrypted chain")
            return raw
        try:
            return self.crypto.open(okey.key, raw, self.header.chain_id + meta_hash)
        except CryptoError:
            raise ChainIntegrityError(
                f"data at offset {offset} fails authentication (altered or misplaced)"
            ) from None

    # -- writing -------------------------------------------------------------------------------
    def write(
        self,
        key: int,
        *,
        type_name: str,
        payload: bytes | None,
        okey: ObjectKey | None,
        parent: tuple[int, int] | None = None,
        extra: Sequence[Meta] = (),
        raw_data: bytes | None = None,
        decoded: object = None,
    ) -> Located:
        """Append a new version of object ``key`` (pending until the next ``commit``)."""
        meta: list[Meta] = [DataKey(key), Type(type_name)]
        if parent is not None:
            meta.append(Parent(parent[0], parent[1]))
        meta.extend(extra)
        meta.append(Timestamp(self.clock.now_ms()))
        if okey is not None:
            meta.append(okey.conf)  # its data is sealed under a random nonce: unique already
        else:
            meta.append(Nonce(self.crypto.random(NONCE_BYTES)))
        return self._append(meta, payload, okey, raw_data, decoded)

    def delete(
        self,
        key: int,
        *,
        type_name: str,
        parent: tuple[int, int] | None,
        extra: Sequence[Meta] = (),
    ) -> Located:
        meta: list[Meta] = [Tombstone(key), Type(type_name)]
        if parent is not None:
            meta.append(Parent(parent[0], parent[1]))
        meta.extend(extra)
        meta.append(Timestamp(self.clock.now_ms()))
        meta.append(Nonce(self.crypto.random(NONCE_BYTES)))
        return self._append(meta, None, None, None, None)

    def _append(
        self,
        meta: list[Meta],
        payload: bytes | None,
        okey: ObjectKey | None,
        raw: bytes | None,
        decoded: object,
    ) -> Located:
        meta_bytes = encode_meta(meta, self.formats.meta)
        if raw is not None:
            data: bytes | None = raw
        elif payload is None:
            data = None
        elif okey is not None:
            aad = self.header.chain_id + h(meta_bytes)
            data = self.crypto.seal(okey.key, payload, aad)
        else:
            data = payload
        hdr = EventHeader(
            meta=tuple(meta),
            meta_bytes=meta_bytes,
            data_hash=h(data) if data else EMPTY_HASH,
            fmt=self.formats.meta,
        )
        pos, ref = self.log.append(
            LogRecord(hdr.meta_bytes, int(self.formats.meta), data, False, hdr.data_hash)
        )
        if not self._pending:
            self._tx_head = self.index.head
            self._tx_start = pos
        self._pending.append(hdr.hash)
        key = meta[0].key if isinstance(meta[0], DataKey | Tombstone) else None
        if key is not None:
            self._pending_keys.add(key)
        if self.pending_since is None:
            self.pending_since = self.clock.monotonic()
        self.pending_bytes += len(data) if data else 0
        located = Located(hdr, ref, payload, decoded, pos)
        self.pipeline.apply(self.index, [located])
        return located

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def commit(self, *, sign: bool = False) -> bool:
        """Seal the pending transaction. Local writes are sealed with a keyed hash (cheap, so a
        close or fsync never waits for a signature); ``sign`` seals with an ML-DSA signature
        instead (what a transaction bound for other nodes needs)."""
        if not self._pending:
            return False
        meta: list[Meta] = [Timestamp(self.clock.now_ms())]
        digest = transaction_digest(self.header.chain_id, self._pending)
        if sign and self._signing is not None:
            meta = self.signed_seal(self._pending)
        elif self._seal_key is not None:
            meta.insert(0, LocalSeal(local_mac(self._seal_key, self._tx_head, digest)))
        self._append_seal(meta)
        self.last_tx_start = self._tx_start
        keys = frozenset(self._pending_keys)
        self._pending = []
        self._pending_keys = set()
        self.pending_since = None
        self.pending_bytes = 0
        if self.on_commit is not None:
            self.on_commit(self._tx_start, self.log.committed_end, keys)
        return True

    def _append_seal(self, meta: list[Meta]) -> int:
        hdr = make_header(meta, self.formats.meta, None)
        pos, _ = self.log.append(LogRecord(hdr.meta_bytes, int(self.formats.meta), None, True))
        return pos

    # -- replication (application/replication.py, docs/adr/0009) ------------------------------
    @property
    def committed_end(self) -> int:
        return self.log.committed_end

    @property
    def pending_keys(self) -> frozenset[int]:
        """Keys of the objects the open (unsealed) transaction writes or deletes."""
        return frozenset(self._pending_keys)

    @property
    def can_sign(self) -> bool:
        return self._signing is not None

    def signed_seal(self, event_hashes: Sequence[bytes], head: bytes = b"") -> list[Meta]:
        """Seal metadata for other nodes over a transaction of ``event_hashes`` (none: an
        attestation of ``head``): a timestamp, and one ML-DSA signature of the chain's root key
        over the events and that timestamp (``signed_digest``; just the timestamp in a chain
        without keys)."""
        meta: list[Meta] = [Timestamp(self.clock.now_ms())]
        if self._signing is not None:
            pk_hash, secret = self._signing
            digest = signed_digest(self.header.chain_id, event_hashes, meta, head)
            meta.insert(0, Signature(pk_hash, digest, self.crypto.sign(secret, digest)))
        elif self._read_key is not None:
            raise SessionError("the chain's signing key is not loaded yet")
        return meta

    def append_marker(self, meta: Sequence[Meta]) -> int:
        """Append an empty transaction carrying ``meta`` (replica bookkeeping), locally sealed;
        returns its position."""
        self.commit()
        seal = [*meta, *self.seal_meta(self.index.head, [])]
        pos = self._append_seal(seal)
        self.last_tx_start = pos
        return pos

    def append_foreign(
        self, records: Sequence[tuple[LogRecord, EventHeader]], seal_meta: Sequence[Meta]
    ) -> Transaction:
        """Append a transaction validated elsewhere (streamed from the chain server) with the
        seal ``seal_meta``, and apply it (but its ``Origin.skipped`` objects) to the state.
        The open local transaction is sealed first, so the two never mix."""
        self.commit()
        located: list[Located] = []
        first = -1
        for rec, hdr in records:
            pos, ref = self.log.append(rec)
            if first < 0:
                first = pos
            located.append(Located(hdr, ref, position=pos))
        seal = make_header(list(seal_meta), self.formats.meta, None)
        pos = self._append_seal(list(seal_meta))
        self.last_tx_start = first if first >= 0 else pos
        tx = Transaction(tuple(located), seal)
        self.pipeline.apply(self.index, tx.applied)
        return tx

    @property
    def unattested(self) -> bool:
        return self.index.head != self.index.attested

    def attest(self) -> bool:
        """Sign the head of the chain: one ML-DSA signature vouches for all history before it.
        Runs in the background about once a second while there are writes, and at unmount."""
        self.commit()
        if self._signing is None or not self.unattested:
            return False
        head = self.index.head
        self.last_tx_start = self._append_seal(self.signed_seal([], head))
        self.index.attested = head
        return True

    def sync(self) -> None:
        """Commit and make everything durable."""
        self.commit()
        self.log.sync()

    # -- rebuilding (compaction, repair, checkpoints) ------------------------------------------
    def shadow(self, log: RedoLog) -> ChainSession:
        """A session over ``log`` (a log being rewritten) with the same keys and empty forks of
        this session's indexers: it validates and materialises what is written to ``log``,
        apart from this one, until ``adopt`` takes its state over."""
        twin = ChainSession(log, self.header, self.crypto, self.clock, self._read_key, self.formats)
        twin._unwrapped = self._unwrapped  # object keys unwrapped once serve both
        twin._signing = self._signing
        for ix in self.pipeline.indexers:
            if not isinstance(ix, Rebuildable):
                raise SessionError(
                    f"the indexer {type(ix).__name__} cannot be rebuilt: compaction is disabled"
                )
            twin.pipeline.indexers.append(ix.fork(twin))
        return twin

    def adopt(self, twin: ChainSession) -> None:
        """Take the state ``twin`` (from ``shadow``) built, in place, and its log."""
        if self._pending:
            raise SessionError("cannot switch logs with a transaction pending")
        self.index.adopt(twin.index)
        for mine, theirs in zip(self.pipeline.indexers, twin.pipeline.indexers, strict=True):
            assert isinstance(mine, Rebuildable) and isinstance(theirs, Rebuildable)
            mine.adopt(theirs)
        self.log = twin.log
        self.last_tx_start = twin.last_tx_start

    def accept(self, tx: Transaction) -> None:
        """Validate and apply one transaction (read from elsewhere than this session's log)."""
        try:
            self.pipeline.accept(self.index, tx)
        except DomainError as exc:
            raise ChainIntegrityError(f"a rewritten transaction fails validation: {exc}") from None

    def seal_meta(self, tx_head: bytes, event_hashes: Sequence[bytes]) -> list[Meta]:
        """The metadata of a local seal over a transaction of ``event_hashes`` that follows
        ``tx_head`` (just a timestamp in a chain without keys)."""
        meta: list[Meta] = [Timestamp(self.clock.now_ms())]
        if self._seal_key is not None:
            digest = transaction_digest(self.header.chain_id, event_hashes)
            meta.insert(0, LocalSeal(local_mac(self._seal_key, tx_head, digest)))
        return meta

    @property
    def checkpoint_key(self) -> bytes | None:
        """The key that seals this chain's checkpoints (None for a chain without keys)."""
        return checkpoint_key(self._read_key) if self._read_key is not None else None
