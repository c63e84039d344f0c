"""What a mount decides beside serving requests (issue 13: the policy that the FUSE runner,
adapters/fuse_runner.py, used to hold). The runner owns the event loop, the signals and
pyfuse3; it calls these at the right moments:

* before mounting a replica: ``first_sync`` (wait for the first catch-up with the chain
  server, or give up: ``NotSynced``);
* while mounted, each in its own task: ``CommitTicker.run`` (what waited long enough is written
  out, sealed and attested), ``CompactionSchedule.run`` (compact when the policy says so, it is
  worth it and the file system is quiet; docs/adr/0007), ``scrub_prefix`` (check the part of
  the log an open from a checkpoint skipped), ``keep_clock_synced`` (ask NTP again now and
  then; docs/adr/0011);
* at unmount of a replica: ``upload_before_unmount``.

Time comes from the ``Clock`` port, and every loop sleeps through a ``sleep`` it is given
(``asyncio.sleep`` unless a test passes one that moves a fake clock), so each piece can be
driven step by step with the in-memory twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
from collections.abc import Awaitable, Callable

from application.checkpoint import check_prefix
from application.compaction import Compactor
from application.filesystem import FileSystemService
from application.ports import Clock, LogError
from application.replication import ReplicationService
from domain.compaction import live_estimate, worth_compacting
from domain.fs.model import FsError

# The messages keep the logger name they always had ("wasmer-dfs: WARNING: wasmer_dfs.fuse: ..."
# on stderr), so what a user or a script reads did not change when the policy moved here.
log = logging.getLogger("wasmer_dfs.fuse")

#: how a loop waits (``asyncio.sleep``; tests pass one that advances a fake clock)
Sleep = Callable[[float], Awaitable[None]]

TICK_SECONDS = 0.25
IDLE_COMMIT_SECONDS = 1.0
COMPACT_CHECK_SECONDS = 1.0
NTP_RESYNC_SECONDS = 20.0
#: a due compaction waits for a second without requests, at most this long
COMPACT_OVERDUE_SECONDS = 30.0
#: at unmount, what a replica wrote gets this long to reach the chain server
UNMOUNT_UPLOAD_SECONDS = 10.0

#: errors of a full disk (or quota); the FUSE adapter passes them on as they are, not as EIO
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk under the log is full (``FsError`` or ``OSError``)."""
    return isinstance(exc, FsError | OSError) and exc.errno in DISK_FULL


# --- the idle commit ---------------------------------------------------------------------------
class CommitTicker:
    """Every ``TICK_SECONDS``: write out and seal what has waited ``IDLE_COMMIT_SECONDS``, and
    attest the head (``FileSystemService.tick``). A full disk is said once, not every tick, and
    once more when there is room again; any other failure is logged and the ticks go on."""

    def __init__(
        self, service: FileSystemService, *, idle_seconds: float = IDLE_COMMIT_SECONDS
    ) -> None:
        self.service = service
        self.idle_seconds = idle_seconds
        #: the disk under the log is full (said once)
        self.disk_full = False

    def tick(self) -> None:
        try:
            self.service.tick(self.idle_seconds)
        except Exception as exc:
            if not disk_full(exc):
                log.exception("background commit failed")
            elif not self.disk_full:
                self.disk_full = True
                log.warning(
                    "the disk under the log is full (%s): buffered writes wait for room;"
                    " free space on that disk",
                    exc,
                )
        else:
            if self.disk_full:
                self.disk_full = False
                log.warning("the disk under the log has room again")

    async def run(self, every: float = TICK_SECONDS, sleep: Sleep = asyncio.sleep) -> None:
        while True:
            await sleep(every)
            self.tick()


# --- compaction --------------------------------------------------------------------------------
#: what holds a replica's uploads while the log is replaced (``ReplicationService.swapping``)
SwapGuard = Callable[[], contextlib.AbstractAsyncContextManager[None]]


async def compact_in_background(compactor: Compactor, swap: SwapGuard | None = None) -> None:
    """One compaction: the heavy part in a worker thread while the file system keeps serving,
    the switch to the new log on the loop (see application/compaction.py), inside ``swap`` for
    a replica (no upload batch in flight; the queue rebuilt after). Cancelling it (at unmount)
    stops the worker and leaves the old log as it was."""
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
        async with swap() if swap is not None else contextlib.nullcontext():
            r = compactor.finish(job, save_checkpoint=False)
            blob = compactor.encode_checkpoint()
    except TimeoutError:
        log.warning("compaction given up: an upload to the chain server was not confirmed")
        compactor.failed(job)
        return
    except Exception:
        log.exception("compaction failed")
        if compactor.job is job:
            compactor.failed(job)
        return
    if blob is not None:  # written and fsynced off the loop: the bytes no longer change
        await loop.run_in_executor(None, compactor.write_checkpoint, blob)
    log.info(
        "compacted the log: %d -> %d bytes, %d of %d events kept (%d written meanwhile), %.2f s",
        r.before, r.after, r.kept, r.events, r.tail_events, r.seconds,
    )  # fmt: skip


