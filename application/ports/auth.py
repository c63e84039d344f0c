"""Port of the auth service as a client sees it (issue 14, docs/adr/0018): ``AuthConnector``
opens an ``AuthLink``, one connection to ``ws://HOST:PORT/auth`` that sends a request and
returns the reply. The typed operations and the signing are application/auth_client.py's.

Adapter: ``adapters.ws_auth.WsAuthConnector``; twin: ``adapters.memory.auth.MemoryAuthConnector``
(drives the service's ``AuthSession`` directly). Contract: tests/contract/test_auth_contract.py."""

from __future__ import annotations

import abc

from domain.auth.errors import AuthError
from domain.auth.wire import Reply, Request


class AuthUnavailable(AuthError):
    """The auth service cannot be reached, or the connection ended (the message says why)."""


class AuthLink(abc.ABC):
    """One connection to the auth service."""

    @property
    @abc.abstractmethod
    def nonce(self) -> bytes:
        """The nonce the next signed request must sign: the server's challenge at first, then
        the one of the last reply (each is good for one request)."""

    @abc.abstractmethod
    async def request(self, request: Request) -> Reply:
        """Send ``request`` and return the server's reply (a ``Refusal`` too: the caller reads
        it); ``AuthUnavailable`` when the connection fails or the reply is not one."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the connection (nothing may be called after it)."""


class AuthConnector(abc.ABC):
    """Opens connections to one auth service (its URL is the adapter's)."""

    @abc.abstractmethod
    async def open(self) -> AuthLink:
        """A new connection, its first nonce received; ``AuthUnavailable`` when the service
        cannot be reached or does not answer as one."""
