"""The chain server on websockets (asyncio): one connection per client at ``/db/<chain>``.

The protocol logic is ``application.chain_server`` and its rooms (``Peer`` in
``application.server_peer``; sans I/O); this adapter moves frames:

* a *reader* per connection decodes frames and hands them to the connection's ``Peer``; it stops
  reading while the client owes itself too many answers (``max_pending_commits``), so a client
  that commits without reading is held back by TCP, not by server memory;
* a *writer* per connection sends what ``Peer.next_output`` gives, one frame at a time; a frame
  that cannot leave within ``send_timeout`` (or a live stream that lags too far) ends the
  connection with ``Fatal("too slow")``; the client resubscribes from its position;
* a *syncer* per chain fsyncs the log off the loop (group commit: one fsync covers every
  transaction appended before it) and then moves the chain's durable end, which wakes the
  writers: ``Confirmed`` and live events only ever follow an fsync;
* a *lock ticker* expires lock leases and ends the grace period after a start (ADR 0010), every
  tenth of a lease.

Frames above ``max_frame`` are refused by websockets itself (close code 1009); a malformed frame
closes its connection with ``Fatal`` and code 1002; a refusal with ``Fatal`` and code 1008.
Every failure stays within its connection.

Wire encryption (docs/adr/0013): a connection whose first frame is a ``SecureOffer`` runs the
handshake (``adapters/secure_channel.py``) and then seals and opens every frame; a server built
with ``ServerWire(required=N)`` refuses plain clients and offers below N with ``Fatal``.
``max_frame`` counts the plain frame: an encrypted one may be ``TAG_SIZE`` bytes longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from adapters.redolog_format import validate_chain_name
from adapters.secure_channel import PLAIN, Channel, ServerWire, WireRefused, server_handshake
from adapters.store_follower import StoreFollower
from application.chain_admission import Refused
from application.chain_host import ChainHost, HostBroken
from application.chain_server import ChainServer
from application.chain_store_host import StoreHost
from application.server_peer import Peer
from domain.auth.chains import CHAIN_NONCE_BYTES, NONCE_HEADER
from domain.secure_wire import TAG_SIZE, SecureOffer, decode_offer
from domain.wire import Commit, Fatal, Hello, WireError, decode_client, encode

if TYPE_CHECKING:
    from adapters.ws_auth import AuthHost

_log = logging.getLogger("wasmer_dfs.server")

PATH_PREFIX = "/db/"
#: the auth service's path on the same listener (adapters/ws_auth.py; issue 14)
AUTH_PATH = "/auth"


def chain_from_path(path: str) -> str:
    """The chain name of a request path ``/db/<name>``; ``ValueError`` otherwise."""
    parts = urlsplit(path)
    if not parts.path.startswith(PATH_PREFIX):
        raise ValueError(f"the path must be {PATH_PREFIX}<chain>, not {parts.path!r}")
    return validate_chain_name(unquote(parts.path[len(PATH_PREFIX) :]))


def _add_nonce(ws: ServerConnection, request: Request, response: Response) -> None:
    """Every handshake's answer carries a fresh nonce that a token's Hello signs (ADR 0018)."""
    response.headers[NONCE_HEADER] = secrets.token_hex(CHAIN_NONCE_BYTES)


def _nonce_of(ws: ServerConnection) -> bytes:
    value = ws.response.headers.get(NONCE_HEADER) if ws.response is not None else None
    return bytes.fromhex(value) if value else b""


def _close_reason(reason: str) -> str:
    """A websocket close reason: at most 123 bytes of UTF-8."""
    return reason.encode()[:120].decode(errors="ignore")


class _Syncer:
    """Group commit of one chain: fsync off the loop, then report the durable end."""

    def __init__(self, host: ChainHost) -> None:
        self.host = host
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def kick(self) -> None:
        self._kick.set()

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            await self.step()

    async def step(self) -> None:
        async with self._lock:
            host = self.host
            end = host.committed_end
            if host.broken is not None or end <= host.durable_end:
                return
            try:
                await asyncio.to_thread(host.sync)
            except Exception as exc:
                host.fail(f"fsync of chain {host.name!r} failed: {exc}")
                return
            host.made_durable(end)

    async def flush(self) -> None:
        """Make everything appended so far durable."""
        while self.host.broken is None and self.host.committed_end > self.host.durable_end:
            await self.step()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _ShuttingDown(Exception):
    pass


class _Connection:
    def __init__(self, owner: WsChainServer, ws: ServerConnection, chain: str) -> None:
        self.owner = owner
        self.ws = ws
        self.channel: Channel = PLAIN
        self.config = owner.app.config
        self.peer = Peer(owner.app, chain, self._wakeup)
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.idle = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None
        self.main: asyncio.Task[None] | None = None
        self.failure: Refused | None = None

    def _wakeup(self) -> None:
        self.wake.set()
        if self.peer.too_slow and self.failure is None:
            self.failure = Refused("too slow")
            if self.writer is not None:
                self.writer.cancel()  # it may be stuck in a send to a client that reads nothing

    def stop_reading(self) -> None:
        """Shutdown: read no more frames (no commit is ever half done: they are synchronous)."""
        if self.reader is not None:
            self.reader.cancel()
        elif self.main is not None:
            self.main.cancel()  # still in the handshake's Hello

    async def run(self) -> None:
        self.main = asyncio.current_task()
        code, reason = CloseCode.NORMAL_CLOSURE, ""
        try:
            await self._hello()
            await self._pump()
        except WireError as exc:
            code, reason = CloseCode.PROTOCOL_ERROR, str(exc)
        except HostBroken as exc:
            code, reason = CloseCode.INTERNAL_ERROR, exc.reason
        except Refused as exc:
            code, reason = CloseCode.POLICY_VIOLATION, exc.reason
        except ConnectionClosed as exc:
            _log.info("%s: connection closed (%s)", self.peer.chain, exc)
        except (_ShuttingDown, asyncio.CancelledError):
            if not self.owner.closing:
                raise
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            code, reason = CloseCode.GOING_AWAY, "server shutting down"
        finally:
            host = self.peer.host
            if self.peer.close() and host is not None:
                await self.owner.release(host)
        if code == CloseCode.GOING_AWAY:
            await self.ws.close(code, reason)
        elif reason:
            _log.info("%s: ending a connection: %s", self.peer.chain, reason)
            await self._fatal(code, reason)

    async def _fatal(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(1.0):
                await self.ws.send(self.channel.seal(encode(Fatal(reason))))
        await self.ws.close(code, _close_reason(reason))

    async def _hello(self) -> None:
        try:
            async with asyncio.timeout(self.config.hello_timeout):
                frame = await self.ws.recv()
                offer = decode_offer(frame)
                if offer is not None:
                    self.channel = await self._secure(frame, offer)
                    frame = self.channel.open(await self.ws.recv())
        except TimeoutError:
            raise Refused(f"no Hello within {self.config.hello_timeout:g} s") from None
        wire = self.owner.wire
        if not self.channel.encrypted and wire is not None and wire.required is not None:
            raise Refused(
                f"this chain server requires wire encryption (at least {wire.required} bits):"
                f" connect with --wire-encryption {wire.required} or more"
            )
        msg = decode_client(frame)
        if not isinstance(msg, Hello):
            raise Refused("the first frame must be a Hello")
        self.peer.admit(msg, _nonce_of(self.ws))  # a token's signature (ADR 0018)
        host = await self.owner.host(self.peer.chain)
        welcome = self.peer.hello(msg, host)
        await self.ws.send(self.channel.seal(encode(welcome)))

    async def _secure(self, frame: Any, offer: SecureOffer) -> Channel:
        try:
            return await server_handshake(self.ws, bytes(frame), offer, self.owner.wire)
        except WireRefused as exc:
            raise Refused(exc.reason) from None

    async def _pump(self) -> None:
        self.reader = asyncio.create_task(self._read())
        self.writer = asyncio.create_task(self._write())
        tasks = {self.reader, self.writer}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self.failure is not None:
                raise self.failure
            if self.reader.done() and self.reader.cancelled() and self.owner.closing:
                await self._drain()
                raise _ShuttingDown
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self) -> None:
        """Shutdown: after the final fsync, send what is owed (Confirmed, the last live events)
        for a little while."""
        await self.owner.flushed.wait()
        self.idle.clear()
        self.wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.owner.drain_timeout):
                await self.idle.wait()

    async def _read(self) -> None:
        limit = self.config.limits.max_pending_commits
        async for frame in self.ws:
            msg = decode_client(self.channel.open(frame))
            self.peer.handle(msg)
            if isinstance(msg, Commit) and self.peer.host is not None:
                self.owner.syncer(self.peer.host).kick()
            while self.peer.backlog >= limit:
                self.room.clear()
                await self.room.wait()

    async def _write(self) -> None:
        peer, ws = self.peer, self.ws
        timeout = self.config.send_timeout
        while True:
            msg = peer.next_output()
            if msg is None:
                self.wake.clear()
                msg = peer.next_output()
                if msg is None:
                    self.idle.set()
                    await self.wake.wait()
                    continue
            self.idle.clear()
            frame = self.channel.seal(encode(msg))
            try:
                async with asyncio.timeout(timeout):
                    await ws.send(frame)
            except TimeoutError:
                self.failure = Refused("too slow")
                return
            self.room.set()


class WsChainServer:
    """The websocket front of a ``ChainServer`` on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        app: ChainServer,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        drain_timeout: float = 2.0,
        close_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        wire: ServerWire | None = None,
        auth: AuthHost | None = None,
    ) -> None:
        """``wire``: the server's wire encryption keys and the least level it requires (None:
        encrypted clients are refused, plain ones served). ``auth``: the auth service served at
        ``/auth`` (None: none)."""
        self.app = app
        self.wire = wire
        self.auth = auth
        self.bind = (host, port)
        self.drain_timeout = drain_timeout
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.closing = False
        self.flushed = asyncio.Event()
        self._server: Server | None = None
        self._conns: set[_Connection] = set()
        self._syncers: dict[ChainHost, _Syncer] = {}
        #: chains over a shared store: what other servers append (adapters/store_follower.py)
        self._followers: dict[ChainHost, StoreFollower] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._lock_ticker: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        limits = self.app.config.limits
        self._server = await serve(
            self._handler,
            self.bind[0],
            self.bind[1],
            process_request=self._check_path,
            process_response=_add_nonce,
            max_size=limits.max_frame + TAG_SIZE,
            max_queue=4,
            compression=None,  # payloads are ciphertext: nothing to gain, a bomb to fear
            ping_interval=self.ping_interval,
            close_timeout=self.close_timeout,
            server_header="wasmer-dfs",
        )
        self._lock_ticker = asyncio.create_task(self._lock_ticks())

    async def _lock_ticks(self) -> None:
        interval = min(1.0, max(0.01, self.app.config.locks.lease / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                self.app.lock_tick()
            except Exception:  # a bug must not stop the leases
                _log.exception("lock tick failed")

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.bind[0]
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    async def close(self) -> None:
        """Graceful stop: accept nothing, read no more frames, fsync every chain, send what is
        owed, close every connection (1001) and every log."""
        if self.closing:
            return
        self.closing = True
        if self._lock_ticker is not None:
            self._lock_ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lock_ticker
        server = self._server
        if server is not None:
            server.close(close_connections=False)  # stop listening now
        for conn in list(self._conns):
            conn.stop_reading()
        if self.auth is not None:
            await self.auth.close()  # ends its connections, then closes its log
        for syncer in list(self._syncers.values()):
            await syncer.flush()
        self.flushed.set()
        if server is not None:
            await server.wait_closed()
        for syncer in list(self._syncers.values()):
            await syncer.flush()
            await syncer.stop()
        self._syncers.clear()
        for follower in list(self._followers.values()):
            await follower.stop()
        self._followers.clear()
        self.app.close()
        _log.info("chain server stopped")

    # -- chains ----------------------------------------------------------------------------------
    async def host(self, name: str) -> ChainHost | None:
        """The chain's host, loaded (off the loop) when it is not yet."""
        host = self.app.loaded(name)
        if host is not None:
            return host
        async with self._loading.setdefault(name, asyncio.Lock()):
            host = self.app.loaded(name)
            if host is None:
                loaded = await asyncio.to_thread(self.app.load, name)
                host = self.app.adopt(loaded) if loaded is not None else None
            if host is not None:
                self.follow(host)
            return host

    def follow(self, host: ChainHost) -> None:
        """Take in what other servers append to ``host`` (a chain over a shared store)."""
        if isinstance(host, StoreHost) and host not in self._followers:
            self._followers[host] = StoreFollower(host)

    def syncer(self, host: ChainHost) -> _Syncer:
        syncer = self._syncers.get(host)
        if syncer is None:
            syncer = self._syncers[host] = _Syncer(host)
            self.follow(host)  # a chain created here
        return syncer

    async def release(self, host: ChainHost) -> None:
        """A chain lost its last connection: make it durable and close its log (unless a new
        connection came meanwhile)."""
        syncer = self._syncers.get(host)
        if syncer is not None:
            await syncer.flush()
        if self.app.in_use(host) or self.closing:
            return
        if syncer is not None:
            self._syncers.pop(host, None)
            await syncer.stop()
        follower = self._followers.pop(host, None)
        if follower is not None:
            await follower.stop()
        self.app.close_host(host)

    # -- connections -----------------------------------------------------------------------------
    def _check_path(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.auth is not None and urlsplit(request.path).path == AUTH_PATH:
            return None
        try:
            chain_from_path(request.path)
        except ValueError as exc:
            return ws.respond(HTTPStatus.NOT_FOUND, f"{exc}\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        if self.closing:
            await ws.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        if self.auth is not None and urlsplit(ws.request.path).path == AUTH_PATH:
            await self.auth.serve(ws)
            return
        conn = _Connection(self, ws, chain_from_path(ws.request.path))
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)
