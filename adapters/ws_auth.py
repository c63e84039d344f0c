"""The auth service on websockets (issue 14): ``serve_auth`` answers one connection at
``ws://HOST:PORT/auth`` on the chain server's listener (adapters/ws_server.py routes it here);
``WsAuthConnector`` is the client side of the ``AuthConnector`` port.

The protocol is ``application.auth_server.AuthSession`` (sans I/O); here frames move: the
challenge first, then a reply per request. Requests of all connections are handled one at a
time (the service's state and log are single-threaded), off the event loop (each event is
fsync'd). A frame that is not binary, or larger than ``MAX_AUTH_FRAME`` (refused by websockets
itself), ends the connection; a malformed one is answered with a ``Refusal``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode

from application.auth_server import AuthService, AuthSession
from application.ports.auth import AuthConnector, AuthLink, AuthUnavailable
from domain.auth.wire import (
    MAX_AUTH_FRAME,
    AuthWireError,
    Challenge,
    Reply,
    Request,
    decode_reply,
    encode,
)

_log = logging.getLogger("wasmer_dfs.auth")

AUTH_PATH = "/auth"


class AuthHost:
    """The auth service of a server and the lock that makes its requests one at a time."""

    def __init__(self, service: AuthService) -> None:
        self.service = service
        self.lock = asyncio.Lock()
        self.closing = False
        self._conns: set[ServerConnection] = set()

    async def serve(self, ws: ServerConnection, idle_timeout: float = 300.0) -> None:
        """Answer one connection until it ends, stays idle ``idle_timeout`` s, or the server
        stops."""
        if self.closing:
            await ws.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        self._conns.add(ws)
        try:
            await self._serve(ws, idle_timeout)
        finally:
            self._conns.discard(ws)

    async def _serve(self, ws: ServerConnection, idle_timeout: float) -> None:
        session = AuthSession(self.service)
        try:
            await ws.send(session.challenge())
            while True:
                async with asyncio.timeout(idle_timeout):
                    frame = await ws.recv()
                if isinstance(frame, str):
                    await ws.close(CloseCode.UNSUPPORTED_DATA, "auth frames are binary")
                    return
                async with self.lock:
                    reply = await asyncio.to_thread(session.handle, bytes(frame))
                await ws.send(reply)
        except ConnectionClosed:
            return
        except TimeoutError:
            await ws.close(CloseCode.NORMAL_CLOSURE, "idle")

    async def close(self) -> None:
        """Close every connection (1001), then the service's log once no request is running."""
        self.closing = True
        for ws in list(self._conns):
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.GOING_AWAY, "server shutting down")
        async with self.lock:
            self.service.close()


class WsAuthLink(AuthLink):
    def __init__(self, ws: ClientConnection, nonce: bytes, timeout: float) -> None:
        self._ws = ws
        self._nonce = nonce
        self._timeout = timeout

    @property
    def nonce(self) -> bytes:
        return self._nonce

    async def request(self, request: Request) -> Reply:
        try:
            async with asyncio.timeout(self._timeout):
                await self._ws.send(encode(request))
                frame = await self._ws.recv()
        except TimeoutError:
            raise AuthUnavailable(
                f"the auth service did not answer within {self._timeout:g} s"
            ) from None
        except ConnectionClosed as exc:
            raise AuthUnavailable(f"the auth service closed the connection ({exc})") from None
        reply = _reply(frame)
        self._nonce = reply.nonce
        return reply

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()


def _reply(frame: str | bytes) -> Reply:
    if isinstance(frame, str):
        raise AuthUnavailable("the auth service sent text, not a reply")
    try:
        return decode_reply(frame)
    except AuthWireError as exc:
        raise AuthUnavailable(f"the auth service answered nonsense: {exc}") from None


class WsAuthConnector(AuthConnector):
    """Connections to the auth service at ``url`` (``ws://HOST:PORT/auth``)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout

    async def open(self) -> AuthLink:
        try:
            async with asyncio.timeout(self.timeout):
                ws = await connect(
                    self.url, max_size=MAX_AUTH_FRAME, compression=None, open_timeout=None
                )
                first = _reply(await ws.recv())
        except TimeoutError:
            raise AuthUnavailable(
                f"the auth service at {self.url} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            raise AuthUnavailable(
                f"cannot reach the auth service at {self.url}: {exc} (is `wasmer-dfs serve`"
                " running there? give its address with --auth ws://HOST:PORT/auth)"
            ) from None
        if not isinstance(first, Challenge):
            await ws.close()
            raise AuthUnavailable(f"{self.url} is not an auth service (no challenge)")
        return WsAuthLink(ws, first.nonce, self.timeout)
