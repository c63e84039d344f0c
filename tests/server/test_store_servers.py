"""Two chain servers over one shared chain store (issue 16, docs/adr/0022), in this process:
``StoreChainServer`` over the in-memory twin of the store (its stores share chains as two
servers share a JetStream stream), real websockets, real clients. What one server accepted the
other serves, live; a commit is validated against the order the store decided."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.clock import SystemClock
from adapters.memory.chain_store import MemoryChainStoreFactory
from adapters.ws_client import CommitFailed
from adapters.ws_server import WsChainServer
from application.chain_server import ServerConfig
from application.chain_store_host import StoreChainServer
from domain.wire import EndOfHistory, Events
from tests.fakes import FastCrypto

from .conftest import Clients, LocalChain, create_chain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[WsChainServer, WsChainServer]]:
    stores = MemoryChainStoreFactory()
    started: list[WsChainServer] = []
    try:
        for _ in range(2):
            app = StoreChainServer(stores, FastCrypto(), SystemClock(), ServerConfig())
            server = WsChainServer(app, "127.0.0.1", 0)
            await server.start()
            started.append(server)
        yield started[0], started[1]
    finally:
        for server in started:
            await server.close()


async def next_events(client: object, timeout: float = 10) -> Events:
    msg = await client.next(timeout=timeout)  # type: ignore[attr-defined]
    assert isinstance(msg, Events), msg
    return msg


async def test_live_events_cross_servers_both_ways(
    pair: tuple[WsChainServer, WsChainServer], clients: Clients
) -> None:
    one, two = pair
    chain = LocalChain()
    a = await clients.connect(f"{one.url}/db/fs", header=chain.header)
    end = await create_chain(a, chain)
    b = await clients.connect(f"{two.url}/db/fs")
    assert b.welcome.header == chain.header and b.welcome.position == end
    await a.subscribe(end)
    await b.subscribe(0)  # the whole history, read from the store by server 2
    history = []
    while True:
        msg = await b.next(timeout=10)
        if isinstance(msg, EndOfHistory):
            assert msg.position == end
            break
        history.extend(msg.records)
    assert [r.meta for r in history] == [r.meta for tx in chain.genesis() for r in tx]
    assert await a.next(timeout=10) == EndOfHistory(end)

    tx = chain.write(b"from a, through server 1")
    confirmed = await a.commit(tx, timeout=10)
    got = await next_events(b)  # server 2 learnt it from the store, not from server 1
    assert [(r.meta, r.data) for r in got.records] == [(r.meta, r.data) for r in tx]
    assert got.records[0].position == confirmed.position and got.end == confirmed.end

    back = chain.write(b"from b, through server 2")
    confirmed_b = await b.commit(back, timeout=10)
    assert confirmed_b.position == confirmed.end  # the same positions on both servers
    msgs = [await a.next(timeout=10), await a.next(timeout=10)]
    events = [m for m in msgs if isinstance(m, Events)]
    assert events and [(r.meta, r.data) for r in events[0].records] == [
        (r.meta, r.data) for r in back
    ]


async def test_a_transaction_accepted_by_one_server_is_a_replay_on_the_other(
    pair: tuple[WsChainServer, WsChainServer], clients: Clients
) -> None:
    one, two = pair
    chain = LocalChain()
    a = await clients.connect(f"{one.url}/db/fs", header=chain.header)
    await create_chain(a, chain)
    b = await clients.connect(f"{two.url}/db/fs")
    tx = chain.write(b"once")
    await a.commit(tx, timeout=10)
    # server 2 validates against the chain as the store orders it: the same events again
    # are a replay, whether or not it had taken in server 1's append before
    with pytest.raises(CommitFailed, match="already in the chain"):
        await b.commit(tx, timeout=10)
    again = chain.write(b"twice")
    assert (await b.commit(again, timeout=10)).position > 0
