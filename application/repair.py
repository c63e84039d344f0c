"""Repair: salvage every intact object of a damaged log into a new log (``wasmer-dfs verify
--repair``), with the copy-and-reseal machinery of compaction (docs/adr/0007).

1. Read the damaged log record by record, past damage. A transaction is kept only when all of
   it was read: one that a damaged span touches, and an unfinished one at the end, is dropped.
2. Fold the kept events and plan as compaction does, keeping only objects whose parent chain is
   intact. Every planned version's data is read and checked (hash, and authentication tag under
   its object key); a version that fails is left out and the plan made again, so the newest
   *intact* version of each object is kept.
3. At the file level: a dentry whose inode was lost is dropped; an inode that lost every name is
   saved into ``/lost+found``.
4. The new log is written beside the damaged one, validated as it is written, signed; the
   damaged log is kept under ``<log>.damaged-<time>`` and the new one renamed into place.

Trust: after damage the seals can no longer be checked (each binds the chain's head, which
depends on the lost records), so a repair trusts the metadata of every intact record and the
data that authenticates under the read key. Run it on your own log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from application.compaction import ChainRewriter, Hook, Progress
from application.filesystem import FileSystemService, FsIndexer, decode_struct
from application.fsck import fsck
from application.ports import (
    Clock,
    Crypto,
    DamagedLog,
    DamagedSpan,
    DataRef,
    LogError,
    RedoLog,
    RedoLogFactory,
)
from application.session import (
    CHAIN_KEY_OBJECT,
    ChainHeader,
    ChainIntegrityError,
    ChainSession,
    Formats,
    SessionError,
)
from domain.chain import ObjectInfo
from domain.compaction import Planner
from domain.errors import DomainError
from domain.events import EventHeader, Origin, Type, Uploaded, parse_header
from domain.fs.model import (
    ROOT_INO,
    TYPE_DENTRY,
    TYPE_INODE,
    TYPE_PAGE,
    TYPE_XATTRS,
    DentryData,
    FsError,
    InodeData,
)
from domain.fs.view import FsView
from domain.hashing import EMPTY_HASH

LOST_FOUND = b"lost+found"
#: object types whose data is sealed as event data (AES-GCM with the metadata hash bound)
FILE_TYPES = frozenset({TYPE_INODE, TYPE_DENTRY, TYPE_PAGE, TYPE_XATTRS})


class RepairError(SessionError):
    """The log cannot be repaired (the message says why); nothing was changed."""


@dataclass(slots=True)
class RepairReport:
    log_bytes: int = 0
    new_bytes: int = 0
    #: byte ranges of the damaged log where no record could be read
    damaged: list[tuple[int, int]] = field(default_factory=list)
    records: int = 0
    dropped_transactions: int = 0
    dropped_events: int = 0
    #: versions whose data failed its checks
    bad_versions: int = 0
    objects: int = 0
    #: what could not be salvaged, and what was saved with an older content, in words
    lost: list[str] = field(default_factory=list)
    older: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    #: where the damaged log was kept
    kept_as: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.damaged or self.dropped_transactions or self.bad_versions or self.lost)


@dataclass(slots=True)
class _Scan:
    """One walk over the damaged log: the events of whole transactions, and what was not."""

    report: RepairReport
    progress: Progress
    first: bool = True

    def events(
        self, dlog: DamagedLog, session: ChainSession
    ) -> Iterator[tuple[int, EventHeader, DataRef | None]]:
        rep = self.report if self.first else RepairReport()
        tx: list[tuple[int, EventHeader, DataRef | None]] = []
        broken = False  # the transaction being read lost records to damage
        size = dlog.size()
        for n, item in enumerate(dlog.records()):
            if not n & 4095:
                self.progress(
                    "scan", item.start if isinstance(item, DamagedSpan) else item.position, size
                )
            if isinstance(item, DamagedSpan):
                rep.damaged.append((item.start, item.end))
                broken = True
                continue
            rep.records += 1
            try:
                hdr: EventHeader | None = session.parse(item)
            except ChainIntegrityError:
                hdr = None  # an intact frame, but metadata that does not parse: damage too
                broken = True
            if not item.commit:
                if hdr is not None:
                    tx.append((item.position, hdr, item.data))
                continue
            if broken:
                rep.dropped_transactions += 1
                rep.dropped_events += len(tx)
            else:
                yield from tx
            tx, broken = [], False
        if tx or broken:  # an unfinished transaction at the end: a torn tail
            rep.dropped_transactions += 1
            rep.dropped_events += len(tx)
        self.first = False


class Repairer:
    def __init__(
        self,
        logs: RedoLogFactory,
        crypto: Crypto,
        clock: Clock,
        *,
        progress: Progress | None = None,
        hook: Hook | None = None,
    ) -> None:
        self.logs = logs
        self.crypto = crypto
        self.clock = clock
        self.progress: Progress = progress or (lambda phase, done, total: None)
        self.hook: Hook = hook or (lambda step, n: None)

    def repair(self, chain: str, passcode: bytes | None, formats: Formats) -> RepairReport:
        """Salvage ``chain``'s log; the damaged log is kept aside (``RepairReport.kept_as``)."""
        header = ChainHeader.decode(self.logs.read_header(chain))
        read_key = ChainSession.check_passcode(header, passcode, self.crypto)
        dlog = self.logs.open_damaged(chain)
        try:
            if _is_replica(dlog):
                raise RepairError(
                    "this log is a replica of a chain held by a chain server (its seals carry"
                    " the replica's bookkeeping with the server): a repair would rewrite it,"
                    " which a replica must not (docs/adr/0009). Delete the replica's log"
                    " directory and mount the chain's URL again to resynchronise it from the"
                    " server"
                )
            tmp = self.logs.create_temp(chain, dlog.header)
            try:
                report = self._salvage(header, read_key, formats, dlog, tmp)
            except BaseException:
                self.logs.discard(tmp)
                raise
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock.now_ms() / 1000))
            report.kept_as = self.logs.preserve(chain, f"damaged-{stamp}")
            self.hook("preserved", 0)
            self.logs.remove_checkpoint(chain)
            self.logs.replace(chain, tmp)
            self.hook("replaced", 0)
            tmp.close()
            return report
        finally:
            dlog.close()

    def _salvage(
        self,
        header: ChainHeader,
        read_key: bytes | None,
        formats: Formats,
        dlog: DamagedLog,
        tmp: RedoLog,
    ) -> RepairReport:
        report = RepairReport(log_bytes=dlog.size())
        shadow = ChainSession(tmp, header, self.crypto, self.clock, read_key, formats)
        indexer = FsIndexer(FsView(), shadow)
        shadow.add_indexer(indexer)
        scan = _Scan(report, self.progress)
        bad: set[int] = set()
        checked: dict[int, bool] = {}
        dentries: dict[int, DentryData] = {}  # position -> data, of dentry versions read back
        key_of: dict[int, int] = {}  # position -> object key, of planned newest versions
        first: dict[int, ObjectInfo] | None = None
        while True:
            planner = Planner(header.chain_id, header.root_write)
            for pos, hdr, _ in scan.events(dlog, shadow):
                if pos not in bad:
                    planner.add(pos, hdr)
            plan = planner.plan(require_parents=True)
            live = planner.index.objects
            if first is None:
                first = dict(live)
            key_of.update((info.position, key) for key, info in live.items())
            fresh = [p for p in plan.positions if p not in checked]
            failed = False
            for i, pos in enumerate(fresh):
                if not i & 255:
                    self.progress("check", i, len(fresh))
                checked[pos] = ok = self._check(dlog, shadow, pos, dentries)
                if not ok:
                    bad.add(pos)
                    report.bad_versions += 1
                    failed = True
            if not failed:
                break
        orphans = set(plan.orphans)
        kept = {k: info for k, info in live.items() if k not in orphans}
        for key in orphans:  # read the names of lost dentries too, for the report
            if live[key].type_name == TYPE_DENTRY:
                self._check(dlog, shadow, live[key].position, dentries)
        # --- names: inode -> (directory, name), newest intact dentries last -------------------
        names: dict[int, tuple[int, bytes]] = {}
        for pos, named_by in dentries.items():
            owner = key_of.get(pos)
            where = live.get(owner) if owner is not None else None
            if where is not None and where.parent is not None:
                names[named_by.inode] = (where.parent, named_by.name)
        # --- the file level: every kept dentry names a kept inode -----------------------------
        positions = list(plan.positions)
        dropped: set[int] = set()
        for key, info in kept.items():
            if info.type_name != TYPE_DENTRY:
                continue
            d = dentries.get(info.position)
            target = kept.get(d.inode) if d is not None else None
            if d is None or target is None or target.type_name != TYPE_INODE:
                dropped.add(info.position)
                leaf = d.name if d is not None else f"?dentry-{key}".encode()
                report.lost.append(f"{_path(names, info.parent, leaf)}: its file was lost")
        positions = [p for p in positions if p not in dropped]
        named = {dentries[p].inode for p in positions if p in dentries and key_of.get(p) in kept}
        # --- what was lost, and what was restored from an older version -----------------------
        assert first is not None
        lost_inodes = {
            k for k, info in first.items() if info.type_name == TYPE_INODE and k not in kept
        }
        for key in orphans:
            info = live[key]
            if info.type_name == TYPE_INODE:
                lost_inodes.add(key)
            elif info.parent is not None and info.parent not in kept:
                lost_inodes.add(info.parent)
        for ino in sorted(lost_inodes):
            report.lost.append(f"{_path(names, ino)}: lost (inode {ino} has no intact version)")
        lost_pages: dict[int, int] = {}
        for key, info in first.items():
            if info.type_name == TYPE_PAGE and key not in kept and info.parent in kept:
                lost_pages[info.parent] = lost_pages.get(info.parent, 0) + 1
        for ino, n in sorted(lost_pages.items()):
            report.lost.append(f"{_path(names, ino)}: {n} page(s) lost (they read as zeros)")
        for pos in sorted(bad):
            owner = key_of.get(pos)
            restored = kept.get(owner) if owner is not None else None
            if restored is None or restored.position == pos:
                continue
            at = restored.parent if restored.type_name in (TYPE_PAGE, TYPE_DENTRY) else owner
            report.older.append(
                f"{_path(names, at)}: its {restored.type_name} restored from an older version"
            )
        if read_key is not None and CHAIN_KEY_OBJECT not in kept:
            raise RepairError(
                "the chain's signing key was lost with the damage: this log cannot be repaired"
            )
        if ROOT_INO not in kept:
            raise RepairError("the root directory was lost: nothing can be salvaged")
        # --- write the new log ----------------------------------------------------------------
        rw = ChainRewriter(tmp, shadow, formats.meta)
        for i, pos in enumerate(positions):
            if not i & 255:
                self.progress("copy", i, len(positions))
            rec = dlog.read_record(pos)
            data = dlog.read_data(rec.data) if rec.data is not None else None
            rw.copy(rec, shadow.parse(rec), data)
            self.hook("copy", i)
        rw.seal()
        if read_key is not None:
            shadow.load_signing_key()
        fs = FileSystemService(shadow, indexer, self.clock, formats.data)
        orphan_inodes = sorted(
            ino
            for ino in fs.view.inodes
            if ino != ROOT_INO and ino not in named and not fs.view.links.get(ino)
        )
        if orphan_inodes:
            entry = fs.view.lookup(ROOT_INO, LOST_FOUND)
            lf = entry.inode if entry else fs.mkdir(ROOT_INO, LOST_FOUND, 0o700, 0, 0).ino
            for ino in orphan_inodes:
                try:
                    fs.adopt_orphan(ino, lf, f"#{ino}".encode())
                except FsError:
                    continue
                report.saved.append(f"inode {ino} lost its name: saved as /lost+found/#{ino}")
        fs.flush_all()
        shadow.attest()
        tmp.sync()
        report.problems = fsck(fs)
        report.objects = len(shadow.index.objects)
        report.new_bytes = tmp.size()
        self.hook("built", len(positions))
        return report

    @staticmethod
    def _check(
        dlog: DamagedLog, session: ChainSession, pos: int, dentries: dict[int, DentryData]
    ) -> bool:
        """Whether the version at ``pos`` reads back whole: its data's hash, its authentication
        tag, and (for the file model's structured payloads) a payload that decodes."""
        try:
            rec = dlog.read_record(pos)
            hdr = session.parse(rec)
            if rec.data is None:
                return True
            raw = dlog.read_data(rec.data)
            typ = hdr.find(Type)
            name = typ.name if typ is not None else None
            if name not in FILE_TYPES:
                return True  # e.g. the chain's key object: its seal is checked when it loads
            plain = session.open_payload(hdr, raw, rec.data.offset)
            if name == TYPE_DENTRY:
                dentries[pos] = decode_struct(plain, DentryData)
            elif name == TYPE_INODE:
                decode_struct(plain, InodeData)
        except (LogError, ChainIntegrityError):
            return False
        return True


