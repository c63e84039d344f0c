"""A tiny in-memory FUSE file system whose locks are served by the real lock stack: the
``LockOps`` mixin (adapters/fuse_locks.py) over ``LockService`` (application/locks.py), for
tests/kernel/test_fuse_locks.py. Run as a script, it mounts and serves until unmounted:

    python -m tests.kernel.lockops_fs MOUNTPOINT LOGFILE [--server URL --header HEX]

(from the repository's root; URL is ws://HOST:PORT/db/NAME of a chain server).

Without ``--server`` the locks are the mount's own (``MemoryLockHub``: a local-only mount);
with it they go through the chain server (``WsLockCoordinator``), so two such mounts of one
chain share their locks (their data is not shared: each mount has its own in-memory files).

The root holds ``file`` and ``other`` (BaseFS of tests/kernel/pyfuse3_lockfs.py); LOGFILE gets
one JSON line per lock handler call (phase "wait" once a request is past the mirror, result
"ok" / errno name / "cancelled"), which the tests use to know that a request is waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import sys
from typing import Any

import pyfuse3
import pyfuse3.asyncio

from adapters.clock import SystemClock
from adapters.fuse_locks import LockOps
from adapters.memory import MemoryLockHub
from adapters.ws_locks import WsLockCoordinator
from application.locks import LockService
from application.ports import LockCoordinator
from tests.kernel.pyfuse3_lockfs import BaseFS


class LockOpsFS(LockOps, BaseFS):
    """BaseFS with the production lock handlers (wrapped to log each call)."""

    async def _logged(self, op: str, fields: dict[str, Any], call: Any) -> Any:
        self.record(op, phase="wait", **fields)
        try:
            result = await call
        except asyncio.CancelledError:
            self.record(op, result="cancelled", **fields)
            raise
        except pyfuse3.FUSEError as exc:
            self.record(op, result=errno.errorcode.get(exc.errno, str(exc.errno)), **fields)
            raise
        self.record(op, result="ok", **fields)
        return result

    async def setlk(
        self, fh: int, owner: int, lock: pyfuse3.LockInfo, sleep: bool, ctx: Any
    ) -> None:
        fields = {"fh": fh, "owner": owner, "type": lock.type, "start": lock.start,
                  "len": lock.len, "sleep": sleep, "pid": ctx.pid}  # fmt: skip
        await self._logged("setlk", fields, super().setlk(fh, owner, lock, sleep, ctx))

    async def flock(self, fh: int, owner: int, op: int, ctx: Any) -> None:
        fields = {"fh": fh, "owner": owner, "lock_op": op, "pid": ctx.pid}
        await self._logged("flock", fields, super().flock(fh, owner, op, ctx))

    async def release(self, fh: int) -> None:
        await self.release_lock_handle(fh)
        self.record("release", fh=fh)
        await super().release(fh)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("log")
    parser.add_argument("--server", help="ws://HOST:PORT/db/NAME of a chain server")
    parser.add_argument("--header", help="the chain header body (hex) for --server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lockops_fs: %(levelname)s %(message)s")
    pyfuse3.asyncio.enable()

    async def serve() -> None:
        ops = LockOpsFS(args.log)
        coordinator: LockCoordinator
        if args.server:
            ws = WsLockCoordinator(
                args.server, header=bytes.fromhex(args.header) if args.header else None
            )
            ws.start()
            if not await ws.wait_online(20):
                raise SystemExit(f"cannot reach the lock server: {ws.last_error}")
            coordinator = ws
        else:
            coordinator = MemoryLockHub(SystemClock()).coordinator()
        locks = LockService(coordinator, ops.fh_inode.__getitem__)
        ops.init_locks(locks)
        pyfuse3.init(ops, args.mountpoint, {"fsname=lockops_fs", "default_permissions"})
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        try:
            await pyfuse3.main(min_tasks=2, max_tasks=16)
        finally:
            await locks.close()

    try:
        asyncio.run(serve())
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)


if __name__ == "__main__":
    sys.exit(main())
