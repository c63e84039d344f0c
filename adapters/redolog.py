"""The file redo log: one append-only, checksummed file per chain, ``FileRedoLogFactory``
(the production ``RedoLogFactory``) and ``FileRedoLog``.

The bytes are encoded and decoded by adapters/redolog_format.py, the log logic shared with the
in-memory twin (adapters/memory/log.py) is in adapters/redolog_base.py; this module holds what
touches files: descriptors, ``flock``, fsync of the file and its directory, free space, temporary
files for create, rewrite and checkpoints (``docs/adr/0003-redo-log-format.md``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import re
import tempfile
import time
from collections.abc import Sequence

from adapters.redolog_base import DamagedReader, LogBase, LogStorage
from adapters.redolog_format import encode_header, parse_header, repair_hint, validate_chain_name
from application.ports import (
    DamagedLog,
    LogError,
    LogExists,
    LogNotFound,
    RedoLog,
    RedoLogFactory,
)

TEMP_INFIX = ".rewrite-"  # temporary logs of compaction and repair: .<chain>.rewrite-*.tmp
CKPT_INFIX = ".ckpt-"  # checkpoints being written: .<chain>.ckpt-*.tmp


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_fd(fd: int, offset: int, n: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _FileStorage(LogStorage):
    #: ``free_space`` asks the file system again after the log grew this much, after this many
    #: seconds, and always while less than ``FREE_LOW`` is left (so freed space is seen at once)
    FREE_RECHECK_BYTES = 1 << 20
    FREE_RECHECK_SECONDS = 1.0
    FREE_LOW = 64 << 20

    def __init__(self, fd: int, path: pathlib.Path) -> None:
        self.fd = fd
        self.where = str(path)
        self.closed = False
        self.hint = repair_hint(str(path.parent))
        self._free: tuple[int, int, float] | None = None  # (free bytes, log end, when)

    def free_space(self, end: int) -> int | None:
        known = self._free
        now = time.monotonic()
        if known is not None:
            free, at, when = known
            grown = end - at
            estimate = free - max(0, grown)
            if (
                0 <= grown < self.FREE_RECHECK_BYTES
                and now - when < self.FREE_RECHECK_SECONDS
                and estimate >= self.FREE_LOW
            ):
                return estimate
        st = os.fstatvfs(self.fd)
        free = st.f_bavail * st.f_frsize
        self._free = (free, end, now)
        return free

    def pread(self, offset: int, n: int) -> bytes:
        if self.closed:
            raise LogError(f"{self.where}: the log is closed")
        return _pread_fd(self.fd, offset, n)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def append(self, parts: Sequence[bytes]) -> None:
        total = 0
        for p in parts:
            total += len(p)
        written = os.writev(self.fd, parts)
        if written == total:
            return
        # A short write (rare: a signal, or the disk filling up): write the rest.
        blob = memoryview(b"".join(parts))
        while written < total:
            n = os.write(self.fd, blob[written:])
            if n <= 0:
                raise OSError(errno.EIO, "short write to the redo log")
            written += n

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)
        os.fsync(self.fd)

    def sync(self) -> None:
        # the data and what finds it again (the file's size): the inode's times may wait
        os.fdatasync(self.fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class FileRedoLog(LogBase):
    """A redo log in one file; obtain it from ``FileRedoLogFactory``."""

    def __init__(
        self,
        fd: int,
        path: pathlib.Path,
        *,
        read_only: bool = False,
        create_body: bytes | None = None,
        resume_at: int | None = None,
        temp_of: str | None = None,
    ) -> None:
        self.path = path
        #: the chain this temporary log will replace the log of (``create_temp``), else None
        self.temp_of = temp_of
        storage = _FileStorage(fd, path)
        try:
            super().__init__(
                storage, read_only=read_only, create_body=create_body, resume_at=resume_at
            )
        except BaseException:
            storage.close()
            raise

    @property
    def closed(self) -> bool:
        return self._storage.closed

    def _moved(self, path: pathlib.Path) -> None:
        self.path = path
        self._storage.where = str(path)
        self.temp_of = None


class FileRedoLogFactory(RedoLogFactory):
    """Logs at ``directory / f"{chain}.log"``, checkpoints at ``directory / f"{chain}.ckpt"``.

    A log opened for writing holds an exclusive ``flock`` on its file (when ``lock`` is true), so
    that two processes never append to the same chain; read-only opens take no lock. A temporary
    log (``create_temp``) is locked from its creation, so when it is renamed over the chain's log
    the name stays locked by the same writer.
    """

    def __init__(self, directory: pathlib.Path | str, *, lock: bool = True) -> None:
        self.directory = pathlib.Path(directory)
        self._lock = lock

    def path(self, chain: str) -> pathlib.Path:
        return self.directory / f"{validate_chain_name(chain)}.log"

    def checkpoint_path(self, chain: str) -> pathlib.Path:
        return self.directory / f"{validate_chain_name(chain)}.ckpt"

    def exists(self, chain: str) -> bool:
        return self.path(chain).is_file()

    def create(self, chain: str, header: bytes) -> RedoLog:
        path = self.path(chain)
        blob = encode_header(header)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            raise LogExists(f"a log for chain {chain!r} already exists at {path}")
        # Write the header to a temporary file and link it into place, so that a crash never
        # leaves a log without a complete header, and an existing log is never overwritten.
        fd, tmp_name = tempfile.mkstemp(prefix=".creating-", suffix=".tmp", dir=self.directory)
        tmp = pathlib.Path(tmp_name)
        try:
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise LogExists(f"a log for chain {chain!r} already exists at {path}") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        fd = self._open_fd(path, chain, read_only=False)
        return FileRedoLog(fd, path, create_body=header)

    def _flock(self, fd: int, path: pathlib.Path) -> None:
        if not self._lock:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogError(
                f"{path}: the log is already open for writing (is the chain mounted?)"
            ) from None

    def _open_fd(self, path: pathlib.Path, chain: str, *, read_only: bool) -> int:
        flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_APPEND
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LogNotFound(f"no log for chain {chain!r} at {path}") from None
        if not read_only:
            self._flock(fd, path)
        return fd

    def open(self, chain: str, *, read_only: bool = False, resume_at: int | None = None) -> RedoLog:
        path = self.path(chain)
        fd = self._open_fd(path, chain, read_only=read_only)
        if not read_only:
            self._remove_strays(chain)  # we hold the writer's lock: no rewrite is under way
        return FileRedoLog(fd, path, read_only=read_only, resume_at=resume_at)

    def _remove_strays(self, chain: str) -> None:
        """Temporary files a crash left behind: an unfinished rewrite, an unfinished checkpoint."""
        for infix in (TEMP_INFIX, CKPT_INFIX):
            for stray in self.directory.glob(f".{chain}{infix}*.tmp"):
                stray.unlink(missing_ok=True)

    def read_header(self, chain: str) -> bytes:
        path = self.path(chain)
        fd = self._open_fd(path, chain, read_only=True)
        try:
            return parse_header(
                lambda off, n: _pread_fd(fd, off, n), os.fstat(fd).st_size, str(path)
            )[0]
        finally:
            os.close(fd)

    def remove(self, chain: str) -> None:
        path = self.path(chain)
        self.checkpoint_path(chain).unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            raise LogNotFound(f"no log for chain {chain!r} at {path}") from None
        _fsync_dir(self.directory)

    # -- rewriting -------------------------------------------------------------------------------
    def create_temp(self, chain: str, header: bytes) -> RedoLog:
        validate_chain_name(chain)
        blob = encode_header(header)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{chain}{TEMP_INFIX}", suffix=".tmp", dir=self.directory
        )
        path = pathlib.Path(name)
        try:
            os.close(fd)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            self._flock(fd, path)
            os.write(fd, blob)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return FileRedoLog(fd, path, create_body=header, temp_of=chain)

    def _temp(self, log: RedoLog, chain: str | None = None) -> FileRedoLog:
        if (
            not isinstance(log, FileRedoLog)
            or log.temp_of is None
            or (chain is not None and log.temp_of != chain)
            or log.path.parent != self.directory
        ):
            raise LogError("not a temporary log of this chain (see create_temp)")
        if log.closed:
            raise LogError(f"{log.path}: the temporary log is closed")
        return log

    def replace(self, chain: str, log: RedoLog) -> None:
        tmp = self._temp(log, chain)
        path = self.path(chain)
        tmp.sync()
        os.replace(tmp.path, path)
        _fsync_dir(self.directory)
        tmp._moved(path)

    def discard(self, log: RedoLog) -> None:
        tmp = self._temp(log)
        tmp.close()
        tmp.path.unlink(missing_ok=True)

    def preserve(self, chain: str, suffix: str) -> str:
        path = self.path(chain)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", suffix):
            raise ValueError(f"invalid suffix {suffix!r}")
        kept = path.with_name(f"{path.name}.{suffix}")
        try:
            os.link(path, kept)
        except FileNotFoundError:
            raise LogNotFound(f"no log for chain {chain!r} at {path}") from None
        except FileExistsError:
            raise LogExists(f"{kept} exists already") from None
        _fsync_dir(self.directory)
        return str(kept)

    def open_damaged(self, chain: str) -> DamagedLog:
        path = self.path(chain)
        fd = self._open_fd(path, chain, read_only=True)
        self._flock(fd, path)  # no mount may write while a repair reads
        return DamagedReader(_FileStorage(fd, path))

    # -- checkpoints -----------------------------------------------------------------------------
    def write_checkpoint(self, chain: str, blob: bytes) -> None:
        final = self.checkpoint_path(chain)
        fd, name = tempfile.mkstemp(
            prefix=f".{chain}{CKPT_INFIX}", suffix=".tmp", dir=self.directory
        )
        tmp = pathlib.Path(name)
        try:
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)

    def read_checkpoint(self, chain: str) -> bytes | None:
        try:
            return self.checkpoint_path(chain).read_bytes()
        except FileNotFoundError:
            return None

    def remove_checkpoint(self, chain: str) -> None:
        path = self.checkpoint_path(chain)
        if path.exists():
            path.unlink(missing_ok=True)
            _fsync_dir(self.directory)
