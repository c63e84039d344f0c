"""Runs a pyfuse3 file system on asyncio (see docs/adr/0002) until it is unmounted or signalled.

The file system is unmounted and its log written out and closed on every way out: a clean
``fusermount3 -u``, SIGINT/SIGTERM, or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import pyfuse3.asyncio

from adapters.fuse_ops import FuseOperations, GroupCommitter, disk_full
from adapters.ntp import ClockSyncError, NtpClock
from application.checkpoint import check_prefix
from application.compaction import Compactor
from application.filesystem import FileSystemService
from application.locks import LockService
from application.ports import KernelCache, LogError
from application.replication import ReplicationService
from domain.compaction import live_estimate, worth_compacting

log = logging.getLogger("wasmer_dfs.fuse")

TICK_SECONDS = 0.25
IDLE_COMMIT_SECONDS = 1.0
COMPACT_CHECK_SECONDS = 1.0
NTP_RESYNC_SECONDS = 20.0
#: a due compaction waits for a second without requests, at most this long
COMPACT_OVERDUE_SECONDS = 30.0
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


async def _ticker(service: FileSystemService) -> None:
    full = False  # the disk under the log is full: said once, not every tick
    while True:
        await asyncio.sleep(TICK_SECONDS)
        try:
            service.tick(IDLE_COMMIT_SECONDS)
        except Exception as exc:
            if not disk_full(exc):
                log.exception("background commit failed")
            elif not full:
                full = True
                log.warning(
                    "the disk under the log is full (%s): buffered writes wait for room;"
                    " free space on that disk",
                    exc,
                )
        else:
            if full:
                full = False
                log.warning("the disk under the log has room again")


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


async def _keep_clock_synced(clock: NtpClock, every: float = NTP_RESYNC_SECONDS) -> None:
    """Query the NTP pool again now and then (off the loop), as the original did (~20 s)."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(clock.sync)
        except ClockSyncError as exc:
            log.debug("NTP re-synchronisation failed (the last offset stays): %s", exc)


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


class NotSynced(Exception):
    """The mount was stopped before the file system was mounted: for a new replica, before it
    caught up with the chain server."""


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


async def _first_sync(
    replication: ReplicationService, timeout: float | None, stop: asyncio.Event
) -> None:
    """Wait until the replica has caught up with the server (a new replica has no tree to show
    before; ``timeout`` None: wait for it); ``stop`` (SIGINT/SIGTERM) gives up."""
    synced = asyncio.create_task(replication.wait_synced())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((synced, stopped), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (synced, stopped):
            t.cancel()
    if replication.has_synced:
        return
    if not stop.is_set() and timeout is not None:
        log.warning("the chain server did not answer within %.0f s: mounted disconnected", timeout)
        return
    raise NotSynced(replication.state.last_error or "stopped before the first sync")


async def _upload_before_unmount(replication: ReplicationService, timeout: float) -> None:
    """At unmount, give what was written locally a chance to reach the server."""
    if not replication.state.connected:
        if replication.replica.pending:
            log.warning(
                "unmounted with %d transactions not yet on the chain server (they go up at the"
                " next mount)", replication.replica.pending,
            )  # fmt: skip
        return
    try:
        await asyncio.wait_for(replication.flush_confirmed(), timeout)
    except Exception as exc:
        log.warning("not everything reached the chain server before unmount: %s", exc)


class PrefixDamaged(Exception):
    """The part of the log a checkpointed open skipped is damaged: the mount was stopped."""


async def _scrub(service: FileSystemService, until: int, failures: list[str]) -> None:
    """Check the frames of the log before ``until`` (skipped by an open from a checkpoint) in
    a worker thread; on damage, say so and stop the mount, as an open would have refused it."""
    loop = asyncio.get_running_loop()
    scrubbed = service.session.log
    stopping = threading.Event()
    try:
        n = await loop.run_in_executor(None, check_prefix, scrubbed, until, stopping.is_set)
    except asyncio.CancelledError:
        stopping.set()
        raise
    except LogError as exc:
        if service.session.log is not scrubbed:
            return  # a compaction replaced the log meanwhile (and read all of it)
        failures.append(str(exc))
        log.error("%s", exc)
        _terminate()
        return
    log.debug("checked the %d records before the checkpoint", n)


async def _compaction_checks(
    compactor: Compactor,
    clock: Callable[[], float],
    live_bytes: Callable[[], int],
    requests: Callable[[], int],
) -> None:
    """Compact when the policy says so and it would reclaim enough (``worth_compacting``: a log
    that only grew with new data is left alone), at a quiet moment: a compaction competes with
    the requests it would interrupt for both cores, the disk and the GIL. It waits while the
    file system serves requests, at most ``COMPACT_OVERDUE_SECONDS``."""
    due_since: float | None = None
    served = requests()
    while True:
        await asyncio.sleep(COMPACT_CHECK_SECONDS)
        busy, served = requests() != served, requests()
        try:
            due = compactor.due() and worth_compacting(compactor.session.log.size(), live_bytes())
        except Exception:
            log.exception("compaction check failed")
            continue
        if not due:
            due_since = None
            continue
        now = clock()
        due_since = now if due_since is None else due_since
        if not busy or now - due_since >= COMPACT_OVERDUE_SECONDS:
            due_since = None
            await compact_in_background(compactor)
            served = requests()


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
) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks. ``PrefixDamaged`` when the
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
                await _first_sync(replication, replicated.first_sync_timeout, stop.requested)
            if stop.requested.is_set():
                raise NotSynced("stopped before the file system was mounted")
            await serve()
        finally:
            if replication is not None and replicating is not None:
                await _upload_before_unmount(replication, 10.0)
                await replication.stop()
                replicating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replicating
            if locks is not None:
                await locks.close()

    async def serve() -> None:
        committer = GroupCommitter(service)
        ops = FuseOperations(
            service, committer, writeback=writeback, read_only=read_only, remote=replication,
            locks=locks,
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
            tasks.append(asyncio.create_task(_keep_clock_synced(service.clock)))
        tasks.append(asyncio.create_task(raise_read_ahead(mountpoint, ops.initialized)))
        if not read_only:
            tasks.append(asyncio.create_task(_ticker(service)))
            if compactor is not None:
                tasks.append(
                    asyncio.create_task(
                        _compaction_checks(
                            compactor,
                            service.clock.monotonic,
                            lambda: live_estimate(
                                service.view.page_bytes, len(service.session.index.objects)
                            ),
                            lambda: ops.requests,
                        )
                    )
                )
        if unchecked_until is not None:
            tasks.append(asyncio.create_task(_scrub(service, unchecked_until, failures)))
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

    asyncio.run(main())
    if failures:
        raise PrefixDamaged(failures[0])
