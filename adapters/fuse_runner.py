"""Runs a pyfuse3 file system on asyncio (see docs/adr/0002) until it is unmounted or signalled.

The file system is unmounted and its log written out and closed on every way out: a clean
``fusermount3 -u``, SIGINT/SIGTERM, or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

import pyfuse3
import pyfuse3.asyncio

from adapters.fuse_ops import FuseOperations, GroupCommitter
from application.checkpoint import check_prefix
from application.compaction import Compactor
from application.filesystem import FileSystemService
from application.ports import LogError

log = logging.getLogger("wasmer_dfs.fuse")

TICK_SECONDS = 0.25
IDLE_COMMIT_SECONDS = 1.0
COMPACT_CHECK_SECONDS = 1.0


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


async def compact_in_background(compactor: Compactor) -> None:
    """One compaction: the heavy part in a worker thread while the file system keeps serving,
    the switch to the new log on the loop (see application/compaction.py). Cancelling it (at
    unmount) stops the worker and leaves the old log as it was."""
    loop = asyncio.get_running_loop()
    try:
        job = compactor.begin()
    except Exception:
        log.exception("compaction could not start")
        return

    def work() -> None:
        job.build()
        job.catch_up()

    fut = loop.run_in_executor(None, work)
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        job.cancel()
        with contextlib.suppress(BaseException):
            await fut
        compactor.failed(job)
        raise
    except Exception:
        log.exception("compaction failed; the log is unchanged")
        compactor.failed(job)
        return
    try:
        r = compactor.finish(job, save_checkpoint=False)
        blob = compactor.encode_checkpoint()
    except Exception:
        log.exception("compaction failed")
        return
    if blob is not None:  # written and fsynced off the loop: the bytes no longer change
        await loop.run_in_executor(None, compactor.write_checkpoint, blob)
    log.info(
        "compacted the log: %d -> %d bytes, %d of %d events kept (%d written meanwhile), %.2f s",
        r.before, r.after, r.kept, r.events, r.tail_events, r.seconds,
    )  # fmt: skip


def _terminate() -> None:
    """``pyfuse3.terminate``, again a moment later when it races with a request that just
    arrived (pyfuse3's asyncio shim then sets an exception on an already completed future)."""
    try:
        pyfuse3.terminate()
    except asyncio.InvalidStateError:
        asyncio.get_running_loop().call_later(0.01, _terminate)


class PrefixDamaged(Exception):
    """The part of the log a checkpointed open skipped is damaged: the mount was stopped."""


async def _scrub(service: FileSystemService, until: int, failures: list[str]) -> None:
    """Check the frames of the log before ``until`` (skipped by an open from a checkpoint) in
    a worker thread; on damage, say so and stop the mount, as an open would have refused it."""
    loop = asyncio.get_running_loop()
    log_ = service.session.log
    stopping = threading.Event()
    try:
        n = await loop.run_in_executor(None, check_prefix, log_, until, stopping.is_set)
    except asyncio.CancelledError:
        stopping.set()
        raise
    except LogError as exc:
        if service.session.log is not log_:
            return  # a compaction replaced the log meanwhile (and read all of it)
        failures.append(str(exc))
        log.error("%s", exc)
        _terminate()
        return
    log.debug("checked the %d records before the checkpoint", n)


async def _compaction_checks(compactor: Compactor) -> None:
    while True:
        await asyncio.sleep(COMPACT_CHECK_SECONDS)
        try:
            due = compactor.due()
        except Exception:
            log.exception("compaction check failed")
            continue
        if due:
            await compact_in_background(compactor)


def run(
    service: FileSystemService,
    mountpoint: str,
    options: set[str],
    *,
    writeback: bool,
    read_only: bool,
    on_mounted: Callable[[], None] = lambda: None,
    compactor: Compactor | None = None,
    unchecked_until: int | None = None,
) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks. ``PrefixDamaged`` when the
    background check of the log before the checkpoint found damage (and stopped the mount)."""
    failures: list[str] = []
    pyfuse3.asyncio.enable()

    async def main() -> None:
        committer = GroupCommitter(service)
        ops = FuseOperations(service, committer, writeback=writeback, read_only=read_only)
        pyfuse3.init(ops, mountpoint, options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, _terminate)
        tasks = [asyncio.create_task(committer.run())]
        if not read_only:
            tasks.append(asyncio.create_task(_ticker(service)))
            if compactor is not None:
                tasks.append(asyncio.create_task(_compaction_checks(compactor)))
        if unchecked_until is not None:
            tasks.append(asyncio.create_task(_scrub(service, unchecked_until, failures)))
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
    if failures:
        raise PrefixDamaged(failures[0])
