"""A client of the chain server (websockets, asyncio): what tests, benchmarks and the mount's
replication use to talk to ``wasmer-dfs serve``.

    client = await ChainClient.connect("ws://127.0.0.1:5000/db/myfs", header=body)
    if client.welcome.header is None:           # the chain is new on the server
        await client.commit(genesis_records)    # creates it
    await client.subscribe(from_position=cursor)
    async for msg in client.stream():           # Events, EndOfHistory, Confirmed, ReadOnly
        ...
    confirmed = await client.commit(records)    # returns after the server's fsync

One background task reads every frame: ``Confirmed`` and ``CommitError`` resolve the commit
that waits for them; everything a subscriber must see in order (``Events``, ``EndOfHistory``,
``Confirmed`` of its own commits once subscribed, ``ReadOnly``, ``Fatal``) goes to a bounded
queue read by ``next``/``stream``. A subscribed client must keep reading that queue: when it is
full the reader stops, TCP pushes back, and the server ends a client that lags too far
(``Fatal("too slow")``); it then reconnects and resubscribes from its cursor.

``cursor`` follows the resumable position: the end of the last ``Events`` batch whose last
record ends a transaction, of a ``Confirmed`` in the stream, or of ``EndOfHistory``.

Locks (docs/adr/0010): ``lock_call`` sends a lock message that is answered (``Lock``,
``LockTest``, ``LockSync``, ``LockRenew``) and returns a future of its ``LockResult``, matched by
``req``; ``lock_send`` sends one that is not (``Unlock``, ``LockCancel``: the answer to a cancel
resolves the cancelled request's future if it is still open). Lock answers never enter the
stream's queue. ``adapters/ws_locks.py`` builds the mount's lock coordinator on this.

Wire encryption (``wire=ClientWire(256)``, docs/adr/0013): the handshake runs before Hello and
every later frame is sealed; a server that refuses it or speaks none ends the connection with
``WireEncryptionRefused``, a pinned server presenting another key with ``ServerKeyChanged``. A
client that asked for wire encryption never sends a plain frame of the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from adapters.secure_channel import (
    PLAIN,
    Channel,
    ClientWire,
    ServerRefusedWire,
    client_handshake,
)
from application.chain_token import ChainSigner
from domain.auth.chains import NONCE_HEADER
from domain.secure_wire import LEVELS, KnownServerError
from domain.wire import (
    MAX_FRAME,
    PROTOCOL_VERSIONS,
    Commit,
    CommitError,
    CommitRecord,
    Confirmed,
    EndOfHistory,
    Events,
    Fatal,
    Hello,
    Lock,
    LockCancel,
    LockRenew,
    LockResult,
    LockSync,
    LockTest,
    ServerMessage,
    Subscribe,
    Unlock,
    Welcome,
    WireError,
    WireRecord,
    decode_server,
    encode,
)


class ChainClientError(Exception):
    """The connection failed or ended; the message says why."""


class ServerFatal(ChainClientError):
    """The server ended the connection with ``Fatal``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WireEncryptionRefused(ServerFatal):
    """The server refused the wire encryption this client asked for, or speaks none."""


class ServerKeyChanged(ChainClientError):
    """The server presented another wire encryption key than the one pinned for it (or the
    known-servers file cannot be used): the connection is not made."""


class CommitFailed(ChainClientError):
    """The server refused a transaction (``CommitError``)."""

    def __init__(self, tx_id: int, reason: str) -> None:
        super().__init__(f"transaction {tx_id} refused: {reason}")
        self.tx_id = tx_id
        self.reason = reason


def chain_of(url: str) -> str:
    path = urlsplit(url).path
    if not path.startswith("/db/") or len(path) <= 4:
        raise ValueError(f"a chain URL looks like ws://host:port/db/NAME, not {url!r}")
    return path[4:]


