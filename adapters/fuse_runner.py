"""Runs a pyfuse3 file system on asyncio (see docs/adr/0002) until it is unmounted or signalled.

The file system is unmounted and its log written out and closed on every way out: a clean
``fusermount3 -u``, SIGINT/SIGTERM, or an error.

This module is the FUSE and OS side only: the event loop, the signals, ``pyfuse3.main``, the
mount options and read-ahead. What runs beside serving, and when it acts (the idle commit,
compaction, the check of the log before a checkpoint, NTP, a replica's first sync and last
upload), is application policy in application/maintenance.py; the runner starts it at the right
moments. ``NotSynced`` and ``PrefixDamaged`` are defined there and still importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import pyfuse3.asyncio

from adapters.fuse_ops import FuseOperations, GroupCommitter
from adapters.ntp import ClockSyncError, NtpClock
from application.compaction import Compactor
from application.filesystem import FileSystemService
from application.locks import LockService
from application.maintenance import (
    CommitTicker,
    CompactionSchedule,
    NotSynced,
    PrefixDamaged,
    first_sync,
    keep_clock_synced,
    scrub_prefix,
    upload_before_unmount,
)
from application.ports import KernelCache
from application.replication import ReplicationService
from application.views import ViewService

__all__ = ["NotSynced", "PrefixDamaged", "Replicated", "fuse_options", "raise_read_ahead", "run"]

log = logging.getLogger("wasmer_dfs.fuse")

#: Kernel read-ahead for the mount (KiB). FUSE starts at 128 KiB, so a sequential read arrives as
#: 128 KiB requests; 1 MiB (the largest request the kernel sends) quarters their number.
READ_AHEAD_KB = 1024


def fuse_options(*, allow_other: bool, allow_root: bool, read_only: bool, fsname: str) -> set[str]:
    opts = {f"fsname={fsname}", "subtype=wasmer-dfs", "default_permissions", "noatime"}
    if allow_other:
        opts.add("allow_other")
    elif allow_root:
        opts.add("allow_root")
    opts.add("ro" if read_only else "rw")
    return opts


def _mount_device(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The "major:minor" of the newest mount at ``mountpoint``, from ``mountinfo`` (a stat of the
    mount point would ask this very file system, which is not serving yet)."""
    target = os.path.abspath(mountpoint)
    found = None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 5:
                    continue
                path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                if path == target:
                    found = fields[2]
    except OSError:
        return None
    return found


async def raise_read_ahead(
    mountpoint: str, initialized: asyncio.Event, kib: int = READ_AHEAD_KB
) -> None:
    """Raise the kernel's read-ahead of the mount's backing device info to ``kib`` (never lower
    it) once INIT is answered (INIT sets it, to at most what the kernel offered: 128 KiB), so
    sequential reads come in requests of up to 1 MiB instead of 128 KiB. Needs write access to
    /sys (root); otherwise the kernel's default stays."""
    await initialized.wait()
    dev = _mount_device(mountpoint)
    if dev is None:
        return
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path, "r+") as f:
            if int(f.read().strip() or 0) < kib:
                f.seek(0)
                f.write(str(kib))
    except (OSError, ValueError) as exc:
        log.debug("read-ahead of %s stays as it was: %s", mountpoint, exc)


def _terminate() -> None:
    """``pyfuse3.terminate``, again a moment later when it races with a request that just
    arrived (pyfuse3's asyncio shim then sets an exception on an already completed future)."""
    try:
        pyfuse3.terminate()
    except asyncio.InvalidStateError:
        asyncio.get_running_loop().call_later(0.01, _terminate)


@dataclass(slots=True)
class Replicated:
    """What a replicated mount runs beside the file system (built by the composition root)."""

    replication: ReplicationService
    locks: LockService
    #: the kernel's caches, handed to replication once mounted
    kernel: KernelCache
    #: starts what needs the running loop (the lock coordinator)
    start: Callable[[], None]
    #: mount only once caught up with the server, or ``first_sync_timeout`` passed (None: wait)
    wait_first_sync: bool = False
    first_sync_timeout: float | None = None


