"""Opening a file system: the chain session plus the file-system service on top of it."""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from application import checkpoint, history
from application.compaction import Compactor, Hook, Progress
from application.filesystem import FileSystemService, FsIndexer
from application.history import Cut, PastError
from application.ports import Clock, Crypto, LogError, RedoLogFactory
from application.replica_compaction import ReplicaCompactor
from application.session import (
    DEFAULT_KDF,
    ChainHeader,
    ChainIntegrityError,
    ChainSession,
    Formats,
    SessionError,
)
from domain.compaction import CompactPolicy
from domain.formats import Format
from domain.fs.model import DEFAULT_PAGE_SIZE
from domain.fs.view import FsView
from domain.presets import Preset, PresetError, choose, settings

_log = logging.getLogger("wasmer_dfs.mount")


@dataclass(frozen=True, slots=True)
class Configuration:
    """What `--configured-for`, `--meta-format` and `--data-format` ask for (docs/adr/0014):
    ``preset`` None takes the one recorded in the chain header (else the default); a format
    None takes the preset's."""

    preset: Preset | None = None
    meta: Format | None = None
    data: Format | None = None


@dataclass(frozen=True, slots=True)
class MountRequest:
    chain: str
    passcode: bytes | None  # None: --no-auth, an unencrypted chain
    #: the formats of new records: exactly these, or chosen by a preset (``Configuration``)
    formats: Formats | Configuration
    uid: int
    gid: int
    read_only: bool = False
    page_size: int = DEFAULT_PAGE_SIZE
    kdf: tuple[int, int, int] = DEFAULT_KDF  # Argon2id iterations, memory KiB, lanes (new chains)
    #: start from the checkpoint beside the log when it is consistent with the log (and save one
    #: at unmount); False replays the whole log and leaves the checkpoint alone (verify)
    use_checkpoint: bool = True
    compaction: CompactPolicy = field(default_factory=CompactPolicy)
    #: a replica of a chain on a chain server (docs/adr/0009): its log's header is the server's
    #: (no name check), no orphan collection (another mount may hold an unlinked file open)
    remote: bool = False
    #: for a replica without a local log yet: the chain's header as the server holds it (the
    #: log is created empty; the events arrive by replication). None: a new chain is created.
    replica_header: bytes | None = None
    #: time travel (docs/adr/0023): replay only up to this time (ms since the epoch), read only,
    #: without the checkpoint; None: the whole log
    as_of_ms: int | None = None


@dataclass(slots=True)
class Mounted:
    session: ChainSession
    fs: FileSystemService
    created: bool
    cut_bytes: int
    read_only: bool = False
    transactions: int = 0
    #: compacts the log (None when read-only)
    compactor: Compactor | None = None
    #: whether the state came from a checkpoint (then ``transactions`` counts those after it)
    from_checkpoint: bool = False
    save_checkpoint: bool = True
    #: with a checkpoint, the log's records before this position were not checked at open
    #: (``checkpoint.check_prefix`` does it in the background of a mount)
    unchecked_until: int | None = None
    #: the preset this mount uses, and a warning when it differs from the one recorded
    preset: Preset = Preset.SPEED
    preset_warning: str | None = None
    #: a mount of the past: where the replay stopped (application/history.py)
    as_of: Cut | None = None

    def close(self) -> None:
        """Write out everything, save a checkpoint, and close the log (idempotent)."""
        try:
            if not self.session.log_closed and not self.read_only:
                self.fs.close()  # FsError(ENOSPC): buffered data lost to a full disk
                if self.compactor is not None and self.save_checkpoint:
                    try:
                        self.compactor.save_checkpoint()
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        # only an optimisation: the next open reads the log after the
                        # previous checkpoint (still right for its position)
                        _log.warning("no checkpoint saved: %s", exc)
        finally:
            self.session.close()


