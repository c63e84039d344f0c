"""Adapters of the replication ports (application/replication.py): the websocket connection to a
chain server (``ChainClient``) and the kernel's caches of a pyfuse3 mount."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence

from adapters.secure_channel import ClientWire
from adapters.ws_client import (
    ChainClient,
    ChainClientError,
    CommitFailed,
    ServerFatal,
    ServerKeyChanged,
    WireEncryptionRefused,
)
from application.chain_token import ChainSigner
from application.ports import (
    CommitRejected,
    KernelCache,
    RemoteChain,
    RemoteConnector,
    RemoteError,
    RemoteRefused,
)
from domain.wire import CommitRecord, Confirmed, ServerMessage

log = logging.getLogger("wasmer_dfs.replication")


class WsRemoteChain(RemoteChain):
    def __init__(self, client: ChainClient) -> None:
        self._client = client

    @property
    def header(self) -> bytes | None:
        return self._client.welcome.header

    async def subscribe(self, from_position: int) -> None:
        try:
            await self._client.subscribe(from_position)
        except ChainClientError as exc:
            raise RemoteError(str(exc)) from None

    async def next(self) -> ServerMessage:
        try:
            return await self._client.next()
        except ChainClientError as exc:
            raise RemoteError(str(exc)) from None

    async def commit(self, records: Sequence[CommitRecord]) -> Confirmed:
        try:
            return await self._client.commit(records)
        except CommitFailed as exc:
            raise CommitRejected(exc.reason) from None
        except ChainClientError as exc:
            raise RemoteError(str(exc)) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()


class WsConnector(RemoteConnector):
    def __init__(
        self,
        url: str,
        *,
        open_timeout: float = 10.0,
        wire: ClientWire | None = None,
        signer: ChainSigner | None = None,
    ) -> None:
        self.url = url
        self.open_timeout = open_timeout
        self.wire = wire
        self.signer = signer  # a token's, for a chain of a user or group (ADR 0018)

    async def connect(self, header: bytes | None) -> RemoteChain:
        try:
            client = await ChainClient.connect(
                self.url,
                header=header,
                open_timeout=self.open_timeout,
                wire=self.wire,
                signer=self.signer,
            )
        except (WireEncryptionRefused, ServerKeyChanged) as exc:
            raise RemoteRefused(f"{self.url}: {exc}") from None
        except (ChainClientError, OSError, TimeoutError) as exc:
            raise RemoteError(f"cannot reach {self.url}: {exc}") from None
        return WsRemoteChain(client)


async def fetch_header(
    url: str,
    open_timeout: float = 10.0,
    wire: ClientWire | None = None,
    signer: ChainSigner | None = None,
) -> bytes | None:
    """The chain's header body as the server holds it (None: the server has no such chain);
    ``RemoteError`` when the server cannot be reached, ``RemoteRefused`` when it refuses (also:
    the wire encryption asked for, or a changed server key)."""
    try:
        client = await ChainClient.connect(url, open_timeout=open_timeout, wire=wire, signer=signer)
    except (WireEncryptionRefused, ServerKeyChanged) as exc:
        raise RemoteRefused(f"{url}: {exc}") from None
    except ServerFatal as exc:
        if "does not exist" in exc.reason:
            return None
        raise RemoteRefused(f"{url}: {exc.reason}") from None
    except (ChainClientError, OSError, TimeoutError) as exc:
        raise RemoteError(f"cannot reach {url}: {exc}") from None
    try:
        return client.welcome.header
    finally:
        await client.close()


class FuseKernelCache(KernelCache):
    """Invalidation through pyfuse3 by one worker thread that nothing waits on but ``settled``
    (docs/adr/0009, "Kernel caches"). The kernel's reverse invalidation of a name takes the
    directory's inode lock, which a create (mkdir, unlink, rename ...) in flight in that
    directory holds until this very process answers it; the answer may wait for the server's
    confirmation, which the replication loop takes in. So ``invalidate`` only queues: what is
    queued while the worker is busy is merged (each inode and name once) and forgotten in its
    next round, always after it was asked. ``forget``: what a round calls (pyfuse3's calls; a
    test passes its own)."""

    #: how long ``close`` lets the worker finish what is queued
    CLOSE_SECONDS = 5.0

    def __init__(
        self, forget: Callable[[list[int], list[tuple[int, bytes]]], None] | None = None
    ) -> None:
        self._forget = forget if forget is not None else _invalidate
        self._cond = threading.Condition()
        self._inodes: set[int] = set()
        self._entries: set[tuple[int, bytes]] = set()
        self._asked = 0  # calls of ``invalidate`` with something to forget
        self._done = 0  # of those, how many the worker has passed to the kernel
        self._closing = False
        self._abandoned = False  # ``close`` gave up waiting: nothing more goes to the kernel
        self._thread: threading.Thread | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def invalidate(self, inodes: set[int], entries: set[tuple[int, bytes]]) -> None:
        if not (inodes or entries):
            return
        with self._cond:
            if self._closing:
                return  # unmounting: the kernel forgets everything anyway
            self._inodes |= inodes
            self._entries |= entries
            self._asked += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="kernel-invalidation", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    async def settled(self) -> None:
        with self._cond:
            if self._done >= self._asked or self._abandoned:
                return
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((self._asked, fut))
        await fut

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, self.CLOSE_SECONDS)
            if thread.is_alive():
                log.warning(
                    "the kernel did not take the last invalidations within %.0f s",
                    self.CLOSE_SECONDS,
                )
        with self._cond:
            self._abandoned = True
            waiters, self._waiters = self._waiters, []
        for _, fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._inodes or self._entries or self._closing):
                    self._cond.wait()
                if self._abandoned or not (self._inodes or self._entries):
                    return  # closing, and nothing left
                inodes, self._inodes = self._inodes, set()
                entries, self._entries = self._entries, set()
                upto = self._asked
            try:
                self._forget(sorted(inodes), sorted(entries))
            except Exception:  # a bug must not stop invalidation for the rest of the mount
                log.exception("kernel invalidation failed")
            with self._cond:
                self._done = upto
                ready = [fut for at, fut in self._waiters if at <= upto]
                self._waiters = [(at, fut) for at, fut in self._waiters if at > upto]
            for fut in ready:
                with contextlib.suppress(RuntimeError):  # its loop is closed: no one waits
                    fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _invalidate(inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
    import pyfuse3

    for parent, name in entries:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, name)
    for ino in inodes:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(ino, False)
