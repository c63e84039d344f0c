"""Adapters of the replication ports (application/replication.py): the websocket connection to a
chain server (``ChainClient``) and the kernel's caches of a pyfuse3 mount."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

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
    """Invalidation through pyfuse3, off the event loop: the kernel may need an answer from this
    very loop before it can drop a cached page or name, so calling it inline could deadlock."""

    async def invalidate(self, inodes: set[int], entries: set[tuple[int, bytes]]) -> None:
        if inodes or entries:
            await asyncio.to_thread(_invalidate, sorted(inodes), sorted(entries))


def _invalidate(inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
    import pyfuse3

    for parent, name in entries:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, name)
    for ino in inodes:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(ino, False)
