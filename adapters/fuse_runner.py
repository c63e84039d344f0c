"""Runs a pyfuse3 file system on asyncio (see docs/adr/0002) until it is unmounted or signalled.

The file system is unmounted and its log written out and closed on every way out: a clean
``fusermount3 -u``, SIGINT/SIGTERM, or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import pyfuse3
import pyfuse3.asyncio

from adapters.fuse_ops import FuseOperations, GroupCommitter
from application.filesystem import FileSystemService

log = logging.getLogger("wasmer_dfs.fuse")

TICK_SECONDS = 0.25
IDLE_COMMIT_SECONDS = 1.0


def fuse_options(*, allow_other: bool, allow_root: bool, read_only: bool, fsname: str) -> set[str]:
    opts = {f"fsname={fsname}", "subtype=wasmer-dfs", "default_permissions", "noatime"}
    if allow_other:
        opts.add("allow_other")
    elif allow_root:
        opts.add("allow_root")
    opts.add("ro" if read_only else "rw")
    return opts


async def _ticker(service: FileSystemService) -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        try:
            service.tick(IDLE_COMMIT_SECONDS)
        except Exception:
            log.exception("background commit failed")


def run(
    service: FileSystemService,
    mountpoint: str,
    options: set[str],
    *,
    writeback: bool,
    read_only: bool,
    on_mounted: Callable[[], None] = lambda: None,
) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks."""
    pyfuse3.asyncio.enable()

    async def main() -> None:
        committer = GroupCommitter(service)
        ops = FuseOperations(service, committer, writeback=writeback, read_only=read_only)
        pyfuse3.init(ops, mountpoint, options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        tasks = [asyncio.create_task(committer.run())]
        if not read_only:
            tasks.append(asyncio.create_task(_ticker(service)))
        try:
            on_mounted()
            await pyfuse3.main(min_tasks=2, max_tasks=64)
        finally:
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)
