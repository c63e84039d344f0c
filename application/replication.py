"""Replication of a mounted chain through a chain server (docs/adr/0009).

The mount keeps reading and writing its local replica; this service - one asyncio task beside
the FUSE loop - keeps the replica and the server's chain in step:

* **down**: it subscribes from the last server position it holds, validates every streamed
  transaction as a replica does (signatures and authorisation; a local seal is never a proof
  from the wire), appends it to the local log with its server position (``Origin``), applies it
  and invalidates what the kernel cached of what it changed;
* **up**: local transactions (sealed locally, ADR 0004) are merged into batches, re-sealed with
  one ML-DSA signature per batch and committed; the server's ``Confirmed`` is recorded in the
  log (``Uploaded``) so that a restart neither loses nor repeats an upload;
* **order**: the server's order decides. A streamed write to an object this replica changed and
  the server has not confirmed yet is ordered *before* that change, so it is recorded but not
  applied to that object; every replica ends with the later write.

The recovery modes of the manual decide what waits for the server and what a disconnected mount
may still do (``RecoveryMode``).

What an applied transaction changes beyond the log (kernel invalidation, conflict copies) is in
application/replica_effects.py. The module stays about 570 lines because down and up are one
job: they share the connection, the batch in flight and the conditions that order them (an
upload counts only once the stream has passed its ``Confirmed``), so split apart they would
reach into each other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from application.filesystem import FileSystemService
from application.ports import (
    CommitRejected,
    KernelCache,
    RefusalRecord,
    RemoteChain,
    RemoteConnector,
    RemoteError,
    ReplicaSync,
)
from application.replica_effects import ConflictCopies, invalidate, names_before
from application.replica_log import ForgedHistory, ReplicaLog, Upload
from application.session import ChainIntegrityError, ChainSession
from domain.chain import Located, TimestampValidator, Transaction, event_key
from domain.errors import DomainError
from domain.events import EventHeader
from domain.fs.model import FsError
from domain.wire import (
    DISK_FULL_REASON,
    Confirmed,
    EndOfHistory,
    Events,
    Fatal,
    ReadOnly,
    WireRecord,
)

log = logging.getLogger("wasmer_dfs.replication")
_ALREADY = re.compile(r"event ([0-9a-f]{16}) is already in the chain")


class RecoveryMode(enum.StrEnum):
    ASYNC = "async"
    READONLY_ASYNC = "readonly-async"
    READONLY_SYNC = "readonly-sync"
    SYNC = "sync"

    @property
    def metadata_waits(self) -> bool:
        """Whether a metadata change waits for the server's confirmation."""
        return self is not RecoveryMode.ASYNC

    @property
    def data_waits(self) -> bool:
        """Whether written data waits for the server's confirmation (at flush, fsync, close)."""
        return self in (RecoveryMode.READONLY_SYNC, RecoveryMode.SYNC)

    @property
    def offline_errno(self) -> int | None:
        """The error of a write while disconnected (None: writes go on locally)."""
        if self is RecoveryMode.ASYNC:
            return None
        return errno.ENOTCONN if self is RecoveryMode.SYNC else errno.EROFS


# --- ports: RemoteChain, RemoteConnector, KernelCache, RefusalRecord and their errors are in
# application/ports/remote.py (docs/adr/0017)


# --- the service ------------------------------------------------------------------------------
@dataclass(slots=True)
class ReplicationStats:
    applied: int = 0  # streamed transactions applied
    uploaded: int = 0  # upload batches confirmed
    shadowed: int = 0  # streamed events not applied (a local change to the object follows)
    reconnects: int = 0
    rejected: int = 0  # uploads the server refused
    conflicts: int = 0  # conflict copies made


@dataclass(slots=True)
class ReplicationState:
    connected: bool = False
    #: the server's history up to the subscription has been applied (this connection)
    synced: bool = False
    last_error: str = ""
    stats: ReplicationStats = field(default_factory=ReplicationStats)