class ChainClient:
    def __init__(
        self, ws: ClientConnection, welcome: Welcome, queue_size: int, channel: Channel = PLAIN
    ) -> None:
        self.ws = ws
        self.channel = channel
        self.welcome = welcome
        self.chain = welcome.chain
        self.version = welcome.version
        self.cursor = 0
        self.subscribed = False
        self._queue: asyncio.Queue[ServerMessage | None] = asyncio.Queue(queue_size)
        self._pending: dict[int, asyncio.Future[Confirmed]] = {}
        self._lock_pending: dict[int, asyncio.Future[LockResult]] = {}
        self._ids = itertools.count(1)
        self._closed: ChainClientError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        header: bytes | None = None,
        versions: Sequence[int] = PROTOCOL_VERSIONS,
        max_frame: int = 2 * MAX_FRAME,
        queue_size: int = 64,
        open_timeout: float = 10.0,
        agent: str = "wasmer-dfs",
        client_id: bytes | None = None,
        wire: ClientWire | None = None,
        signer: ChainSigner | None = None,
    ) -> ChainClient:
        """Connect (with ``wire``: encrypted, or not at all), say Hello and return once Welcome
        arrived (``ServerFatal`` on a refusal). ``signer``: a token's signature over the nonce
        of the handshake, for a chain of a user or group (ADR 0018)."""
        chain = chain_of(url)
        ws = await connect(
            url,
            max_size=max_frame,
            compression=None,
            open_timeout=open_timeout,
            close_timeout=5,
            max_queue=4,
        )
        channel = PLAIN
        try:
            if wire is not None:
                channel = await _secure(ws, wire, url, open_timeout)
            auth = None
            if signer is not None:
                nonce = ws.response.headers.get(NONCE_HEADER) if ws.response else None
                if not nonce:
                    raise ChainClientError("the server gave no nonce: it takes no tokens")
                try:
                    auth = signer(bytes.fromhex(nonce), chain)
                except ValueError:
                    raise ChainClientError("the server's nonce is not hex") from None
            hello = Hello(list(versions), chain, header, agent, client_id, auth)
            await ws.send(channel.seal(encode(hello)))
            async with asyncio.timeout(open_timeout):
                msg = decode_server(channel.open(await ws.recv()))
            if isinstance(msg, Fatal):
                raise ServerFatal(msg.reason)
            if not isinstance(msg, Welcome):
                raise ChainClientError(f"expected Welcome, got {type(msg).__name__}")
        except BaseException:
            await ws.close()
            raise
        return cls(ws, msg, queue_size, channel)

    # -- reading ---------------------------------------------------------------------------------
    async def _read(self) -> None:
        error: ChainClientError
        try:
            async for frame in self.ws:
                msg = decode_server(self.channel.open(frame))
                if isinstance(msg, Confirmed):
                    self._resolve(msg.tx_id, msg, None)
                    if self.subscribed:
                        await self._queue.put(msg)
                elif isinstance(msg, CommitError):
                    self._resolve(msg.tx_id, None, CommitFailed(msg.tx_id, msg.reason))
                elif isinstance(msg, LockResult):
                    lock_fut = self._lock_pending.pop(msg.req, None)
                    if lock_fut is not None and not lock_fut.done():
                        lock_fut.set_result(msg)
                elif isinstance(msg, Fatal):
                    self._closed = ServerFatal(msg.reason)
                    await self._queue.put(msg)
                else:
                    await self._queue.put(msg)
            error = ChainClientError("the server closed the connection")
        except ConnectionClosed as exc:
            error = ChainClientError(f"connection lost: {exc}")
        except WireError as exc:
            error = ChainClientError(f"the server sent a malformed frame: {exc}")
            await self.ws.close(1002, "malformed frame")
        if self._closed is None:
            self._closed = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._closed)
        self._pending.clear()
        for lock_fut in self._lock_pending.values():
            if not lock_fut.done():
                lock_fut.set_exception(self._closed)
        self._lock_pending.clear()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def _resolve(self, tx_id: int, ok: Confirmed | None, err: CommitFailed | None) -> None:
        fut = self._pending.pop(tx_id, None)
        if fut is None or fut.done():
            return
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(ok)  # type: ignore[arg-type]

    async def next(self, timeout: float | None = None) -> ServerMessage:
        """The next message of the stream, in order; ``ServerFatal`` / ``ChainClientError``
        when the connection ended."""
        async with asyncio.timeout(timeout):
            msg = await self._queue.get()
        if msg is None:
            self._queue.put_nowait(None)  # every later call sees the end too
            assert self._closed is not None
            raise self._closed
        if isinstance(msg, Fatal):
            raise ServerFatal(msg.reason)
        self._advance(msg)
        return msg

    def _advance(self, msg: ServerMessage) -> None:
        if isinstance(msg, Events):
            if msg.records and msg.records[-1].commit:
                self.cursor = msg.end
        elif isinstance(msg, Confirmed | EndOfHistory):
            self.cursor = msg.end if isinstance(msg, Confirmed) else msg.position

    async def stream(self) -> AsyncIterator[ServerMessage]:
        while True:
            yield await self.next()

    async def history(self, timeout: float | None = None) -> tuple[list[WireRecord], int]:
        """Every record up to ``EndOfHistory`` (after ``subscribe``) and its position."""
        records: list[WireRecord] = []
        while True:
            msg = await self.next(timeout)
            if isinstance(msg, Events):
                records.extend(msg.records)
            elif isinstance(msg, EndOfHistory):
                return records, msg.position

    # -- requests --------------------------------------------------------------------------------
    async def subscribe(self, from_position: int | None = None) -> None:
        """Stream the chain from ``from_position`` (default: the client's cursor; 0 = start)."""
        self._check()
        self.subscribed = True
        start = self.cursor if from_position is None else from_position
        await self.ws.send(self.channel.seal(encode(Subscribe(start))))

    async def send_commit(self, records: Sequence[CommitRecord]) -> asyncio.Future[Confirmed]:
        """Send one transaction; the future resolves with its ``Confirmed`` (after the server's
        fsync) or fails with ``CommitFailed``."""
        self._check()
        tx_id = next(self._ids)
        fut: asyncio.Future[Confirmed] = asyncio.get_running_loop().create_future()
        self._pending[tx_id] = fut
        await self.ws.send(self.channel.seal(encode(Commit(tx_id, list(records)))))
        return fut

    async def commit(
        self, records: Sequence[CommitRecord], timeout: float | None = None
    ) -> Confirmed:
        fut = await self.send_commit(records)
        async with asyncio.timeout(timeout):
            return await fut

    async def lock_call(
        self, msg: Lock | LockTest | LockSync | LockRenew
    ) -> asyncio.Future[LockResult]:
        """Send a lock message that is answered; the future resolves with its ``LockResult``
        (``ChainClientError`` when the connection ends first)."""
        self._check()
        fut: asyncio.Future[LockResult] = asyncio.get_running_loop().create_future()
        self._lock_pending[msg.req] = fut
        try:
            await self.ws.send(self.channel.seal(encode(msg)))
        except ConnectionClosed as exc:
            self._lock_pending.pop(msg.req, None)
            raise ChainClientError(f"connection lost: {exc}") from None
        return fut

    async def lock_send(self, msg: Unlock | LockCancel) -> None:
        """Send a lock message without an answer of its own."""
        self._check()
        try:
            await self.ws.send(self.channel.seal(encode(msg)))
        except ConnectionClosed as exc:
            raise ChainClientError(f"connection lost: {exc}") from None

    async def send_raw(self, frame: bytes | str) -> None:
        """Send any frame as it is, never sealed (tests of the server's defences)."""
        await self.ws.send(frame)

    def _check(self) -> None:
        if self._closed is not None:
            raise self._closed

    @property
    def closed(self) -> ChainClientError | None:
        return self._closed

    async def wait_closed(self, timeout: float | None = None) -> ChainClientError:
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
        assert self._closed is not None
        return self._closed

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        if not self._reader.done():
            self._reader.cancel()


async def _secure(ws: ClientConnection, wire: ClientWire, url: str, timeout: float) -> Channel:
    name = LEVELS[wire.level][0] if wire.level in LEVELS else str(wire.level)
    try:
        async with asyncio.timeout(timeout):
            return await client_handshake(ws, wire, url)
    except ServerRefusedWire as exc:
        raise WireEncryptionRefused(
            f"the chain server refused wire encryption {wire.level} ({name}): {exc.reason}"
        ) from None
    except KnownServerError as exc:
        raise ServerKeyChanged(str(exc)) from None
    except WireError as exc:
        raise ChainClientError(f"wire encryption handshake failed: {exc}") from None
    except ConnectionClosed as exc:
        raise ChainClientError(
            f"the chain server closed the connection during the wire encryption handshake: {exc}"
        ) from None