def _is_replica(dlog: DamagedLog) -> bool:
    """Whether an intact seal of ``dlog`` carries replica bookkeeping (``Origin`` on a streamed
    transaction, ``Uploaded`` after a confirmed upload): only replicas write them."""
    for item in dlog.records():
        if isinstance(item, DamagedSpan) or not item.commit:
            continue
        data_hash = item.data.data_hash if item.data is not None else EMPTY_HASH
        try:
            seal = parse_header(item.meta, item.fmt, data_hash)
        except DomainError:
            continue  # damage: the repair proper reports it
        if seal.find(Origin) is not None or seal.find(Uploaded) is not None:
            return True
    return False


def _path(names: dict[int, tuple[int, bytes]], ino: int | None, leaf: bytes | None = None) -> str:
    """The path of ``ino`` (and ``leaf`` in it) as far as intact dentries tell; ``?N`` stands
    for a directory (inode N) whose name was lost."""
    parts: list[str] = [] if leaf is None else [leaf.decode(errors="replace")]
    hops = 0
    while ino is not None and ino != ROOT_INO and hops < 4096:
        entry = names.get(ino)
        if entry is None:
            parts.append(f"?{ino}")
            break
        ino, name = entry
        parts.append(name.decode(errors="replace"))
        hops += 1
    return "/" + "/".join(reversed(parts))
