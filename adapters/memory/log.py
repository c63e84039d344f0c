"""Twin of ``RedoLogFactory`` (application/ports/log.py): in-memory logs with the file logs'
semantics, plus ``crash()`` and a settable ``space`` for tests.

It shares the frame codec (adapters/redolog_format.py) and ``LogBase`` (adapters/redolog_base.py)
with ``FileRedoLogFactory``, so it writes the same bytes under the same torn-tail and damage
rules (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from adapters.redolog_base import DamagedReader, LogBase, LogStorage
from adapters.redolog_format import encode_header, parse_header, validate_chain_name
from application.ports import (
    DamagedLog,
    LogError,
    LogExists,
    LogNotFound,
    RedoLog,
    RedoLogFactory,
)


class MemoryDisk:
    """The bytes of one in-memory log and how many of them are durable."""

    __slots__ = ("data", "synced")

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.synced = len(data)


class DiskSpace:
    """The room left on the "disk" of a ``MemoryRedoLogFactory`` (None: unlimited); tests set
    ``free`` to make appends fail with ENOSPC, as a full disk does."""

    __slots__ = ("free",)

    def __init__(self, free: int | None = None) -> None:
        self.free = free


class _MemoryStorage(LogStorage):
    def __init__(self, disk: MemoryDisk, where: str, space: DiskSpace | None = None) -> None:
        self.disk = disk
        self.where = where
        self.closed = False
        self.space = space if space is not None else DiskSpace()

    def free_space(self, end: int) -> int | None:
        return self.space.free

    def pread(self, offset: int, n: int) -> bytes:
        if self.closed:
            raise LogError(f"{self.where}: the log is closed")
        return bytes(self.disk.data[offset : offset + n])

    def size(self) -> int:
        return len(self.disk.data)

    def append(self, parts: Sequence[bytes]) -> None:
        data = self.disk.data
        space = self.space
        for p in parts:
            if space.free is not None:
                if len(p) > space.free:  # what fits is written, as a full disk does
                    data.extend(p[: space.free])
                    space.free = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                space.free -= len(p)
            data.extend(p)

    def truncate(self, length: int) -> None:
        cut = len(self.disk.data) - length
        del self.disk.data[length:]
        self.disk.synced = len(self.disk.data)
        if self.space.free is not None and cut > 0:
            self.space.free += cut

    def sync(self) -> None:
        self.disk.synced = len(self.disk.data)

    def close(self) -> None:
        self.closed = True


class MemoryRedoLog(LogBase):
    """A redo log whose "disk" is a ``bytearray``; obtain it from ``MemoryRedoLogFactory``."""

    def __init__(
        self,
        disk: MemoryDisk,
        chain: str,
        *,
        read_only: bool = False,
        create_body: bytes | None = None,
        resume_at: int | None = None,
        temp_of: str | None = None,
        space: DiskSpace | None = None,
    ) -> None:
        self.disk = disk
        self.temp_of = temp_of
        super().__init__(
            _MemoryStorage(disk, f"memory log {chain!r}", space),
            read_only=read_only,
            create_body=create_body,
            resume_at=resume_at,
        )

    @property
    def closed(self) -> bool:
        return self._storage.closed


class MemoryRedoLogFactory(RedoLogFactory):
    """In-memory logs with the semantics of the file logs, plus ``crash()`` for tests."""

    def __init__(self) -> None:
        #: the room left on the in-memory "disk" of every log (unlimited unless a test sets it)
        self.space = DiskSpace()
        self._disks: dict[str, MemoryDisk] = {}
        self._open: list[MemoryRedoLog] = []
        self._checkpoints: dict[str, bytes] = {}
        #: logs kept aside by ``preserve``, by name
        self.preserved: dict[str, bytes] = {}

    def _disk(self, chain: str) -> MemoryDisk:
        disk = self._disks.get(validate_chain_name(chain))
        if disk is None:
            raise LogNotFound(f"no log for chain {chain!r}")
        return disk

    def disk(self, chain: str) -> bytearray:
        """The live bytes of a log: tests may flip or cut them."""
        return self._disk(chain).data

    def chains(self) -> list[str]:
        return sorted(self._disks)

    def crash(self) -> None:
        """Lose everything not synced, as a power cut would; every open log is closed (and
        temporary logs not yet put in place are gone)."""
        for log in self._open:
            log.close()
        self._open.clear()
        for disk in self._disks.values():
            del disk.data[disk.synced :]

    def exists(self, chain: str) -> bool:
        return validate_chain_name(chain) in self._disks

    def _track(self, log: MemoryRedoLog) -> MemoryRedoLog:
        self._open = [lg for lg in self._open if not lg._storage.closed]
        self._open.append(log)
        return log

    def _check_no_writer(self, chain: str, disk: MemoryDisk) -> None:
        for lg in self._open:
            if lg.disk is disk and not lg.read_only and not lg._storage.closed:
                raise LogError(
                    f"memory log {chain!r}: the log is already open for writing"
                    " (is the chain mounted?)"
                )

    def create(self, chain: str, header: bytes) -> RedoLog:
        if self.exists(chain):
            raise LogExists(f"a log for chain {chain!r} already exists")
        disk = self._disks[chain] = MemoryDisk(encode_header(header))
        return self._track(MemoryRedoLog(disk, chain, create_body=header, space=self.space))

    def open(self, chain: str, *, read_only: bool = False, resume_at: int | None = None) -> RedoLog:
        disk = self._disk(chain)
        if not read_only:
            self._check_no_writer(chain, disk)
        return self._track(
            MemoryRedoLog(disk, chain, read_only=read_only, resume_at=resume_at, space=self.space)
        )

    def read_header(self, chain: str) -> bytes:
        data = self._disk(chain).data
        return parse_header(
            lambda off, n: bytes(data[off : off + n]), len(data), f"memory log {chain!r}"
        )[0]

    def remove(self, chain: str) -> None:
        """Forget the log; like an unlinked file, logs already open on it stay usable."""
        self._disk(chain)
        del self._disks[chain]
        self._checkpoints.pop(chain, None)

    # -- rewriting -------------------------------------------------------------------------------
    def create_temp(self, chain: str, header: bytes) -> RedoLog:
        validate_chain_name(chain)
        disk = MemoryDisk(encode_header(header))
        disk.synced = 0  # a new file: nothing of it is durable before its first sync
        return self._track(
            MemoryRedoLog(
                disk,
                f"{chain} (temporary)",
                create_body=header,
                temp_of=chain,
                space=self.space,
            )
        )

    def _temp(self, log: RedoLog, chain: str | None = None) -> MemoryRedoLog:
        if (
            not isinstance(log, MemoryRedoLog)
            or log.temp_of is None
            or (chain is not None and log.temp_of != chain)
            or log not in self._open
        ):
            raise LogError("not a temporary log of this chain (see create_temp)")
        if log.closed:
            raise LogError("the temporary log is closed")
        return log

    def replace(self, chain: str, log: RedoLog) -> None:
        tmp = self._temp(log, chain)
        tmp.sync()
        self._disks[validate_chain_name(chain)] = tmp.disk
        tmp.temp_of = None
        tmp._storage.where = f"memory log {chain!r}"

    def discard(self, log: RedoLog) -> None:
        self._temp(log).close()

    def preserve(self, chain: str, suffix: str) -> str:
        name = f"{validate_chain_name(chain)}.log.{suffix}"
        if name in self.preserved:
            raise LogExists(f"{name} exists already")
        self.preserved[name] = bytes(self._disk(chain).data)
        return name

    def open_damaged(self, chain: str) -> DamagedLog:
        disk = self._disk(chain)
        self._check_no_writer(chain, disk)
        copy = MemoryDisk(bytes(disk.data))
        return DamagedReader(_MemoryStorage(copy, f"memory log {chain!r}"))

    # -- checkpoints -----------------------------------------------------------------------------
    def write_checkpoint(self, chain: str, blob: bytes) -> None:
        self._checkpoints[validate_chain_name(chain)] = bytes(blob)

    def read_checkpoint(self, chain: str) -> bytes | None:
        return self._checkpoints.get(validate_chain_name(chain))

    def remove_checkpoint(self, chain: str) -> None:
        self._checkpoints.pop(validate_chain_name(chain), None)

    def checkpoint(self, chain: str) -> bytes | None:
        """The stored checkpoint (tests may damage it with ``put_checkpoint``)."""
        return self._checkpoints.get(chain)

    def put_checkpoint(self, chain: str, blob: bytes) -> None:
        self._checkpoints[chain] = blob