#: the signals that stop a mount (Ctrl-C, kill, the terminal closing)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop:
    """What SIGINT/SIGTERM/SIGHUP do during a run. Before the file system is mounted they end
    the wait for the first sync, and the mount does not happen; while it is served they end
    ``pyfuse3.main()`` (which then unmounts); once it is shutting down they change nothing."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.serving = False

    def __call__(self) -> None:
        self.requested.set()
        if self.serving:
            _terminate()


def _ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Take the stop signals back from the loop and ignore them from now on: the process is on
    its way out (what is left is closing the log). The signals are blocked meanwhile, so none can
    arrive in between, where the loop's removal leaves the default action (terminate)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
    replicated: Replicated | None = None,
    views: ViewService | None = None,
) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks. ``views``: the emulated files
    the composition root built (``default_views`` and the extra views; None: the built-in ones
    without the compactor). ``PrefixDamaged`` when the
    background check of the log before the checkpoint found damage (and stopped the mount);
    ``NotSynced`` when SIGINT/SIGTERM/SIGHUP came before the file system was mounted (a new
    replica that had to catch up first had not). From the start of the run, those signals are
    the runner's; when it returns or raises they are ignored (the process is stopping)."""
    failures: list[str] = []
    pyfuse3.asyncio.enable()
    replication = replicated.replication if replicated is not None else None
    locks = replicated.locks if replicated is not None else None
    stop = _Stop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:  # one handler for the whole run: no moment with the default
            loop.add_signal_handler(sig, stop)
        try:
            await replicate_and_serve()
        finally:
            _ignore_stop_signals(loop)

    async def replicate_and_serve() -> None:
        if replicated is not None:
            replicated.start()
        replicating = asyncio.create_task(replication.run()) if replication is not None else None
        try:
            if replicated is not None and replication is not None and replicated.wait_first_sync:
                await first_sync(replication, replicated.first_sync_timeout, stop.requested)
            if stop.requested.is_set():
                raise NotSynced("stopped before the file system was mounted")
            await serve()
        finally:
            if replication is not None and replicating is not None:
                await upload_before_unmount(replication)
                await replication.stop()
                replicating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replicating
            if locks is not None:
                await locks.close()

    async def scrub(until: int) -> None:
        damage = await scrub_prefix(service, until)
        if damage is not None:  # stop the mount, as an open would have refused the log
            failures.append(damage)
            _terminate()

    async def serve() -> None:
        committer = GroupCommitter(service)
        ops = FuseOperations(
            service, committer, writeback=writeback, read_only=read_only, remote=replication,
            locks=locks, views=views,
        )  # fmt: skip
        # pyfuse3.close() is only for a session that init() created: without one, libfuse's
        # fuse_session_unmount(NULL) dereferences NULL (a stop before the mount was a SIGSEGV).
        pyfuse3.init(ops, mountpoint, options)
        try:
            await serve_mounted(ops, committer)
        finally:
            with contextlib.suppress(Exception):  # unmount before the rest of the shutdown
                pyfuse3.close(unmount=True)

    async def serve_mounted(ops: FuseOperations, committer: GroupCommitter) -> None:
        if replicated is not None and replication is not None:
            replication.kernel = replicated.kernel
        tasks = [asyncio.create_task(committer.run())]
        if isinstance(service.clock, NtpClock):
            tasks.append(asyncio.create_task(keep_clock_synced(service.clock.sync, ClockSyncError)))
        tasks.append(asyncio.create_task(raise_read_ahead(mountpoint, ops.initialized)))
        if not read_only:
            tasks.append(asyncio.create_task(CommitTicker(service).run()))
            if compactor is not None:
                schedule = CompactionSchedule(
                    compactor, service, service.clock, lambda: ops.requests,
                    swap=replication.swapping if replication is not None else None,
                )  # fmt: skip
                tasks.append(asyncio.create_task(schedule.run()))
        if unchecked_until is not None:
            tasks.append(asyncio.create_task(scrub(unchecked_until)))
        try:
            on_mounted()
            stop.serving = True  # a signal queued meanwhile is handled once main() runs
            await pyfuse3.main()  # the patched asyncio loop has no worker pool (ADR 0012)
        finally:
            stop.serving = False
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if replication is not None:
                replication.kernel = None  # unmounted: nothing left to invalidate
            if replicated is not None:
                await replicated.kernel.close()  # its worker stops before the session closes

    asyncio.run(main())
    if failures:
        raise PrefixDamaged(failures[0])
