"""The in-memory twin of ``RemoteConnector`` / ``RemoteChain`` (docs/adr/0017): connections to a
chain server held in this process, with no socket and no frames between them.

``MemoryChainServer`` hosts a ``ChainServer`` (the same application the websocket server
fronts) and drives each connection's ``Peer`` (application/server_peer.py, sans I/O) directly:
the client's messages go to ``Peer.handle``, the peer's output is sorted as the websocket client
sorts it (a ``Confirmed`` or ``CommitError`` answers its commit; the rest, and the writer's own
``Confirmed`` while subscribed, is the stream). A commit is made durable at once (an fsync of the
log per commit: what the websocket server's group commit does when one commit is in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence

from application.chain_admission import Refused
from application.chain_host import ChainHost, HostBroken
from application.chain_server import ChainServer
from application.ports import CommitRejected, RemoteChain, RemoteConnector, RemoteError
from application.server_peer import Peer
from domain.wire import (
    PROTOCOL_VERSIONS,
    Commit,
    CommitError,
    CommitRecord,
    Confirmed,
    Hello,
    LockResult,
    ServerMessage,
    Subscribe,
)


class MemoryChainServer:
    """A chain server in this process (see the module's docstring)."""

    def __init__(self, app: ChainServer) -> None:
        self.app = app
        self.closed = False

    def connector(self, chain: str) -> MemoryConnector:
        return MemoryConnector(self, chain)

    def host(self, name: str) -> ChainHost | None:
        host = self.app.loaded(name)
        if host is None:
            loaded = self.app.load(name)
            host = self.app.adopt(loaded) if loaded is not None else None
        return host

    def sync(self, host: ChainHost) -> None:
        """Make everything appended to ``host`` durable (the websocket server's syncer)."""
        end = host.committed_end
        if host.broken is None and end > host.durable_end:
            try:
                host.sync()
            except Exception as exc:
                host.fail(f"fsync of chain {host.name!r} failed: {exc}")
                return
            host.made_durable(end)

    def close(self) -> None:
        """Refuse new connections and close every chain's log."""
        if not self.closed:
            self.closed = True
            self.app.close()


class MemoryConnector(RemoteConnector):
    def __init__(self, server: MemoryChainServer, chain: str) -> None:
        self.server = server
        self.chain = chain

    async def connect(self, header: bytes | None) -> RemoteChain:
        if self.server.closed:
            raise RemoteError(f"cannot reach chain {self.chain!r}: the server is closed")
        conn = MemoryRemoteChain(self.server, self.chain)
        try:
            host = self.server.host(self.chain)
            welcome = conn.peer.hello(Hello(list(PROTOCOL_VERSIONS), self.chain, header), host)
        except (Refused, HostBroken) as exc:
            conn.peer.close()
            raise RemoteError(f"chain {self.chain!r}: the server refused: {exc.reason}") from None
        conn.header_body = welcome.header
        conn.start()
        return conn


class MemoryRemoteChain(RemoteChain):
    def __init__(self, server: MemoryChainServer, chain: str) -> None:
        self.server = server
        self.peer = Peer(server.app, chain, self._wakeup)
        self.header_body: bytes | None = None
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[ServerMessage | None] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[Confirmed]] = {}
        self._ids = itertools.count(1)
        self._subscribed = False
        self._ended: RemoteError | None = None
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def _wakeup(self) -> None:
        self._wake.set()

    @property
    def header(self) -> bytes | None:
        return self.header_body

    async def subscribe(self, from_position: int) -> None:
        self._check()
        self._subscribed = True
        self._handle(Subscribe(from_position))

    async def next(self) -> ServerMessage:
        msg = await self._queue.get()
        if msg is None:
            self._queue.put_nowait(None)  # every later call sees the end too
            assert self._ended is not None
            raise self._ended
        return msg

    async def commit(self, records: Sequence[CommitRecord]) -> Confirmed:
        self._check()
        tx_id = next(self._ids)
        fut: asyncio.Future[Confirmed] = asyncio.get_running_loop().create_future()
        self._pending[tx_id] = fut
        self._handle(Commit(tx_id, list(records)))
        if self.peer.host is not None:
            self.server.sync(self.peer.host)
        return await fut

    async def close(self) -> None:
        self._end(RemoteError("the connection was closed"))
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    # -- inside ------------------------------------------------------------------------------------
    def _check(self) -> None:
        if self._ended is not None:
            raise self._ended

    def _handle(self, msg: Commit | Subscribe) -> None:
        try:
            self.peer.handle(msg)
        except (Refused, HostBroken) as exc:
            self._end(RemoteError(f"the server ended the connection: {exc.reason}"))
            raise self._ended from None  # type: ignore[misc]

    async def _run(self) -> None:
        """Move the peer's output to the commits it answers and to the stream."""
        while self._ended is None:
            try:
                msg = self.peer.next_output()
                if msg is None:
                    self._wake.clear()  # then look again: a wakeup may have come just now
                    msg = self.peer.next_output()
            except (Refused, HostBroken) as exc:
                self._end(RemoteError(f"the server ended the connection: {exc.reason}"))
                return
            if msg is None:
                await self._wake.wait()
            elif isinstance(msg, Confirmed):
                self._resolve(msg.tx_id, msg, None)
                if self._subscribed:
                    self._queue.put_nowait(msg)
            elif isinstance(msg, CommitError):
                self._resolve(msg.tx_id, None, CommitRejected(msg.reason))
            elif not isinstance(msg, LockResult):  # locks go through their own port
                self._queue.put_nowait(msg)

    def _resolve(self, tx_id: int, ok: Confirmed | None, err: CommitRejected | None) -> None:
        fut = self._pending.pop(tx_id, None)
        if fut is None or fut.done():
            return
        if err is not None:
            fut.set_exception(err)
        else:
            assert ok is not None
            fut.set_result(ok)

    def _end(self, error: RemoteError) -> None:
        if self._ended is not None:
            return
        self._ended = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        self._queue.put_nowait(None)
        host = self.peer.host
        last = self.peer.close()
        if (
            last
            and host is not None
            and not self.server.closed
            and not self.server.app.in_use(host)
        ):
            self.server.app.close_host(host)
        self._wake.set()