class CompactionSchedule:
    """When to compact while mounted: when the policy says so (``Compactor.due``) and it would
    reclaim enough (``worth_compacting``: a log that only grew with new data is left alone), at
    a quiet moment: a compaction competes with the requests it would interrupt for both cores,
    the disk and the GIL. A due compaction waits while the file system serves requests (any
    between two checks), at most ``overdue`` seconds by ``clock``."""

    def __init__(
        self,
        compactor: Compactor,
        service: FileSystemService,
        clock: Clock,
        requests: Callable[[], int],
        *,
        overdue: float = COMPACT_OVERDUE_SECONDS,
        swap: SwapGuard | None = None,
    ) -> None:
        """``requests``: how many requests the file system has served so far (a counter);
        ``swap``: a replica's guard around the switch to the new log."""
        self.compactor = compactor
        self.swap = swap
        self.service = service
        self.clock = clock
        self.requests = requests
        self.overdue = overdue
        self._due_since: float | None = None
        self._served = requests()

    def live_bytes(self) -> int:
        """An estimate of what a compacted log would hold."""
        service = self.service
        return live_estimate(service.view.page_bytes, len(service.session.index.objects))

    def check(self) -> bool:
        """One check (every ``COMPACT_CHECK_SECONDS``): whether to start a compaction now."""
        served = self.requests()
        busy, self._served = served != self._served, served
        compactor = self.compactor
        try:
            due = compactor.due() and worth_compacting(
                compactor.session.log.size(), self.live_bytes()
            )
        except Exception:
            log.exception("compaction check failed")
            return False
        if not due:
            self._due_since = None
            return False
        now = self.clock.monotonic()
        if self._due_since is None:
            self._due_since = now
        if busy and now - self._due_since < self.overdue:
            return False
        self._due_since = None
        return True

    def compacted(self) -> None:
        """A compaction ended: the requests served meanwhile do not make the next check busy."""
        self._served = self.requests()

    async def run(self, every: float = COMPACT_CHECK_SECONDS, sleep: Sleep = asyncio.sleep) -> None:
        while True:
            await sleep(every)
            if self.check():
                await compact_in_background(self.compactor, self.swap)
                self.compacted()


# --- the check of the log before a checkpoint ------------------------------------------------
class PrefixDamaged(Exception):
    """The part of the log a checkpointed open skipped is damaged: the mount was stopped."""


async def scrub_prefix(service: FileSystemService, until: int) -> str | None:
    """Check the frames of the log before ``until`` (skipped by an open from a checkpoint) in a
    worker thread, as an open would have. Returns what is damaged (logged as an error; the
    caller stops the mount, as an open would have refused it), None when the prefix is sound
    or a compaction replaced the log meanwhile (and read all of it). Cancelling it stops the
    worker soon."""
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
            return None
        log.error("%s", exc)
        return str(exc)
    log.debug("checked the %d records before the checkpoint", n)
    return None


# --- the clock ---------------------------------------------------------------------------------
async def keep_clock_synced(
    sync: Callable[[], object],
    failure: type[Exception] | tuple[type[Exception], ...],
    *,
    every: float = NTP_RESYNC_SECONDS,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Every ``every`` seconds, call ``sync`` (an NTP query, blocking: off the loop), as the
    original did (~20 s). A ``failure`` keeps the last offset and is logged at debug level."""
    while True:
        await sleep(every)
        try:
            await asyncio.to_thread(sync)
        except failure as exc:
            log.debug("NTP re-synchronisation failed (the last offset stays): %s", exc)


# --- a replica's first sync and last upload ---------------------------------------------------
class NotSynced(Exception):
    """The mount was stopped before the file system was mounted: for a new replica, before it
    caught up with the chain server."""


async def first_sync(
    replication: ReplicationService, timeout: float | None, stop: asyncio.Event
) -> None:
    """Wait until the replica has caught up with the server (a new replica has no tree to show
    before; ``timeout`` None: wait for it); ``stop`` (SIGINT/SIGTERM) gives up: ``NotSynced``.
    After ``timeout`` the mount goes on disconnected (with a warning)."""
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


async def upload_before_unmount(
    replication: ReplicationService, timeout: float = UNMOUNT_UPLOAD_SECONDS
) -> None:
    """At unmount, give what was written locally ``timeout`` seconds to reach the server (when
    connected; otherwise say how much goes up at the next mount). Never raises."""
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
