"""The local log of a replica as the replication service sees it (docs/adr/0009): how far the
server's stream was followed, which local transactions the server has confirmed, which are still
to go up, and how a streamed transaction is validated, recorded and applied.

All of it is read back from the log at start - ``Origin`` on the seals of streamed
transactions, ``Uploaded`` markers after confirmed uploads - so a restart neither loses nor
repeats anything. While mounted it follows the session's commits (``ChainSession.on_commit``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from application.ports import LogRecord, ScannedRecord
from application.session import ChainIntegrityError, ChainSession
from domain.chain import (
    AuthorizationValidator,
    ChainIndex,
    Located,
    SignatureValidator,
    Transaction,
    event_key,
)
from domain.errors import DomainError
from domain.events import (
    EventHeader,
    LocalSeal,
    Meta,
    Origin,
    Parent,
    Tombstone,
    Uploaded,
    encode_meta,
    parse_header,
)
from domain.hashing import EMPTY_HASH, chain_head, event_hash, genesis_head, sha256_of
from domain.trust import transaction_shape
from domain.wire import CommitRecord, WireRecord


@dataclass(frozen=True, slots=True)
class LocalTx:
    """A transaction written on this replica that the server has not confirmed yet."""

    start: int  # position of its first record
    end: int  # position after its seal
    keys: frozenset[int]
    offline: bool = True  # written while the server was not reachable (or not known)


@dataclass(frozen=True, slots=True)
class Upload:
    """Local transactions merged into one transaction signed for the server."""

    records: list[CommitRecord]
    upto: int  # the local log position after the last event it carries
    events: int
    hashes: tuple[bytes, ...] = ()  # its events' hashes (``ReplicaLog.sign`` adds the seal)


class ForgedHistory(ChainIntegrityError):
    """The chain server served a history no writer signed: a forged, reordered, dropped or
    forked one (docs/adr/0016). The replica stops following that server."""


class _Signers:
    """An authenticator that names signers already established (by the signature check over
    the whole transaction) for an authorisation check over part of it."""

    def __init__(self, signers: set[bytes]) -> None:
        self._signers = signers

    def signers(self, index: ChainIndex, tx: Transaction) -> set[bytes]:
        return self._signers


class ReplicaLog:
    def __init__(self, session: ChainSession) -> None:
        self.session = session
        #: the server position this replica has followed its chain to
        self.remote_cursor = 0
        #: the server-order head at ``remote_cursor``: the hash chain over every event of the
        #: server's chain in the server's order (b"": not known, a log from before it was kept)
        self.remote_head = b""
        #: local transactions before this log position are in the server's chain
        self.uploaded_upto = 0
        self._local: deque[LocalTx] = deque()
        self._busy: Counter[int] = Counter()
        self._offline: Counter[int] = Counter()
        #: whether the server is reachable now (local transactions made while not are offline)
        self.online = False
        self._signatures = SignatureValidator(
            session.crypto.verify, legacy=session.header.version < 2
        )
        #: hash prefixes of local events the server holds from another writer (not uploaded)
        self.drop_events: set[bytes] = set()
        #: called after each local transaction is sealed (the uploader wakes up)
        self.on_local: Callable[[], None] | None = None
        #: how often the log was replaced under it (``reload``): positions read before differ
        self.generation = 0
        self._load()
        session.on_commit = self._committed

    # -- reading the log -----------------------------------------------------------------------
    def _groups(self, start: int | None, end: int | None) -> Iterator[list[ScannedRecord]]:
        group: list[ScannedRecord] = []
        for rec in self.session.log.scan(start, end):
            group.append(rec)
            if rec.commit:
                yield group
                group = []

    def _load(self) -> None:
        log = self.session.log
        candidates: list[tuple[int, list[ScannedRecord]]] = []
        end = log.committed_end
        groups = list(self._groups(None, None))
        for i, group in enumerate(groups):
            seal = _parse(group[-1])
            tx_end = groups[i + 1][0].position if i + 1 < len(groups) else end
            origin, uploaded = seal.find(Origin), seal.find(Uploaded)
            if origin is not None:
                self._load_position(origin.end, origin.head)
            elif uploaded is not None and seal.find(LocalSeal) is not None:
                self.uploaded_upto = max(self.uploaded_upto, uploaded.upto)
                if uploaded.server_end >= 0:
                    self._load_position(uploaded.server_end, uploaded.head)
            elif len(group) > 1:
                candidates.append((tx_end, group))
        if self.remote_cursor == 0:
            self.remote_head = genesis_head(self.session.header.chain_id)
        for tx_end, group in candidates:
            if tx_end > self.uploaded_upto:
                keys = frozenset(k for k in (event_key(_parse(r)) for r in group[:-1]) if k)
                self._add(LocalTx(max(group[0].position, self.uploaded_upto), tx_end, keys))

    def reload(self) -> None:
        """Read the bookkeeping again from the session's log (after a compaction replaced it:
        the positions of pending uploads changed, docs/adr/0007). Whether a pending transaction
        was made offline is carried over (the same transactions, in the same order)."""
        before = list(self._local)
        self.remote_cursor, self.remote_head, self.uploaded_upto = 0, b"", 0
        self._local = deque()
        self._busy, self._offline = Counter(), Counter()
        self._load()
        after = list(self._local)
        self._local, self._offline = deque(), Counter()
        self._busy = Counter()
        kept = [
            LocalTx(new.start, new.end, new.keys, old.offline if old.keys == new.keys else True)
            for old, new in zip(reversed(before), reversed(after), strict=False)
        ]
        for tx in [*after[: len(after) - len(kept)], *reversed(kept)]:
            self._add(tx)
        self.generation += 1

    def _load_position(self, end: int, head: bytes) -> None:
        if end >= self.remote_cursor:
            self.remote_cursor = end
            self.remote_head = head

    def _add(self, tx: LocalTx) -> None:
        self._local.append(tx)
        self._busy.update(tx.keys)
        if tx.offline:
            self._offline.update(tx.keys)

    def _committed(self, start: int, end: int, keys: frozenset[int]) -> None:
        self._add(LocalTx(start, end, keys, offline=not self.online))
        if self.on_local is not None:
            self.on_local()

    # -- what is not confirmed yet --------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Local transactions the server has not confirmed."""
        return len(self._local)

    def unconfirmed_end(self) -> int:
        """The log position after the last local transaction (uploaded_upto when none waits)."""
        return self._local[-1].end if self._local else self.uploaded_upto

    def changed_offline(self, key: int) -> bool:
        """Whether an unconfirmed local change to ``key`` was made while disconnected."""
        return self._offline.get(key, 0) > 0

    def busy(self, key: int) -> bool:
        """Whether a local change to object ``key`` is not confirmed yet (sealed or open)."""
        return self._busy.get(key, 0) > 0 or key in self.session.pending_keys

    # -- up ------------------------------------------------------------------------------------
    def next_upload(self, max_bytes: int) -> Upload | None:
        """The next local events (at least one; whole transactions while they fit in about
        ``max_bytes``, a large transaction in parts) as one transaction for the server, not yet
        sealed (``sign``). Reads the log: on the loop, never concurrently with appends."""
        if not self._local:
            return None
        log = self.session.log
        records: list[CommitRecord] = []
        hashes: list[bytes] = []
        size = 0
        upto = self.uploaded_upto
        full = False
        for tx in self._local:
            for rec in log.scan(tx.start, tx.end):
                if rec.commit:
                    continue
                rsize = len(rec.meta) + (rec.data.length if rec.data is not None else 0)
                if records and size + rsize > max_bytes:
                    upto, full = rec.position, True  # the rest of this transaction goes next
                    break
                dh = rec.data.data_hash if rec.data is not None else EMPTY_HASH
                eh = event_hash(sha256_of(rec.meta), dh)
                if self.drop_events and eh[:8] in self.drop_events:
                    continue
                data = log.read_data(rec.data) if rec.data is not None else None
                records.append(CommitRecord(rec.meta, rec.fmt, data))
                hashes.append(eh)
                size += rsize
            else:
                upto = tx.end
            if full or size >= max_bytes:
                break
        if not records:
            # nothing left to send (every event dropped): only the position moves on
            return Upload([], upto, 0) if upto > self.uploaded_upto else None
        return Upload(records, upto, len(hashes), tuple(hashes))

    def sign(self, upload: Upload) -> Upload:
        """The upload with its seal: one ML-DSA signature over its events (~7 ms: run it off
        the loop; it touches nothing but the session's key)."""
        seal = self.session.signed_seal(upload.hashes)
        fmt = self.session.formats.meta
        records = [*upload.records, CommitRecord(encode_meta(seal, fmt), int(fmt))]
        return Upload(records, upload.upto, upload.events, upload.hashes)

    def attestation(self) -> list[CommitRecord]:
        """An attestation of the server-order head for the server (a transaction without
        events whose signature covers ``remote_head``; docs/adr/0016). One ML-DSA signature:
        run it off the loop."""
        seal = self.session.signed_seal([], self.remote_head)
        fmt = self.session.formats.meta
        return [CommitRecord(encode_meta(seal, fmt), int(fmt))]

    def mark_uploaded(self, upto: int, server_end: int, hashes: Sequence[bytes] = ()) -> None:
        """Local transactions up to ``upto`` are in the server's chain (which then ended at
        ``server_end``; -1: not known, nothing reached the server), carried there by events of
        ``hashes``: recorded in the log, so a restart does not repeat them."""
        while self._local and self._local[0].end <= upto:
            done = self._local.popleft()
            self._busy.subtract(done.keys)
            if done.offline:
                self._offline.subtract(done.keys)
        self._busy = +self._busy
        self._offline = +self._offline
        if self._local and self._local[0].start < upto:  # a large transaction, partly up
            head = self._local[0]
            self._local[0] = LocalTx(upto, head.end, head.keys, head.offline)
        self.uploaded_upto = max(self.uploaded_upto, upto)
        at = b""
        if server_end >= 0:
            self.remote_head = at = self._folded(hashes)
            self.remote_cursor = max(self.remote_cursor, server_end)
        self.session.append_marker([Uploaded(upto, server_end, at)])

    def _folded(self, hashes: Iterable[bytes]) -> bytes:
        """The server-order head after events of ``hashes`` (b"" while it is not known)."""
        head = self.remote_head
        if head:
            for eh in hashes:
                head = chain_head(head, eh)
        return head

    def check_attestation(self, seal: EventHeader) -> bool:
        """Check a streamed attestation (a transaction of only a seal) against the server-order
        head: its signatures verify under keys the chain holds, a signer may write at the
        chain's root, and they cover exactly ``remote_head``. ``ForgedHistory`` otherwise: the
        server's history differs from the one a writer signed. False when the head is not known
        (a log from before it was kept): nothing could be checked."""
        if not self.remote_head:
            return False
        index = self.session.index
        view = ChainIndex(
            chain_id=index.chain_id,
            root_write=index.root_write,
            public_keys=index.public_keys,
            head=self.remote_head,
        )
        tx = Transaction((), seal)
        try:
            signers = self._signatures.signers(view, tx)
            AuthorizationValidator([_Signers(signers)]).validate(view, tx)
        except DomainError as exc:
            raise ForgedHistory(
                "the chain server served a history that differs from the one its writers"
                f" signed (forged, reordered, dropped or forked): an attestation of the chain's"
                f" head after position {self.remote_cursor} does not hold here: {exc}"
            ) from None
        return True

    def note_remote_position(self, position: int) -> None:
        self.remote_cursor = max(self.remote_cursor, position)

    def own_upload(self, headers: Sequence[EventHeader]) -> int | None:
        """When a streamed transaction is one this replica uploaded (the stream of a new
        connection carries what an earlier one committed without seeing its confirmation):
        the local position up to which it reaches; None when it is someone else's."""
        if not self._local or not headers:
            return None
        log = self.session.log
        want = [hd.hash for hd in headers]
        got: list[bytes] = []
        for tx in self._local:
            for rec in log.scan(tx.start, tx.end):
                if len(got) == len(want):
                    return tx.end if rec.commit else rec.position
                if rec.commit:
                    continue
                dh = rec.data.data_hash if rec.data is not None else EMPTY_HASH
                got.append(event_hash(sha256_of(rec.meta), dh))
                if got[-1] != want[len(got) - 1]:
                    return None
        return None

    # -- down ----------------------------------------------------------------------------------
    def validate_remote(self, records: Sequence[WireRecord]) -> list[EventHeader]:
        """The headers of a streamed transaction (events, then seal), checked as a replica
        checks what comes from the wire: well formed, no local seal, no replica bookkeeping,
        every signature valid for this chain."""
        if not records or not records[-1].commit or records[-1].data is not None:
            raise ForgedHistory(
                "the chain server served a history that is forged: a transaction without its seal"
            )
        try:
            headers = [_wire_header(r) for r in records]
        except DomainError as exc:
            raise ForgedHistory(
                f"the chain server served a history that is forged: a malformed event: {exc}"
            ) from None
        try:
            transaction_shape(headers[:-1], headers[-1], local=False)
        except DomainError as exc:
            raise ForgedHistory(
                f"the chain server served a history that is forged: a forbidden transaction: {exc}"
            ) from None
        return headers

    def check_remote(self, headers: Sequence[EventHeader], end: int) -> list[Meta]:
        """The checks of ``append_remote`` without its effects: the seal metadata to record
        (with its ``Origin``), or ``ChainIntegrityError`` when the transaction's signatures or
        authorisation do not hold - for the objects this replica skips too."""
        index = self.session.index
        events = tuple(Located(hd, None) for hd in headers[:-1])
        whole = Transaction(events, headers[-1])
        try:
            signers = self._signatures.signers(index, whole)
        except DomainError as exc:
            raise ForgedHistory(
                "the chain server served a history that is forged (a transaction no writer"
                f" signed; tampered, swapped or dropped events): {exc}"
            ) from None
        skipped = self._skipped(index, headers[:-1])
        head = self._folded(hd.hash for hd in headers[:-1])
        seal_meta: list[Meta] = [*headers[-1].meta, Origin(end, sorted(skipped), head)]
        seal = EventHeader(
            meta=tuple(seal_meta), meta_bytes=b"", data_hash=EMPTY_HASH, fmt=headers[-1].fmt
        )
        try:
            AuthorizationValidator([_Signers(signers)]).validate(index, Transaction(events, seal))
        except DomainError as exc:
            raise ForgedHistory(
                "the chain server served a history that is forged: an unauthorised"
                f" transaction: {exc}"
            ) from None
        return seal_meta

    def append_remote(
        self, records: Sequence[WireRecord], headers: Sequence[EventHeader], end: int
    ) -> Transaction:
        """Record a streamed transaction with its server position and apply it, except to the
        objects this replica changed and the server has not confirmed (the server orders that
        change after this one) and to objects whose parent this replica no longer has.
        ``ChainIntegrityError`` when its signatures or authorisation do not hold."""
        seal_meta = self.check_remote(headers, end)
        recs = [
            (LogRecord(r.meta, r.fmt, r.data, False, hd.data_hash), hd)
            for r, hd in zip(records[:-1], headers[:-1], strict=True)
        ]
        tx = self.session.append_foreign(recs, seal_meta)
        self.remote_cursor = max(self.remote_cursor, end)
        origin = next(m for m in seal_meta if isinstance(m, Origin))
        self.remote_head = origin.head
        return tx

    def _skipped(self, index: ChainIndex, headers: Sequence[EventHeader]) -> set[int]:
        skipped: set[int] = set()
        made: set[int] = set()
        for hd in headers:
            key = event_key(hd)
            if key is None:
                continue
            parent = hd.find(Parent)
            # an object whose parent this replica no longer has (it deleted it, unconfirmed; a
            # parent skipped here but still present locally is no reason)
            orphan = (
                hd.find(Tombstone) is None
                and parent is not None
                and parent.parent not in made
                and parent.parent not in index.objects
            )
            if self.busy(key) or orphan:
                skipped.add(key)
            else:
                made.add(key)
        return skipped


def _parse(rec: ScannedRecord) -> EventHeader:
    try:
        return parse_header(rec.meta, rec.fmt, rec.data.data_hash if rec.data else EMPTY_HASH)
    except DomainError as exc:
        raise ChainIntegrityError(f"record at offset {rec.position}: {exc}") from None


def _wire_header(rec: WireRecord | CommitRecord) -> EventHeader:
    data = rec.data
    return parse_header(rec.meta, rec.fmt, sha256_of(data) if data is not None else EMPTY_HASH)
