"""A chain session: opens or creates a chain on a redo log, replays and validates it, and writes
new events - encrypted, hashed, and sealed per transaction with one ML-DSA signature.

Encryption (see docs/adr/0004): the passcode gives the chain's read key through salted Argon2id
(salt and cost in the log header). Every object has its own random key, wrapped by the read key
and carried in the event's ``Confidentiality`` metadata; event data is AES-256-GCM under the
object key, with the chain id and the metadata hash as associated data, so data cannot be moved
to another event, object or chain without detection.

The session keeps the log, the index and its pipeline, and writes, deletes, commits, attests
and replays; it delegates the rest to rooms of one job each:

* application/chain_header.py - the chain header and its Argon2id bounds;
* application/keys.py - ``ChainKeys``: the read key and passcode check, object keys, the
  signing key, the local seal and checkpoint keys;
* application/payloads.py - ``PayloadMapper``: payload bytes to stored bytes and back;
* application/twins.py - compaction twins: ``Rebuildable``, ``shadow``, ``adopt``, ``reset``;
* application/session_errors.py - the errors.

Every name other modules import from here (the header, the keys' constants, ``ObjectKey``, the
errors) is re-exported.

Why this module is over ~500 lines (about 620): ``ChainSession`` is one object whose state -
the log, the index, the open transaction (pending hashes and keys, its head and start) and
``last_tx_start`` - must change together on every write, commit, seal, replay and switch of
logs; splitting those would spread one invariant over several classes. About 60 of its lines
are thin delegates to the rooms above that keep the session's public methods working for its
many callers (``new_object_key``, ``read_payload``, ``shadow``...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from application import twins
from application.chain_header import DEFAULT_KDF, HEADER_VERSION, ChainHeader, KdfHeader
from application.keys import CHAIN_KEY_OBJECT, TYPE_CHAIN_KEY, ChainKeys, ObjectKey
from application.payloads import PayloadMapper
from application.ports import (
    Clock,
    Crypto,
    DataRef,
    LogError,
    LogRecord,
    RedoLog,
    RedoLogFactory,
    ScannedRecord,
)
from application.session_errors import (
    ChainIntegrityError,
    ChainMismatch,
    SessionError,
    WrongPasscode,
)
from application.snapshot import no_gc
from application.twins import Rebuildable
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
    EventHeader,
    Meta,
    Nonce,
    Parent,
    Timestamp,
    Tombstone,
    Type,
    encode_meta,
    make_header,
    parse_header,
)
from domain.formats import Format
from domain.hashing import EMPTY_HASH, sha256_of, transaction_digest
from domain.trust import signed_digest

__all__ = [
    "CHAIN_KEY_OBJECT",
    "DEFAULT_KDF",
    "HEADER_VERSION",
    "ChainHeader",
    "ChainIntegrityError",
    "ChainMismatch",
    "ChainSession",
    "Formats",
    "KdfHeader",
    "ObjectKey",
    "Rebuildable",
    "SessionError",
    "WrongPasscode",
]

#: random bytes that make an event without encrypted data unique (``Nonce``)
NONCE_BYTES = 8

_log = logging.getLogger("wasmer_dfs.session")


@dataclass(frozen=True, slots=True)
class Formats:
    meta: Format = Format.BINCODE
    data: Format = Format.BINCODE


class ChainSession:
    """One open chain: its log, the index and pipeline that validate and materialise it, and
    the writes, commits, attestations and replays on it. Keys are ``self.keys``
    (``ChainKeys``), payload sealing ``self.payloads`` (``PayloadMapper``)."""

    def __init__(
        self,
        log: RedoLog,
        header: ChainHeader,
        crypto: Crypto,
        clock: Clock,
        read_key: bytes | None,
        formats: Formats,
        indexers: Sequence[Indexer] = (),
        *,
        keys: ChainKeys | None = None,
    ) -> None:
        """``keys``: the keys of another session of the same chain to share (a compaction
        twin); by default the session's own, from ``read_key``."""
        self.log = log
        self.header = header
        self.crypto = crypto
        self.clock = clock
        self.formats = formats
        self.keys = keys if keys is not None else ChainKeys(header, crypto, read_key)
        self.payloads = PayloadMapper(crypto, header.chain_id, self.keys.encrypted)
        self.index = ChainIndex(chain_id=header.chain_id, root_write=header.root_write)
        authenticators: list[Authenticator] = [
            SignatureValidator(crypto.verify, legacy=header.version < 2)
        ]
        if self.keys.seal_key is not None and header.root_key_hash is not None:
            authenticators.append(LocalSealAuthenticator(self.keys.seal_key, header.root_key_hash))
        self.pipeline = Pipeline(
            validators=[ShapeValidator(local=True), AuthorizationValidator(authenticators)],
            indexers=list(indexers),
        )
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
        """A new chain (encrypted unless ``passcode`` is None) on a new log: its header, and
        for an encrypted chain the key object with the signing key, signed and attested."""
        chain_id = crypto.random(16)
        new = ChainKeys.new_chain(crypto, passcode, chain_id, kdf) if passcode is not None else None
        header = ChainHeader(
            version=HEADER_VERSION,
            chain_id=chain_id,
            name=chain,
            created_ms=clock.now_ms(),
            encrypted=new is not None,
            kdf=new.kdf if new else None,
            key_check=new.key_check if new else b"",
            root_key_hash=new.root_key_hash if new else None,
            page_size=page_size,
            configured_for=configured_for,
        )
        log = logs.create(chain, header.encode())
        read_key = new.read_key if new else None
        session = cls(log, header, crypto, clock, read_key, formats, indexers)
        if new is not None:
            obj = session.keys.new_key_object(new)
            session.write(
                CHAIN_KEY_OBJECT,
                type_name=TYPE_CHAIN_KEY,
                payload=None,
                raw_data=obj.sealed_secret,
                okey=obj.okey,
                extra=obj.meta,
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
        read_key = ChainKeys.check_passcode(header, passcode, crypto)
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
        read_key = ChainKeys.check_passcode(header, passcode, crypto)
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
            if self.keys.encrypted and (not key_optional or CHAIN_KEY_OBJECT in self.index.objects):
                self.load_signing_key()
        except BaseException:
            self.log.close()
            raise
        return count

    def reset(self) -> None:
        """Forget the replayed state (index and indexers) in place."""
        twins.reset(self)

    @staticmethod
    def check_passcode(header: ChainHeader, passcode: bytes | None, crypto: Crypto) -> bytes | None:
        """The read key ``passcode`` gives (``ChainKeys.check_passcode``)."""
        return ChainKeys.check_passcode(header, passcode, crypto)

    def load_signing_key(self) -> None:
        """Unseal the chain's signing key from its key object (after a replay)."""
        self.keys.load_signing_key(self.index, self.log, self._parse)

    @property
    def _signing(self) -> tuple[bytes, bytes] | None:
        """(public key hash, secret key) of the chain's signing key once loaded (tests read
        it; ``self.keys.signing``)."""
        return self.keys.signing

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
        data_hash = rec.data.data_hash if rec.data is not None else sha256_of(b"")
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

    # -- keys (application/keys.py) -----------------------------------------------------------
    @property
    def encrypted(self) -> bool:
        return self.keys.encrypted

    def new_object_key(self) -> ObjectKey:
        return self.keys.new_object_key()

    def unwrap(self, conf: Confidentiality) -> bytes:
        return self.keys.unwrap(conf)

    def object_key(self, conf: Confidentiality) -> ObjectKey:
        return self.keys.object_key(conf)

    @property
    def checkpoint_key(self) -> bytes | None:
        """The key that seals this chain's checkpoints (None for a chain without keys)."""
        return self.keys.checkpoint_key

    # -- data (application/payloads.py) --------------------------------------------------------
    def read_payload(self, hdr: EventHeader, ref: DataRef) -> bytes:
        """The plaintext of an event's data (read from disk, verified, decrypted)."""
        conf = hdr.find(Confidentiality)
        okey = self.keys.object_key(conf) if isinstance(conf, Confidentiality) else None
        return self.read_sealed(ref, hdr.meta_hash, okey)

    def read_sealed(self, ref: DataRef, meta_hash: bytes, okey: ObjectKey | None) -> bytes:
        """Data at ``ref`` of the event whose metadata hashes to ``meta_hash``, decrypted."""
        try:
            raw = self.log.read_data(ref)
        except LogError as exc:
            raise ChainIntegrityError(str(exc)) from None
        return self.payloads.from_stored(raw, ref.offset, meta_hash, okey)

    def open_payload(self, hdr: EventHeader, raw: bytes, offset: int = -1) -> bytes:
        """The plaintext of an event's data given its bytes as stored (``ChainIntegrityError``
        when they do not authenticate)."""
        conf = hdr.find(Confidentiality)
        okey = self.keys.object_key(conf) if isinstance(conf, Confidentiality) else None
        return self.payloads.from_stored(raw, offset, hdr.meta_hash, okey)

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
        else:
            data = self.payloads.to_stored(payload, okey, meta_bytes)
        hdr = EventHeader(
            meta=tuple(meta),
            meta_bytes=meta_bytes,
            data_hash=sha256_of(data) if data else EMPTY_HASH,
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
        if sign and self.keys.can_sign:
            meta = self.signed_seal(self._pending)
        else:
            meta = self.seal_meta(self._tx_head, self._pending)
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
        return self.keys.can_sign

    def signed_seal(self, event_hashes: Sequence[bytes], head: bytes = b"") -> list[Meta]:
        """Seal metadata for other nodes over a transaction of ``event_hashes`` (none: an
        attestation of ``head``): a timestamp, and one ML-DSA signature of the chain's root key
        over the events and that timestamp (``signed_digest``; just the timestamp in a chain
        without keys)."""
        meta: list[Meta] = [Timestamp(self.clock.now_ms())]
        if self.keys.signing is not None:
            digest = signed_digest(self.header.chain_id, event_hashes, meta, head)
            meta.insert(0, self.keys.signature(digest))
        elif self.keys.encrypted:
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
        if self.keys.signing is None or not self.unattested:
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
        apart from this one, until ``adopt`` takes its state over (application/twins.py)."""
        return twins.shadow(self, log)

    def adopt(self, twin: ChainSession) -> None:
        """Take the state ``twin`` (from ``shadow``) built, in place, and its log."""
        twins.adopt(self, twin)

    def accept(self, tx: Transaction) -> None:
        """Validate and apply one transaction (read from elsewhere than this session's log)."""
        try:
            self.pipeline.accept(self.index, tx)
        except DomainError as exc:
            raise ChainIntegrityError(f"a rewritten transaction fails validation: {exc}") from None

    def seal_meta(
        self, tx_head: bytes, event_hashes: Sequence[bytes], at_ms: int | None = None
    ) -> list[Meta]:
        """The metadata of a local seal over a transaction of ``event_hashes`` that follows
        ``tx_head`` (just a timestamp in a chain without keys), stamped ``at_ms`` (default now:
        a compaction keeps the time of the transactions it re-seals)."""
        meta: list[Meta] = [Timestamp(self.clock.now_ms() if at_ms is None else at_ms)]
        if self.keys.seal_key is not None:
            digest = transaction_digest(self.header.chain_id, event_hashes)
            meta.insert(0, self.keys.local_seal(tx_head, digest))
        return meta
