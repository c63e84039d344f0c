"""The in-memory twin of the auth service's client port (``AuthConnector`` / ``AuthLink``):
``MemoryAuthConnector(service)`` drives the service's sans-I/O ``AuthSession`` directly, no
socket, every request and reply still encoded and decoded as on the wire. Contract:
tests/contract/test_auth_contract.py (the same cases as the websocket adapter)."""

from __future__ import annotations

from application.auth_server import AuthService, AuthSession
from application.ports.auth import AuthConnector, AuthLink, AuthUnavailable
from domain.auth.wire import AuthWireError, Challenge, Reply, Request, decode_reply, encode


class MemoryAuthLink(AuthLink):
    def __init__(self, session: AuthSession) -> None:
        self._session: AuthSession | None = session
        first = decode_reply(session.challenge())
        assert isinstance(first, Challenge)
        self._nonce = first.nonce

    @property
    def nonce(self) -> bytes:
        return self._nonce

    async def request(self, request: Request) -> Reply:
        if self._session is None:
            raise AuthUnavailable("the connection to the auth service is closed")
        try:
            reply = decode_reply(self._session.handle(encode(request)))
        except AuthWireError as exc:
            raise AuthUnavailable(f"the auth service answered nonsense: {exc}") from None
        self._nonce = reply.nonce
        return reply

    async def close(self) -> None:
        self._session = None


class MemoryAuthConnector(AuthConnector):
    """Connections to ``service`` in this process (``closed``: as if it could not be reached)."""

    def __init__(self, service: AuthService) -> None:
        self.service = service
        self.closed = False

    async def open(self) -> AuthLink:
        if self.closed:
            raise AuthUnavailable("cannot reach the auth service (the twin is closed)")
        return MemoryAuthLink(AuthSession(self.service))
