"""Opening a file system: the chain session plus the file-system service on top of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from application.filesystem import FileSystemService, FsIndexer
from application.ports import Clock, Crypto, LogError, RedoLogFactory
from application.session import DEFAULT_KDF, ChainIntegrityError, ChainSession, Formats
from domain.fs.model import DEFAULT_PAGE_SIZE
from domain.fs.view import FsView


@dataclass(frozen=True, slots=True)
class MountRequest:
    chain: str
    passcode: bytes | None  # None: --no-auth, an unencrypted chain
    formats: Formats
    uid: int
    gid: int
    read_only: bool = False
    page_size: int = DEFAULT_PAGE_SIZE
    kdf: tuple[int, int, int] = DEFAULT_KDF  # Argon2id iterations, memory KiB, lanes (new chains)


@dataclass(slots=True)
class Mounted:
    session: ChainSession
    fs: FileSystemService
    created: bool
    cut_bytes: int
    read_only: bool = False
    transactions: int = 0

    def close(self) -> None:
        """Write out everything and close the log (idempotent)."""
        try:
            if not self.session.log_closed and not self.read_only:
                self.fs.close()
        finally:
            self.session.close()


class MountService:
    def __init__(
        self,
        logs: RedoLogFactory,
        crypto: Crypto,
        clock: Clock,
        space: Callable[[], tuple[int, int, int]] | None = None,
    ) -> None:
        self.logs = logs
        self.crypto = crypto
        self.clock = clock
        self.space = space

    def open(self, req: MountRequest) -> Mounted:
        created = False
        try:
            if self.logs.exists(req.chain):
                session = ChainSession.open(
                    self.logs, req.chain, req.passcode, self.crypto, self.clock, req.formats,
                    read_only=req.read_only,
                )  # fmt: skip
            else:
                if req.read_only:
                    raise ChainIntegrityError(f"there is no chain {req.chain!r} to mount read-only")
                session = ChainSession.create(
                    self.logs, req.chain, req.passcode, self.crypto, self.clock, req.formats,
                    req.page_size, kdf=req.kdf,
                )  # fmt: skip
                created = True
        except LogError as exc:
            raise ChainIntegrityError(str(exc)) from None
        indexer = FsIndexer(FsView(), session)
        session.add_indexer(indexer)
        fs = FileSystemService(session, indexer, self.clock, req.formats.data, self.space)
        transactions = 0
        try:
            if not created:
                transactions = session.start()
            if not req.read_only:
                fs.format_if_empty(req.uid, req.gid)
                fs.collect_orphans()
        except BaseException:
            session.close()
            raise
        return Mounted(
            session, fs, created, session.log.open_report.cut_bytes, req.read_only, transactions
        )
