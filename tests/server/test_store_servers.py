"""Two chain servers over one shared chain store (issue 16, docs/adr/0022), in this process:
``StoreChainServer`` over the in-memory twin of the store (its stores share chains as two
servers share a JetStream stream), real websockets, real clients. What one server accepted the
other serves, live; a commit is validated against the order the store decided."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from adapters.chain_store_nats import NatsChainStoreFactory
from adapters.clock import SystemClock
from adapters.memory.chain_store import MemoryChainStoreFactory
from adapters.ws_client import CommitFailed
from adapters.ws_server import WsChainServer
from application.chain_server import ServerConfig
from application.chain_store_host import StoreChainServer, StoreHost
from application.ports.chain_store import ChainStoreFactory
from domain.wire import EndOfHistory, Events
from tests.fakes import FastCrypto
from tests.nats_cluster import NatsCluster, nats_cluster

from .conftest import Clients, LocalChain, create_chain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


@pytest.fixture(params=["memory", "nats"])
def store_factories(request: pytest.FixtureRequest) -> Iterator[list[ChainStoreFactory]]:
    """Two servers' factories over one store: the twin, or a real 3-node JetStream cluster."""
    if request.param == "memory":
        shared = MemoryChainStoreFactory()
        yield [shared, shared]
        return
    cluster: NatsCluster = request.getfixturevalue("cluster")
    made: list[ChainStoreFactory] = []
    try:
        for _ in range(2):
            made.append(NatsChainStoreFactory(cluster.servers, replicas=3))
        yield made
    finally:
        for f in made:
            f.close()


@pytest.fixture
def name() -> str:
    """A chain name of its own (the NATS cluster is shared by the module's tests)."""
    return f"chain-{secrets.token_hex(4)}"


@pytest.fixture
async def pair(
    store_factories: list[ChainStoreFactory],
) -> AsyncIterator[tuple[WsChainServer, WsChainServer]]:
    started: list[WsChainServer] = []
    try:
        for stores in store_factories:
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
    pair: tuple[WsChainServer, WsChainServer], clients: Clients, name: str
) -> None:
    one, two = pair
    chain = LocalChain()
    a = await clients.connect(f"{one.url}/db/{name}", header=chain.header)
    end = await create_chain(a, chain)
    b = await clients.connect(f"{two.url}/db/{name}")
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
    pair: tuple[WsChainServer, WsChainServer], clients: Clients, name: str
) -> None:
    one, two = pair
    chain = LocalChain()
    a = await clients.connect(f"{one.url}/db/{name}", header=chain.header)
    await create_chain(a, chain)
    b = await clients.connect(f"{two.url}/db/{name}")
    tx = chain.write(b"once")
    await a.commit(tx, timeout=10)
    # server 2 validates against the chain as the store orders it: the same events again
    # are a replay, whether or not it had taken in server 1's append before
    with pytest.raises(CommitFailed, match="already in the chain"):
        await b.commit(tx, timeout=10)
    again = chain.write(b"twice")
    assert (await b.commit(again, timeout=10)).position > 0


async def test_commits_racing_through_two_servers_all_land_in_one_order(
    pair: tuple[WsChainServer, WsChainServer], clients: Clients, name: str
) -> None:
    """Transactions committed at once through both servers: each is confirmed exactly once,
    both servers serve the same history (the same records at the same positions)."""
    one, two = pair
    chain = LocalChain()
    a = await clients.connect(f"{one.url}/db/{name}", header=chain.header)
    await create_chain(a, chain)
    b = await clients.connect(f"{two.url}/db/{name}")
    txs = [chain.write(b"tx %d" % i) for i in range(16)]
    confirmed = await asyncio.gather(
        *((a if i % 2 == 0 else b).commit(tx, timeout=30) for i, tx in enumerate(txs))
    )
    hosts = [server.app.hosts[name] for server in (one, two)]
    assert all(isinstance(h, StoreHost) for h in hosts)
    # the race happened: a server's append lost to the other's and was validated again
    assert sum(h.conflicts for h in hosts if isinstance(h, StoreHost)) > 0
    spans = sorted((c.position, c.end) for c in confirmed)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "two transactions confirmed at overlapping positions"
    final = max(c.end for c in confirmed)
    histories = []
    for server in (one, two):
        # what the other server appended is served once this one has taken it in (at once
        # when its store wakes it, at the latest after its one-second poll)
        for _ in range(100):
            reader = await clients.connect(f"{server.url}/db/{name}")
            if reader.welcome.position == final:
                break
            await reader.close()
            await asyncio.sleep(0.05)
        assert reader.welcome.position == final
        await reader.subscribe(0)
        records = []
        while True:
            msg = await reader.next(timeout=10)
            if isinstance(msg, EndOfHistory):
                break
            records.extend((r.position, r.meta, r.data) for r in msg.records)
        histories.append(records)
    assert histories[0] == histories[1]
    metas = [meta for _, meta, _ in histories[0]]
    for tx in txs:  # every transaction's records, once each
        assert sum(1 for m in metas if m == tx[-1].meta) == 1