class ReplicationService(ReplicaSync):
    BACKOFF = (0.2, 5.0)
    UPLOAD_BATCH_BYTES = 4 * 1024 * 1024
    #: a writer attests the server-order head this long after its last confirmed upload, and
    #: at most this often (docs/adr/0016)
    ATTEST_SECONDS = 1.0
    #: a compaction waits this long for the upload batch in flight to be confirmed
    SWAP_WAIT_SECONDS = 30.0

    def __init__(
        self,
        session: ChainSession,
        replica: ReplicaLog,
        fs: FileSystemService,
        connector: RemoteConnector,
        mode: RecoveryMode,
        *,
        on_synced: Callable[[], None] | None = None,
        clock_tolerance_ms: int | None = None,
        refusals: RefusalRecord | None = None,
    ) -> None:
        """``on_synced`` runs once, after the first complete catch-up with the server.
        ``refusals``: where a refused (forged or forked) history is recorded for ``verify``.
        ``clock_tolerance_ms``: a streamed transaction stamped further in the future than this
        (by the session's clock) is refused until its time comes (the --configured-for preset's
        tolerance, docs/adr/0014); None: not checked."""
        self.session = session
        self.clock_tolerance_ms = clock_tolerance_ms
        self.replica = replica
        self.fs = fs
        self.connector = connector
        self.mode = mode
        self.kernel: KernelCache | None = None
        self.state = ReplicationState()
        self._on_synced = on_synced
        self._remote: RemoteChain | None = None
        self._changed = asyncio.Condition()
        self._wake_upload = asyncio.Event()
        self._ever_synced = asyncio.Event()
        self._gave_up = asyncio.Event()  # a forged or forked history was refused (ADR 0016)
        self._connected = asyncio.Event()
        self._stopping = False
        self._in_flight: int | None = None
        self._swapping = False  # a compaction is replacing the log (``swapping``)
        self._idle = asyncio.Event()  # no upload batch is being prepared, sent or confirmed
        self._idle.set()
        self._in_flight_hashes: tuple[bytes, ...] = ()
        self.refusals = refusals
        #: the newest server-order head known attested (by this replica or another writer)
        self._attested_head = b""
        #: when this replica's confirmed uploads moved the head it has not attested yet
        self._attest_from: float | None = None
        self._last_attest = float("-inf")
        replica.on_local = self.local_changed
        fs.replicated = True
        self._resynced: set[str] = set()
        #: the conflict copies made of other replicas' versions of files changed here too
        self._conflicts = ConflictCopies(session, fs)

    # -- what the file system asks ---------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise the mode's error when a write must fail because the server is unreachable."""
        if not self.state.connected:
            code = self.mode.offline_errno
            if code is not None:
                raise FsError(code, "the chain server is not reachable")

    def local_changed(self) -> None:
        """A local transaction was sealed: upload it soon."""
        self._wake_upload.set()

    async def after_metadata(self) -> None:
        if self.mode.metadata_waits:
            await self._wait_confirmed(give_up_offline=True)

    async def after_data(self) -> None:
        if self.mode.data_waits:
            await self._wait_confirmed(give_up_offline=True)

    async def _wait_confirmed(self, *, give_up_offline: bool) -> None:
        """Seal what is pending and wait until the server confirmed every local transaction."""
        self.fs.flush_all()
        self.session.commit()
        target, generation = self.replica.unconfirmed_end(), self.replica.generation
        self._wake_upload.set()
        async with self._changed:
            while self.replica.uploaded_upto < target:
                if give_up_offline and not self.state.connected:
                    code = self.mode.offline_errno
                    raise FsError(code or errno.EIO, "the chain server is not reachable")
                await self._changed.wait()
                if self.replica.generation != generation:  # compacted: positions changed
                    target, generation = self.replica.unconfirmed_end(), self.replica.generation

    # ReplicaSync (coherence under locks)
    async def flush_confirmed(self) -> int:
        await self._wait_confirmed(give_up_offline=False)
        return self.replica.remote_cursor

    async def wait_applied(self, position: int) -> None:
        async with self._changed:
            while self.replica.remote_cursor < position:
                await self._changed.wait()
        # a lock grant: the kernel must also have forgotten what it cached of those changes.
        # (Safe here, never in a request that may hold a directory's lock: docs/adr/0009.)
        kernel = self.kernel
        if kernel is not None:
            await kernel.settled()

    @property
    def has_synced(self) -> bool:
        """Whether the replica has caught up with the server at least once."""
        return self._ever_synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait for the first complete catch-up with the server (False on timeout, or when the
        replica refused what the server served and stopped following it)."""
        synced = asyncio.ensure_future(self._ever_synced.wait())
        gave_up = asyncio.ensure_future(self._gave_up.wait())
        try:
            await asyncio.wait(
                (synced, gave_up), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (synced, gave_up):
                task.cancel()
        return self._ever_synced.is_set()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = self.BACKOFF[0]
        while not self._stopping:
            try:
                await self._connection()
            except asyncio.CancelledError:
                raise
            except (RemoteError, OSError) as exc:
                self.state.last_error = str(exc)
                if not self._stopping:  # (stopping closes the connection: no news)
                    log.warning("chain server: %s (retrying in %.1f s)", exc, backoff)
            except ForgedHistory as exc:
                # what a server forged or forked does not get better by asking again
                self.state.last_error = str(exc)
                self._refused(str(exc))
                self._gave_up.set()
                self._stopping = True  # (the finally below disconnects)
            except ChainIntegrityError as exc:
                self.state.last_error = str(exc)
                log.error(
                    "refused what the chain server sent: %s (retrying in %.1f s)", exc, backoff
                )
            except Exception as exc:  # a bug must not end replication: log it and retry
                self.state.last_error = str(exc)
                log.exception("replication failed (retrying in %.1f s)", backoff)
            finally:
                await self._disconnected()
            if self._stopping:
                break
            if self.state.synced:
                backoff = self.BACKOFF[0]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.BACKOFF[1])
            self.state.stats.reconnects += 1

    def _refused(self, reason: str) -> None:
        log.error(
            "refused what the chain server sent, and stopped following it (this mount goes on"
            " with its local replica; `wasmer-dfs verify` reports it): %s", reason
        )  # fmt: skip
        if self.refusals is not None:
            try:
                self.refusals.record(reason)
            except OSError as exc:
                log.error("could not record the refusal beside the log: %s", exc)

    async def stop(self) -> None:
        self._stopping = True
        remote = self._remote
        if remote is not None:
            await remote.close()

    async def _disconnected(self) -> None:
        self.state.connected = self.replica.online = False
        self._in_flight = None
        remote, self._remote = self._remote, None
        if remote is not None:
            with contextlib.suppress(Exception):
                await remote.close()
        await self._notify()

    async def _connection(self) -> None:
        remote = await self.connector.connect(self.session.header.encode())
        self._remote = remote
        self.state.synced = False
        if remote.header is None:
            await self._create_chain(remote)
        await remote.subscribe(self.replica.remote_cursor)
        self.state.connected = self.replica.online = True
        await self._notify()
        down = asyncio.create_task(self._download_loop(remote))
        up = asyncio.create_task(self._upload_loop(remote))
        try:
            done, _ = await asyncio.wait((down, up), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the error that ended this connection
        finally:
            for task in (down, up):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _create_chain(self, remote: RemoteChain) -> None:
        """The server does not hold the chain: this replica's history creates it there (its
        first transaction, signed by the chain's root key, is the genesis)."""
        if self.replica.remote_cursor > 0 or self.replica.uploaded_upto > 0:
            raise RemoteError(
                "the chain server no longer holds this chain, which this replica had followed:"
                " refusing to recreate it (move the local log aside to start a new chain)"
            )
        if self._swapping:
            raise RemoteError("the log is being compacted: the chain is created after it")
        batch = self.replica.next_upload(self.UPLOAD_BATCH_BYTES)
        if batch is None or not batch.records:
            raise RemoteError("the server does not hold this chain and this replica is empty")
        batch = self.replica.sign(batch)
        self._idle.clear()
        try:
            confirmed = await remote.commit(batch.records)
        except CommitRejected as exc:
            raise RemoteError(f"the server refused to create the chain: {exc.reason}") from None
        finally:
            self._idle.set()
        self.replica.mark_uploaded(batch.upto, confirmed.end, batch.hashes)
        self.state.stats.uploaded += 1
        self._attest_from = self.session.clock.monotonic()
        log.info("created the chain on the server (%d events)", batch.events)

    # -- down ------------------------------------------------------------------------------------
    async def _download_loop(self, remote: RemoteChain) -> None:
        pending: list[WireRecord] = []
        while True:
            msg = await remote.next()
            if isinstance(msg, Events):
                recs = msg.records
                for i, rec in enumerate(recs):
                    pending.append(rec)
                    if rec.commit:
                        end = recs[i + 1].position if i + 1 < len(recs) else msg.end
                        await self._remote_transaction(pending, end)
                        pending = []
            elif isinstance(msg, EndOfHistory):
                self.replica.note_remote_position(msg.position)
                self.state.synced = True
                if not self._ever_synced.is_set():
                    self._first_sync()
                self._wake_upload.set()
                await self._notify()
            elif isinstance(msg, Confirmed):
                await self._confirmed(msg)
            elif isinstance(msg, ReadOnly):
                log.warning("the chain server is read-only: %s", msg.reason)
            elif isinstance(msg, Fatal):
                raise RemoteError(f"the chain server ended the connection: {msg.reason}")

    def _first_sync(self) -> None:
        if self.session.encrypted and not self.session.can_sign:
            self.session.load_signing_key()
        self._ever_synced.set()
        if self._on_synced is not None:
            self._on_synced()

    async def _remote_transaction(self, records: list[WireRecord], end: int) -> None:
        headers = self.replica.validate_remote(records)
        self._check_clock(headers)
        if len(headers) == 1:
            # an attestation of a writer's server-order head: it must be this replica's too
            if self.replica.check_attestation(headers[0]):
                self._attested_head = self.replica.remote_head
            self.replica.note_remote_position(end)
            await self._notify()
            return
        upto = self.replica.own_upload(headers[:-1])
        if upto is not None:
            # ours, committed by an earlier connection that did not see its confirmation
            self.replica.mark_uploaded(upto, end, [hd.hash for hd in headers[:-1]])
            self._attest_from = self.session.clock.monotonic()
            await self._notify()
            return
        before = names_before(self.fs, headers)
        offline = {k for k in map(event_key, headers[:-1]) if k and self.replica.changed_offline(k)}
        tx = self.replica.append_remote(records, headers, end)
        self.state.stats.applied += 1
        self.state.stats.shadowed += len(tx.events) - len(tx.applied)
        if offline & tx.skipped:
            self._conflicts.keep_theirs(tx, offline & tx.skipped, end, self._count_conflict)
        if tx.applied:
            await invalidate(self.fs, self.kernel, tx, before)
        await self._notify()

    def _count_conflict(self) -> None:
        self.state.stats.conflicts += 1

    def _check_clock(self, headers: Sequence[EventHeader]) -> None:
        if self.clock_tolerance_ms is None:
            return
        tx = Transaction(tuple(Located(hd, None) for hd in headers[:-1]), headers[-1])
        try:
            TimestampValidator(self.session.clock.now_ms(), self.clock_tolerance_ms).validate(
                self.session.index, tx
            )
        except DomainError as exc:
            raise ChainIntegrityError(
                f"the server streamed a transaction this mount refuses: {exc} (more than"
                f" {self.clock_tolerance_ms / 1000:g} s ahead of this clock; it is accepted"
                " once its time comes)"
            ) from None

    # -- up --------------------------------------------------------------------------------------
    async def _upload_loop(self, remote: RemoteChain) -> None:
        while not self.state.synced:  # what an earlier connection committed shows up first
            async with self._changed:
                await self._changed.wait()
        while True:
            self._wake_upload.clear()
            if self._swapping:  # a compaction is replacing the log: no batch until it has
                await self._wake_upload.wait()
                continue
            batch = self.replica.next_upload(self.UPLOAD_BATCH_BYTES)
            if batch is None:
                delay = self._attest_delay()
                if delay is None:
                    await self._wake_upload.wait()
                elif delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake_upload.wait(), delay)
                else:
                    await self._attest(remote)
                continue
            self._idle.clear()  # a compaction does not replace the log under a batch
            try:
                await self._upload(remote, batch)
            finally:
                self._idle.set()

    async def _upload(self, remote: RemoteChain, batch: Upload) -> None:
        """Send one batch and wait until the stream has passed its confirmation."""
        if not batch.records:
            self.replica.mark_uploaded(batch.upto, -1)
            await self._notify()
            return
        # the ML-DSA signature (~7 ms) runs off the loop, which goes on answering the kernel
        batch = await asyncio.to_thread(self.replica.sign, batch)
        self._in_flight = batch.upto
        self._in_flight_hashes = batch.hashes
        try:
            await remote.commit(batch.records)
        except CommitRejected as exc:
            self._in_flight = None
            already = _ALREADY.search(exc.reason)
            if already is not None:
                event = already.group(1)
                if event not in self._resynced:
                    # a copy reached the server, its confirmation did not: the stream of a
                    # new connection recognises it (own_upload)
                    self._resynced.add(event)
                    raise RemoteError(f"resynchronising: {exc.reason}") from None
                # an equal event of another writer is in the chain: its effect is there,
                # the copy is left out of the upload
                log.warning("event %s is in the chain already: not uploaded again", event)
                self.replica.drop_events.add(bytes.fromhex(event))
                return
            if exc.reason.startswith(DISK_FULL_REASON):
                # for now, not for good: the changes stay here and go up again after the
                # reconnection's backoff, until the server has room
                raise RemoteError(f"upload postponed: {exc.reason}") from None
            log.error("the chain server refused local changes (kept here only): %s", exc.reason)
            self.state.last_error = exc.reason
            self.state.stats.rejected += 1
            self.replica.mark_uploaded(batch.upto, -1)
            await self._notify()
            return
        # The upload counts once the stream reaches its Confirmed: what the server ordered
        # before it has been applied (or shadowed) by then, so releasing our claim on the
        # objects can never reorder anything.
        async with self._changed:
            while self.replica.uploaded_upto < batch.upto:
                await self._changed.wait()

    # -- compaction of the replica's log (docs/adr/0007, application/replica_compaction.py) ----
    @contextlib.asynccontextmanager
    async def swapping(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold uploads while a compaction replaces the log: wait until no batch is in flight
        (``TimeoutError`` after ``timeout``; the compaction is then given up), let none start,
        and rebuild the queue of pending uploads from the log afterwards."""
        self._swapping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout or self.SWAP_WAIT_SECONDS)
            yield
        finally:
            self._swapping = False
            if not self.session.log_closed:
                self.replica.reload()
            self._wake_upload.set()
            await self._notify()

    def _attest_delay(self) -> float | None:
        """Seconds until this replica attests the server-order head (None: nothing to attest:
        it cannot sign, its uploads did not move the head, or the head is attested already)."""
        head = self.replica.remote_head
        if (
            self._attest_from is None
            or not head
            or head == self._attested_head
            or not self.session.can_sign
            or not self.state.synced
        ):
            return None
        now = self.session.clock.monotonic()
        due = max(self._attest_from, self._last_attest) + self.ATTEST_SECONDS
        return max(0.0, due - now)

    async def _attest(self, remote: RemoteChain) -> None:
        """Sign the server-order head and commit it: every replica that follows the server
        checks it against its own (docs/adr/0016). A refusal only means the head moved on (a
        transaction of another writer came first): skipped."""
        head = self.replica.remote_head
        self._last_attest = self.session.clock.monotonic()
        self._attest_from = None
        records = await asyncio.to_thread(self.replica.attestation)
        try:
            confirmed = await remote.commit(records)
        except CommitRejected as exc:
            log.debug("attestation of the head not taken (the head moved on): %s", exc.reason)
            return
        self._attested_head = head
        # its Confirmed also comes down the stream: the next upload may only go in flight once
        # the stream has passed it, or that Confirmed would be taken for the upload's
        async with self._changed:
            while self.replica.remote_cursor < confirmed.end:
                await self._changed.wait()

    async def _confirmed(self, msg: Confirmed) -> None:
        upto, self._in_flight = self._in_flight, None
        hashes, self._in_flight_hashes = self._in_flight_hashes, ()
        if upto is not None:
            self.replica.mark_uploaded(upto, msg.end, hashes)
            self._attest_from = self.session.clock.monotonic()
            self.state.stats.uploaded += 1
            self._conflicts.settle(self.replica.busy)
        else:
            self.replica.note_remote_position(msg.end)
        await self._notify()
