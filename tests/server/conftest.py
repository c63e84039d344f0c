"""Fixtures of the chain-server tier: a real websockets server on 127.0.0.1 (a free port) over a
data directory, always stopped, and client-side chains built with ``ChainSession`` whose
transactions are signed as a server demands."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.clock import SystemClock
from adapters.memory.log import MemoryRedoLogFactory
from adapters.redolog import FileRedoLogFactory
from adapters.ws_client import ChainClient
from adapters.ws_server import WsChainServer
from application.chain_server import ChainServer, ServerConfig
from application.session import ChainSession, Formats
from application.wire_tx import digest_of, reseal, split_transactions, transaction_records
from domain.events import LocalSeal, Meta, Signature, Timestamp
from domain.wire import CommitRecord
from tests.fakes import FAST_KDF, FastCrypto


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Servers:
    """Starts chain servers on a data directory; every one started is stopped at teardown."""

    data_dir: Path
    started: list[WsChainServer] = field(default_factory=list)

    async def start(self, config: ServerConfig | None = None, **kw: Any) -> WsChainServer:
        app = ChainServer(
            FileRedoLogFactory(self.data_dir), FastCrypto(), SystemClock(), config or ServerConfig()
        )
        server = WsChainServer(app, "127.0.0.1", 0, **kw)
        await server.start()
        self.started.append(server)
        return server

    async def stop_all(self) -> None:
        for server in self.started:
            await server.close()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    s = Servers(tmp_path / "server")
    try:
        yield s
    finally:
        await s.stop_all()


@pytest.fixture
async def server(servers: Servers) -> WsChainServer:
    return await servers.start()


@dataclass
class Clients:
    opened: list[ChainClient] = field(default_factory=list)

    async def connect(self, url: str, **kw: Any) -> ChainClient:
        client = await ChainClient.connect(url, **kw)
        self.opened.append(client)
        return client


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    c = Clients()
    try:
        yield c
    finally:
        for client in c.opened:
            with contextlib.suppress(Exception):
                await client.close()


class LocalChain:
    """A chain as a mount holds it (ChainSession on an in-memory log), whose transactions are
    sent with a signed seal: genesis first, then one signed transaction per ``write``."""

    def __init__(self, passcode: bytes | None = b"pw") -> None:
        self.crypto = FastCrypto()
        self.clock = SystemClock()
        self.logs = MemoryRedoLogFactory()
        self.session = ChainSession.create(
            self.logs, "local", passcode, self.crypto, self.clock, Formats(), 4096, kdf=FAST_KDF
        )
        self._next_key = 1000

    @property
    def header(self) -> bytes:
        return self.session.header.encode()

    @property
    def chain_id(self) -> bytes:
        return self.session.header.chain_id

    def genesis(self) -> list[list[CommitRecord]]:
        """The transactions ChainSession.create wrote (the chain key, then an attestation)."""
        return split_transactions(self.session.log)

    def write(
        self, payload: bytes, *, sign: bool = True, key: int | None = None
    ) -> list[CommitRecord]:
        """One transaction writing a new object (a child of the chain root: root key needed)."""
        if key is None:
            self._next_key += 1
            key = self._next_key
        s = self.session
        start = s.log.committed_end
        okey = s.new_object_key() if s.encrypted else None
        s.write(key, type_name="blob", payload=payload, okey=okey)
        s.commit(sign=sign)
        return transaction_records(s.log, start)

    def signed_seal(self, events: list[CommitRecord], secret: bytes | None = None) -> list[Meta]:
        """A seal over ``events`` signed by the root key (or by ``secret`` under its name)."""
        signing = self.session._signing
        assert signing is not None
        pk_hash, root_secret = signing
        ts = Timestamp(self.clock.now_ms())
        digest = digest_of(self.chain_id, events, [ts])
        sig = self.crypto.sign(secret or root_secret, digest)
        return [Signature(pk_hash, digest, sig), ts]

    def signed(self, tx: list[CommitRecord]) -> list[CommitRecord]:
        """``tx`` (a local transaction, maybe sealed locally) with a root-key signature seal."""
        return reseal(tx, self.signed_seal(tx[:-1]))


def needs_resealing(tx: list[CommitRecord]) -> bool:
    from application.wire_tx import header_of

    return header_of(tx[-1]).find(LocalSeal) is not None


@pytest.fixture
def local_chain() -> Callable[..., LocalChain]:
    return LocalChain


async def create_chain(client: ChainClient, chain: LocalChain) -> int:
    """Commit ``chain``'s genesis through ``client``; the durable end after it."""
    assert client.welcome.header is None, "the chain exists on the server already"
    end = 0
    for tx in chain.genesis():
        end = (await client.commit(tx, timeout=10)).end
    return end
