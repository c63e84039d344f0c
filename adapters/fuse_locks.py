"""The FUSE lock handlers: a mixin for a ``pyfuse3.Operations`` on the patched pyfuse3
(docs/adr/0006, docs/adr/0010). A thin translator like ``adapters/fuse_ops.py``: it converts
``LockInfo`` and flock operations into ``LockService`` calls and errors into ``FUSEError``.

    class FuseOperations(LockOps, pyfuse3.Operations):
        def __init__(self, ..., locks: LockService | None = None):
            ...
            self.init_locks(locks)          # turns enable_flock / enable_posix_locks on

        async def release(self, fh):
            await self.release_lock_handle(fh)   # OFD locks: the kernel sends nothing else
            ...

Without a lock service the capabilities stay off and the kernel keeps locks to itself (local
to this mount), as with an unpatched pyfuse3.

Cancellation: a FUSE_INTERRUPT (the caller was signalled or killed) or ``pyfuse3.terminate()``
cancels the handler's task; ``asyncio.CancelledError`` passes through untouched, and the lock
service leaves nothing half taken behind.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
from typing import Any

import pyfuse3

from application.locks import LockService
from application.ports import Holder, LockRefused
from domain.fs.model import FsError
from domain.locks import EOF, Kind

log = logging.getLogger("wasmer_dfs.fuse")

_KINDS = {fcntl.F_RDLCK: Kind.READ, fcntl.F_WRLCK: Kind.WRITE, fcntl.F_UNLCK: Kind.UNLOCK}
_TYPES = {Kind.READ: fcntl.F_RDLCK, Kind.WRITE: fcntl.F_WRLCK}
_FLOCK_KINDS = {fcntl.LOCK_SH: Kind.READ, fcntl.LOCK_EX: Kind.WRITE, fcntl.LOCK_UN: Kind.UNLOCK}


class LocksUnsupported(RuntimeError):
    """The installed pyfuse3 lacks the wasmer-dfs patch (pyfuse3.WASMER_DFS_PATCH)."""


def patched() -> bool:
    return getattr(pyfuse3, "WASMER_DFS_PATCH", 0) >= 1


def lock_range(lock: pyfuse3.LockInfo) -> tuple[int, int]:
    """``[start, end)`` of a kernel lock (``len`` 0: to the end of the file)."""
    start, length = int(lock.start), int(lock.len)
    if start < 0 or length < 0 or start >= EOF:
        raise FsError(errno.EINVAL)
    if length == 0:
        return start, EOF
    return start, min(start + length, EOF)


def lock_info(holder: Holder) -> pyfuse3.LockInfo:
    length = 0 if holder.end >= EOF else holder.end - holder.start
    return pyfuse3.LockInfo(_TYPES[holder.kind], holder.start, length, holder.pid)


def _fuse_error(exc: BaseException) -> pyfuse3.FUSEError:
    if isinstance(exc, LockRefused):
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, FsError):
        return pyfuse3.FUSEError(exc.errno)
    log.error("lock handler failed", exc_info=exc)
    return pyfuse3.FUSEError(errno.ENOLCK)


class LockOps:
    """getlk / setlk / flock / release_locks for a pyfuse3.Operations (put it first among the
    bases). ``locks`` is the mount's ``LockService`` (None: locks stay in the kernel)."""

    locks: LockService | None = None
    enable_flock: bool = False
    enable_posix_locks: bool = False

    def init_locks(self, locks: LockService | None) -> None:
        """Serve flock(2) and fcntl(2) locks through ``locks`` (before ``pyfuse3.init``)."""
        if locks is not None and not patched():
            raise LocksUnsupported(
                f"the installed pyfuse3 {pyfuse3.__version__} lacks the wasmer-dfs patch that"
                " distributed locks need: run `bash scripts/build_pyfuse3.sh .venv`"
            )
        self.locks = locks
        self.enable_flock = self.enable_posix_locks = locks is not None

    def _service(self) -> LockService:
        if self.locks is None:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return self.locks

    async def getlk(self, fh: int, owner: int, lock: pyfuse3.LockInfo, ctx: Any) -> Any:
        locks = self._service()
        try:
            kind = _KINDS.get(lock.type)
            if kind is None or kind is Kind.UNLOCK:
                raise FsError(errno.EINVAL)
            start, end = lock_range(lock)
            holder = await locks.getlk(fh, owner, kind, start, end)
        except asyncio.CancelledError:
            raise
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error(exc) from None
        if holder is None:
            return pyfuse3.LockInfo(fcntl.F_UNLCK)
        return lock_info(holder)

    async def setlk(
        self, fh: int, owner: int, lock: pyfuse3.LockInfo, sleep: bool, ctx: Any
    ) -> None:
        locks = self._service()
        try:
            kind = _KINDS.get(lock.type)
            if kind is None:
                raise FsError(errno.EINVAL)
            start, end = lock_range(lock)
            await locks.setlk(fh, owner, kind, start, end, wait=sleep, pid=int(ctx.pid))
        except asyncio.CancelledError:
            raise
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error(exc) from None

    async def flock(self, fh: int, owner: int, op: int, ctx: Any) -> None:
        locks = self._service()
        try:
            kind = _FLOCK_KINDS.get(op & ~fcntl.LOCK_NB)
            if kind is None:
                raise FsError(errno.EINVAL)
            wait = not op & fcntl.LOCK_NB
            await locks.flock(fh, owner, kind, wait=wait, pid=int(ctx.pid))
        except asyncio.CancelledError:
            raise
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error(exc) from None

    async def release_locks(self, fh: int, owner: int, flock: bool) -> None:
        """Before FLUSH (POSIX: every close of a descriptor drops the process's locks on the
        file) and before RELEASE with flock (the open file description's flock lock). Never
        fails: a close must go on."""
        if self.locks is None:
            return
        try:
            await self.locks.release_owner(fh, owner, flock)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dropping the locks of owner %x on close failed", owner)

    async def release_lock_handle(self, fh: int) -> None:
        """Call first in ``release(fh)``: drops the locks still recorded as taken through
        ``fh`` (OFD locks, which the kernel releases without telling the file system)."""
        if self.locks is None:
            return
        try:
            await self.locks.release_handle(fh)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dropping the locks of file handle %d failed", fh)
