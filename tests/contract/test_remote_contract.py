"""The ``RemoteConnector`` / ``RemoteChain`` ports' contract (application/ports/remote.py), run
against the websocket adapter (``WsConnector`` to a chain server in process on 127.0.0.1) and
its in-memory twin (``adapters.memory.MemoryChainServer``: the same server application, no
socket; docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from adapters.clock import SystemClock
from adapters.memory import MemoryChainServer, MemoryRedoLogFactory
from adapters.remote import WsConnector
from adapters.ws_server import WsChainServer
from application.chain_server import ChainServer, ServerConfig
from application.ports import CommitRejected, RemoteChain, RemoteConnector, RemoteError
from domain.wire import Confirmed, EndOfHistory, Events, ServerMessage
from tests.fakes import FastCrypto, closed_udp_port
from tests.server.conftest import LocalChain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
T = 10.0  # seconds any single answer may take


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Remote:
    """Connectors to chains of one server; every connection made is closed at teardown."""

    connector_for: Callable[[str], RemoteConnector]
    #: a connector to a server that cannot be reached
    unreachable: Callable[[], RemoteConnector]
    opened: list[RemoteChain] = field(default_factory=list)

    async def connect(self, chain: LocalChain, name: str = "fs") -> RemoteChain:
        remote = await self.connector_for(name).connect(chain.header)
        self.opened.append(remote)
        return remote


@pytest.fixture(params=["ws", "memory"])
async def remote(request: pytest.FixtureRequest) -> AsyncIterator[Remote]:
    app = ChainServer(MemoryRedoLogFactory(), FastCrypto(), SystemClock(), ServerConfig())
    if request.param == "memory":
        twin = MemoryChainServer(app)
        gone = MemoryChainServer(
            ChainServer(MemoryRedoLogFactory(), FastCrypto(), SystemClock(), ServerConfig())
        )
        gone.close()
        r = Remote(twin.connector, lambda: gone.connector("fs"))
        try:
            yield r
        finally:
            for chain in r.opened:
                await asyncio.wait_for(chain.close(), T)
            twin.close()
        return
    server = WsChainServer(app, "127.0.0.1", 0)
    await server.start()
    r = Remote(
        lambda name: WsConnector(f"{server.url}/db/{name}", open_timeout=T),
        lambda: WsConnector(f"ws://127.0.0.1:{closed_udp_port()}/db/fs", open_timeout=T),
    )
    try:
        yield r
    finally:
        for chain in r.opened:
            await asyncio.wait_for(chain.close(), T)
        await server.close()


async def next_message(chain: RemoteChain) -> ServerMessage:
    return await asyncio.wait_for(chain.next(), T)


async def create(remote: Remote, chain: LocalChain) -> tuple[RemoteChain, int]:
    """Create ``chain`` on the server (its genesis); the connection and the end of its log."""
    conn = await remote.connect(chain)
    end = 0
    for tx in chain.genesis():
        end = (await asyncio.wait_for(conn.commit(tx), T)).end
    return conn, end


class TestRemoteContract:
    async def test_a_chain_the_server_does_not_hold_has_no_header(self, remote: Remote) -> None:
        conn = await remote.connect(LocalChain())
        assert conn.header is None

    async def test_committing_the_genesis_creates_the_chain(self, remote: Remote) -> None:
        chain = LocalChain()
        _, end = await create(remote, chain)
        assert end > 0
        again = await remote.connect(chain)
        assert again.header == chain.header

    async def test_a_subscription_streams_the_history_then_its_end(self, remote: Remote) -> None:
        chain = LocalChain()
        _, end = await create(remote, chain)
        reader = await remote.connect(chain)
        await reader.subscribe(0)
        records = []
        while not isinstance(msg := await next_message(reader), EndOfHistory):
            assert isinstance(msg, Events)
            records += msg.records
        assert msg == EndOfHistory(end)
        sent = [r for tx in chain.genesis() for r in tx]
        assert [(r.meta, r.fmt, r.data) for r in records] == [(r.meta, r.fmt, r.data) for r in sent]
        ends = [i == len(tx) - 1 for tx in chain.genesis() for i in range(len(tx))]
        assert [r.commit for r in records] == ends  # the last record of each transaction

    async def test_a_commit_is_confirmed_and_streamed_live(self, remote: Remote) -> None:
        chain = LocalChain()
        writer, end = await create(remote, chain)
        reader = await remote.connect(chain)
        await writer.subscribe(end)
        await reader.subscribe(end)
        assert await next_message(writer) == EndOfHistory(end)
        assert await next_message(reader) == EndOfHistory(end)
        tx = chain.write(b"hello")
        confirmed = await asyncio.wait_for(writer.commit(tx), T)
        assert isinstance(confirmed, Confirmed)
        assert (confirmed.position, confirmed.end > end) == (end, True)
        live = await next_message(reader)
        assert isinstance(live, Events)
        assert [(r.meta, r.data) for r in live.records] == [(r.meta, r.data) for r in tx]
        assert live.end == confirmed.end
        assert await next_message(writer) == confirmed  # the writer sees its Confirmed instead

    async def test_a_refused_commit_raises_commit_rejected(self, remote: Remote) -> None:
        chain = LocalChain()
        conn, _ = await create(remote, chain)
        with pytest.raises(CommitRejected) as caught:
            await asyncio.wait_for(conn.commit(chain.genesis()[0]), T)  # a replay
        assert caught.value.reason

    async def test_the_wrong_chain_is_refused(self, remote: Remote) -> None:
        await create(remote, LocalChain())
        with pytest.raises(RemoteError):
            await remote.connect(LocalChain())  # another chain's header under the same name

    async def test_an_unreachable_server_raises_remote_error(self, remote: Remote) -> None:
        with pytest.raises(RemoteError):
            await remote.unreachable().connect(LocalChain().header)

    async def test_close_ends_the_stream_and_closing_twice_is_harmless(
        self, remote: Remote
    ) -> None:
        chain = LocalChain()
        conn, end = await create(remote, chain)
        await conn.subscribe(end)
        assert await next_message(conn) == EndOfHistory(end)
        await asyncio.wait_for(conn.close(), T)
        await asyncio.wait_for(conn.close(), T)
        with pytest.raises(RemoteError):
            await next_message(conn)