class MountService:
    def __init__(
        self,
        logs: RedoLogFactory,
        crypto: Crypto,
        clock: Clock,
        space: Callable[[], tuple[int, int, int]] | None = None,
        hook: Hook | None = None,
    ) -> None:
        self.logs = logs
        self.crypto = crypto
        self.clock = clock
        self.space = space
        self.hook = hook

    def open(self, req: MountRequest, progress: Progress | None = None) -> Mounted:
        """Open (or create) the chain; ``progress`` follows the replay ("scan", done, total)."""
        created = replica = False
        blob: bytes | None = None
        if req.as_of_ms is not None:
            if not req.read_only:
                raise SessionError("a mount of the past (--as-of) is read-only")
            if not self.logs.exists(req.chain):
                raise PastError(f"there is no log of chain {req.chain!r} here to travel back in")
            req = dataclasses.replace(req, use_checkpoint=False)
        try:
            preset, warning = self._preset(req)
            formats = self._formats(req.formats, preset)
            if self.logs.exists(req.chain):
                if req.use_checkpoint:
                    try:
                        blob = self.logs.read_checkpoint(req.chain)
                    except OSError:
                        blob = None
                session = ChainSession.open(
                    self.logs, req.chain, req.passcode, self.crypto, self.clock, formats,
                    read_only=req.read_only, resume_at=checkpoint.resume_position(blob),
                    check_name=not req.remote,
                )  # fmt: skip
            elif req.replica_header is not None:
                session = ChainSession.create_replica(
                    self.logs, req.chain, req.replica_header, req.passcode, self.crypto,
                    self.clock, formats,
                )  # fmt: skip
                replica = True
            else:
                if req.read_only:
                    raise ChainIntegrityError(f"there is no chain {req.chain!r} to mount read-only")
                session = ChainSession.create(
                    self.logs, req.chain, req.passcode, self.crypto, self.clock, formats,
                    req.page_size, kdf=req.kdf, configured_for=preset.value,
                )  # fmt: skip
                created = True
        except LogError as exc:
            raise ChainIntegrityError(str(exc)) from None
        session.progress = progress
        indexer = FsIndexer(FsView(), session)
        session.add_indexer(indexer)
        fs = FileSystemService(session, indexer, self.clock, formats.data, self.space)
        transactions = 0
        loader = checkpoint.Loader(blob)
        del blob  # the loader holds it alone, and drops it once decrypted
        compactor = None
        as_of = None
        try:
            if req.as_of_ms is not None:
                as_of = history.replay_until(session, req.as_of_ms)
                transactions = as_of.transactions
            elif not created and not replica:
                transactions = session.start(
                    restore=loader if req.use_checkpoint else None, key_optional=req.remote
                )
            if not req.read_only:
                if not req.remote or created:
                    fs.format_if_empty(req.uid, req.gid)
                if not req.remote:
                    fs.collect_orphans()
                # a replica's compaction keeps its bookkeeping with the server (ADR 0007)
                kind = ReplicaCompactor if req.remote else Compactor
                compactor = kind(
                    self.logs, req.chain, session, self.clock, req.compaction,
                    mark=loader.mark, hook=self.hook,
                )  # fmt: skip
        except BaseException:
            session.close()
            raise
        return Mounted(
            session,
            fs,
            created,
            session.log.open_report.cut_bytes,
            req.read_only,
            transactions,
            compactor=compactor,
            from_checkpoint=loader.used and session.replayed_from is not None,
            save_checkpoint=req.use_checkpoint,
            unchecked_until=session.replayed_from if loader.used else None,
            preset=preset,
            preset_warning=warning,
            as_of=as_of,
        )

    def recorded_preset(self, chain: str, header: bytes | None = None) -> str | None:
        """The preset recorded in the header of ``chain``'s local log, else in ``header`` (the
        server's, for a new replica); None: none recorded (a chain from before presets), or no
        header yet (a new chain)."""
        if self.logs.exists(chain):
            header = self.logs.read_header(chain)
        if header is None:
            return None
        return ChainHeader.decode(header).configured_for

    def _preset(self, req: MountRequest) -> tuple[Preset, str | None]:
        explicit = req.formats.preset if isinstance(req.formats, Configuration) else None
        recorded = self.recorded_preset(req.chain, req.replica_header)
        try:
            return choose(explicit, recorded)
        except PresetError as exc:
            raise SessionError(str(exc)) from None

    @staticmethod
    def _formats(asked: Formats | Configuration, preset: Preset) -> Formats:
        if isinstance(asked, Formats):
            return asked
        chosen = settings(preset)
        return Formats(asked.meta or chosen.meta, asked.data or chosen.data)
