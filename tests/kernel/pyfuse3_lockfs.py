"""A tiny in-memory FUSE file system on the *patched* pyfuse3 (docs/adr/0006), for
tests/kernel/test_pyfuse3_patch.py. Run as a script, it mounts and serves until unmounted:

    python pyfuse3_lockfs.py MOUNTPOINT LOGFILE [--locks] [--plain]

The root holds two files, ``file`` and ``other``. Every call of a handler the patch adds is
appended to LOGFILE as one JSON object a line (``{"op": "flock", ...}``), with its outcome.

* default: `LockFS`, which implements flock/getlk/setlk/release_locks/fallocate/lseek/
  copy_file_range over a simple lock table, but leaves ``enable_flock`` and
  ``enable_posix_locks`` off, so the kernel keeps locks to itself;
* ``--locks``: the same with both lock capabilities on, so locks reach the handlers;
* ``--plain``: `BaseFS`, an Operations subclass that overrides none of the new methods
  (what an unpatched-era file system looks like).

With ``--gate``, a GETATTR of ``other`` waits until ``GATE`` of them are in flight at once (or
``GATE_TIMEOUT`` passed) and records ``{"op": "gate", "opened": ...}``: it shows how many
requests the main loop runs concurrently. (Attributes are never cached, so every stat() asks.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import stat
import sys
import time
from typing import Any

import pyfuse3
import pyfuse3.asyncio

ROOT = pyfuse3.ROOT_INODE
FILES = {b"file": 2, b"other": 3}
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
GATE = 40  # more than main()'s max_tasks below
GATE_TIMEOUT = 5.0


class BaseFS(pyfuse3.Operations):
    """Lookup, attributes, open, read, write and a root listing: nothing the patch adds."""

    def __init__(self, log_path: str) -> None:
        super().__init__()
        self.log_path = log_path
        self.data: dict[int, bytearray] = {ino: bytearray() for ino in FILES.values()}
        self.fh_inode: dict[int, int] = {}
        self.next_fh = 10
        self.gate = False
        self.gate_waiting = 0
        self.gate_open: asyncio.Event | None = None

    def record(self, op: str, **fields: Any) -> None:
        line = json.dumps({"op": op, "t": time.monotonic(), **fields})
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.st_uid = os.getuid()
        e.st_gid = os.getgid()
        e.attr_timeout = 0
        e.entry_timeout = 60
        if ino == ROOT:
            e.st_mode = stat.S_IFDIR | 0o755
            e.st_nlink = 2
        else:
            e.st_mode = stat.S_IFREG | 0o666
            e.st_size = len(self.data[ino])
            e.st_blocks = (e.st_size + 511) // 512
        return e

    def init(self) -> None:
        self.record("init")

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self.attrs(ROOT)
        if name not in FILES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(FILES[name])

    async def _gate(self) -> None:
        if self.gate_open is None:
            self.gate_open = asyncio.Event()
        self.gate_waiting += 1
        if self.gate_waiting >= GATE:
            self.gate_open.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GATE_TIMEOUT):
                await self.gate_open.wait()
        self.record("gate", opened=self.gate_open.is_set())

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode != ROOT and inode not in self.data:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.gate and inode == FILES[b"other"]:
            await self._gate()
        return self.attrs(inode)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if fields.update_size and inode in self.data:
            buf = self.data[inode]
            if attr.st_size < len(buf):
                del buf[attr.st_size :]
            else:
                buf.extend(bytes(attr.st_size - len(buf)))
        return self.attrs(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return 0

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for i, (name, ino) in enumerate(sorted(FILES.items())):
            if i < start_id:
                continue
            if not pyfuse3.readdir_reply(token, name, self.attrs(ino), i + 1):
                break

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode not in self.data:
            raise pyfuse3.FUSEError(errno.EISDIR if inode == ROOT else errno.ENOENT)
        if flags & os.O_TRUNC:
            self.data[inode].clear()
        fh = self.next_fh
        self.next_fh += 1
        self.fh_inode[fh] = inode
        return pyfuse3.FileInfo(fh=fh, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self.data[self.fh_inode[fh]][off : off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        data = self.data[self.fh_inode[fh]]
        if len(data) < off:
            data.extend(bytes(off - len(data)))
        data[off : off + len(buf)] = buf
        return len(buf)

    async def release(self, fh: int) -> None:
        self.fh_inode.pop(fh, None)


class LockFS(BaseFS):
    """BaseFS plus every handler the patch adds, over an in-memory lock table."""

    def __init__(self, log_path: str, *, locks: bool) -> None:
        super().__init__(log_path)
        self.enable_flock = locks
        self.enable_posix_locks = locks
        # inode -> owner -> fcntl.LOCK_SH / fcntl.LOCK_EX
        self.flocks: dict[int, dict[int, int]] = {}
        # (inode, owner, lock) for every POSIX lock held
        self.posix: list[tuple[int, int, pyfuse3.LockInfo]] = []
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # --- flock(2) -----------------------------------------------------------------------
    def _flock_conflict(self, ino: int, owner: int, kind: int) -> bool:
        others = [k for o, k in self.flocks.get(ino, {}).items() if o != owner]
        return any(k == fcntl.LOCK_EX for k in others) or (kind == fcntl.LOCK_EX and bool(others))

    async def flock(self, fh: int, owner: int, op: int, ctx: pyfuse3.RequestContext) -> None:
        ino = self.fh_inode[fh]
        kind = op & ~fcntl.LOCK_NB
        fields = {"fh": fh, "ino": ino, "owner": owner, "lock_op": op, "pid": ctx.pid}
        if kind == fcntl.LOCK_UN:
            self.flocks.get(ino, {}).pop(owner, None)
            self.record("flock", result="ok", **fields)
            await self._notify()
            return
        if self._flock_conflict(ino, owner, kind):
            if op & fcntl.LOCK_NB:
                self.record("flock", result="EWOULDBLOCK", **fields)
                raise pyfuse3.FUSEError(errno.EWOULDBLOCK)
            self.record("flock", phase="wait", **fields)
            try:
                async with self.changed:
                    while self._flock_conflict(ino, owner, kind):
                        await self.changed.wait()
            except asyncio.CancelledError:
                self.record("flock", result="cancelled", **fields)
                raise
        self.flocks.setdefault(ino, {})[owner] = kind
        self.record("flock", result="ok", **fields)

    # --- POSIX locks --------------------------------------------------------------------
    def _posix_conflict(
        self, ino: int, owner: int, lock: pyfuse3.LockInfo
    ) -> pyfuse3.LockInfo | None:
        for l_ino, l_owner, held in self.posix:
            if l_ino != ino or l_owner == owner or not held.overlaps(lock):
                continue
            if fcntl.F_WRLCK in (held.type, lock.type):
                return held
        return None

    @staticmethod
    def _lock_fields(lock: pyfuse3.LockInfo) -> dict[str, int]:
        return {
            "type": lock.type,
            "start": lock.start,
            "len": lock.len,
            "whence": lock.whence,
            "lock_pid": lock.pid,
        }

    async def getlk(
        self, fh: int, owner: int, lock: pyfuse3.LockInfo, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.LockInfo:
        ino = self.fh_inode[fh]
        held = self._posix_conflict(ino, owner, lock)
        answer = held if held is not None else pyfuse3.LockInfo(fcntl.F_UNLCK)
        self.record(
            "getlk",
            fh=fh,
            ino=ino,
            owner=owner,
            pid=ctx.pid,
            answer=self._lock_fields(answer),
            **self._lock_fields(lock),
        )
        return answer

    async def setlk(
        self,
        fh: int,
        owner: int,
        lock: pyfuse3.LockInfo,
        sleep: bool,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        ino = self.fh_inode[fh]
        fields = {
            "fh": fh,
            "ino": ino,
            "owner": owner,
            "sleep": sleep,
            "pid": ctx.pid,
            **self._lock_fields(lock),
        }
        if lock.type != fcntl.F_UNLCK and self._posix_conflict(ino, owner, lock) is not None:
            if not sleep:
                self.record("setlk", result="EAGAIN", **fields)
                raise pyfuse3.FUSEError(errno.EAGAIN)
            self.record("setlk", phase="wait", **fields)
            try:
                async with self.changed:
                    while self._posix_conflict(ino, owner, lock) is not None:
                        await self.changed.wait()
            except asyncio.CancelledError:
                self.record("setlk", result="cancelled", **fields)
                raise
        # Simplified POSIX semantics: a new lock or an unlock replaces every overlapping
        # lock of the same owner whole (no splitting of ranges).
        self.posix = [
            (i, o, held)
            for i, o, held in self.posix
            if not (i == ino and o == owner and held.overlaps(lock))
        ]
        if lock.type != fcntl.F_UNLCK:
            self.posix.append((ino, owner, lock))
        self.record("setlk", result="ok", **fields)
        await self._notify()

    async def release_locks(self, fh: int, owner: int, flock: bool) -> None:
        ino = self.fh_inode.get(fh)
        if flock:
            dropped = int(self.flocks.get(ino or -1, {}).pop(owner, None) is not None)
        else:
            before = len(self.posix)
            self.posix = [(i, o, held) for i, o, held in self.posix if (i, o) != (ino, owner)]
            dropped = before - len(self.posix)
        self.record("release_locks", fh=fh, ino=ino, owner=owner, flock=flock, dropped=dropped)
        await self._notify()

    # --- fallocate, lseek, copy_file_range ----------------------------------------------
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        data = self.data[self.fh_inode[fh]]
        self.record("fallocate", fh=fh, mode=mode, offset=offset, length=length)
        end = offset + length
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            stop = min(end, len(data))
            if stop > offset:
                data[offset:stop] = bytes(stop - offset)
        if not mode & FALLOC_FL_KEEP_SIZE and len(data) < end:
            data.extend(bytes(end - len(data)))

    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        size = len(self.data[self.fh_inode[fh]])
        self.record("lseek", fh=fh, offset=offset, whence=whence, size=size)
        if offset >= size:
            raise pyfuse3.FUSEError(errno.ENXIO)
        return offset if whence == os.SEEK_DATA else size

    async def copy_file_range(
        self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int
    ) -> int:
        chunk = bytes(self.data[self.fh_inode[fh_in]][off_in : off_in + length])
        self.record(
            "copy_file_range",
            fh_in=fh_in,
            off_in=off_in,
            fh_out=fh_out,
            off_out=off_out,
            length=length,
            flags=flags,
            copied=len(chunk),
        )
        return await self.write(fh_out, off_out, chunk)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("log")
    parser.add_argument("--locks", action="store_true", help="enable_flock/enable_posix_locks")
    parser.add_argument("--plain", action="store_true", help="override none of the new methods")
    parser.add_argument("--gate", action="store_true", help="GETATTR of `other` waits at a gate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lockfs: %(levelname)s %(message)s")

    ops = BaseFS(args.log) if args.plain else LockFS(args.log, locks=args.locks)
    ops.gate = args.gate
    pyfuse3.asyncio.enable()

    async def serve() -> None:
        pyfuse3.init(ops, args.mountpoint, {"fsname=pyfuse3_lockfs", "default_permissions"})
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        await pyfuse3.main(min_tasks=2, max_tasks=16)

    try:
        asyncio.run(serve())
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)


if __name__ == "__main__":
    sys.exit(main())
