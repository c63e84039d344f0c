"""The chain server on loopback: a real websockets server in this process on 127.0.0.1, real
clients, real ML-DSA signatures, file redo logs in a temporary data directory."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from adapters.redolog import FileRedoLogFactory
from adapters.ws_client import ChainClient, ChainClientError, CommitFailed, ServerFatal
from adapters.ws_server import WsChainServer
from application.chain_server import ServerConfig
from application.wire_tx import digest_of, header_of, reseal
from domain.events import (
    DataKey,
    LocalSeal,
    Meta,
    PublicKey,
    Signature,
    Timestamp,
    Type,
    make_header,
)
from domain.formats import Format
from domain.hashing import key_hash, local_mac
from domain.wire import (
    CommitRecord,
    Confirmed,
    EndOfHistory,
    Events,
    Hello,
    ServerLimits,
    Subscribe,
    WireRecord,
    encode,
)

from .conftest import Clients, LocalChain, Servers, create_chain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def url(server: WsChainServer, chain: str = "fs") -> str:
    return f"{server.url}/db/{chain}"


Row = tuple[int, bytes, int, bytes | None, bool]


def server_log(data_dir: Path, chain: str = "fs") -> list[Row]:
    """Every committed record of the server's log for ``chain``, data included."""
    log = FileRedoLogFactory(data_dir, lock=False).open(chain, read_only=True)
    try:
        return [
            (
                r.position,
                r.meta,
                r.fmt,
                log.read_data(r.data) if r.data is not None else None,
                r.commit,
            )
            for r in log.scan()
        ]
    finally:
        log.close()


def as_tuples(records: list[WireRecord]) -> list[Row]:
    return [(r.position, r.meta, r.fmt, r.data, r.commit) for r in records]


async def expect_closed(client: ChainClient, match: str) -> None:
    """The server ended ``client``'s connection with a reason matching ``match``."""
    with pytest.raises(ChainClientError, match=match):
        while True:
            await client.next(timeout=10)


async def still_serves(server: WsChainServer, clients: Clients, chain: LocalChain) -> None:
    """Another client can still read and commit on the chain."""
    other = await clients.connect(url(server))
    await other.subscribe(0)
    await other.history(timeout=10)
    confirmed = await other.commit(chain.write(b"still serving"), timeout=10)
    assert confirmed.end > confirmed.position


# --- the happy paths --------------------------------------------------------------------------
async def test_live_replication_between_two_subscribers(
    server: WsChainServer, clients: Clients
) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    assert a.welcome.header is None and a.welcome.position == 0  # new on the server
    end = await create_chain(a, chain)

    b = await clients.connect(url(server))
    assert b.welcome.header == chain.header and b.welcome.position == end
    await a.subscribe(end)
    await b.subscribe(end)
    assert await a.next(timeout=10) == EndOfHistory(end)
    assert await b.next(timeout=10) == EndOfHistory(end)

    tx = chain.write(b"hello from a")
    confirmed = await a.commit(tx, timeout=10)
    assert (confirmed.position, confirmed.end) == (end, confirmed.end)

    # B sees A's transaction live, byte for byte; A sees its Confirmed in its stream instead
    msg = await b.next(timeout=10)
    assert isinstance(msg, Events)
    assert [(r.meta, r.fmt, r.data) for r in msg.records] == [(r.meta, r.fmt, r.data) for r in tx]
    assert [r.commit for r in msg.records] == [False] * (len(tx) - 1) + [True]
    assert msg.records[0].position == confirmed.position and msg.end == confirmed.end
    assert b.cursor == confirmed.end
    assert await a.next(timeout=10) == confirmed
    assert a.cursor == confirmed.end

    # and the other way round
    back = await b.commit(chain.write(b"hello from b"), timeout=10)
    msg = await a.next(timeout=10)
    assert isinstance(msg, Events) and msg.end == back.end
    assert await b.next(timeout=10) == back


async def test_late_subscriber_gets_history_in_bounded_batches(
    servers: Servers, clients: Clients
) -> None:
    limits = ServerLimits(batch_events=3, batch_bytes=1500)
    server = await servers.start(ServerConfig(limits=limits))
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    for i in range(12):
        await a.commit(chain.write(bytes([i]) * (100 + 200 * i)), timeout=10)

    c = await clients.connect(url(server))
    await c.subscribe(0)
    batches: list[Events] = []
    while True:
        msg = await c.next(timeout=10)
        if isinstance(msg, EndOfHistory):
            break
        assert isinstance(msg, Events)
        batches.append(msg)
    records = [r for b in batches for r in b.records]
    assert as_tuples(records) == server_log(servers.data_dir)
    assert msg.position == batches[-1].end == c.welcome.position
    assert len(batches) > 4
    for batch in batches:
        size = sum(len(r.meta) + len(r.data or b"") for r in batch.records)
        assert len(batch.records) <= 3
        assert size <= 1500 or len(batch.records) == 1
    # each batch ends where the next begins
    for before, after in itertools.pairwise(batches):
        assert before.end == after.records[0].position

    # resuming from a position it holds streams only what follows
    d = await clients.connect(url(server))
    middle = next(b.end for b in batches if b.records[-1].commit and b.end < msg.position)
    await d.subscribe(middle)
    rest, end = await d.history(timeout=10)
    assert end == msg.position
    assert as_tuples(rest) == [r for r in server_log(servers.data_dir) if r[0] >= middle]


async def test_restart_loses_nothing_confirmed(servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    futures = [await a.send_commit(chain.write(b"x%d" % i)) for i in range(20)]
    confirmed = [await asyncio.wait_for(f, 10) for f in futures]
    before = server_log(servers.data_dir)
    await server.close()
    assert a.closed is not None or await a.wait_closed(10)

    again = await servers.start()
    b = await clients.connect(url(again), header=chain.header)
    assert b.welcome.position == confirmed[-1].end
    await b.subscribe(0)
    records, end = await b.history(timeout=10)
    assert end == confirmed[-1].end
    assert as_tuples(records) == before
    # the restarted server remembers what it accepted: a replay is still refused
    with pytest.raises(CommitFailed, match="already in the chain"):
        await b.commit(chain.signed(chain.genesis()[0]), timeout=10)
    await b.commit(chain.write(b"after restart"), timeout=10)


async def test_graceful_shutdown_confirms_in_flight_commits(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.start()
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    futures = [await a.send_commit(chain.write(b"y%d" % i)) for i in range(30)]
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED, timeout=10)
    await server.close()  # mid-way: some confirmed, some appended but not fsynced, some unread
    results = await asyncio.gather(*futures, return_exceptions=True)
    confirmed = [r for r in results if isinstance(r, Confirmed)]
    assert confirmed
    # whatever was confirmed is on disk after the restart
    again = await servers.start()
    b = await clients.connect(url(again))
    ends = {r[0] for r in server_log(servers.data_dir)}
    for c in confirmed:
        assert c.position in ends
        assert b.welcome.position >= c.end


# --- creating chains and refusing connections ----------------------------------------------------
async def test_a_different_chain_under_the_same_name_is_refused(
    server: WsChainServer, clients: Clients
) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    with pytest.raises(ServerFatal, match="another chain under the name"):
        await ChainClient.connect(url(server), header=LocalChain().header)
    with pytest.raises(ServerFatal, match="does not exist"):
        await ChainClient.connect(url(server, "nothing-here"))
    with pytest.raises(ServerFatal, match="no common protocol version"):
        await ChainClient.connect(url(server), versions=[99])
    await still_serves(server, clients, chain)


async def test_the_genesis_must_be_signed_by_the_root_key(
    server: WsChainServer, clients: Clients
) -> None:
    chain = LocalChain()
    other = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    # the other chain's genesis is signed by another key, for another chain id
    with pytest.raises(CommitFailed):
        await a.commit(other.genesis()[0], timeout=10)
    # an empty transaction cannot create a chain either
    with pytest.raises(CommitFailed, match="empty transaction"):
        await a.commit(
            [CommitRecord(make_header([Timestamp(1)], Format.BINCODE, None).meta_bytes, 1)]
        )
    assert not (server.app.logs.exists("fs"))
    await create_chain(a, chain)


async def test_bad_paths_are_refused_at_the_handshake(server: WsChainServer) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    for path in ("/", "/db/", "/db/.hidden", "/other/fs", "/db/a%2Fb", "/db/" + "x" * 300):
        with pytest.raises(InvalidStatus, match="404"):
            await connect(server.url + path, open_timeout=5)


async def test_subscribing_to_a_position_it_never_gave_is_fatal(
    server: WsChainServer, clients: Clients
) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    end = await create_chain(a, chain)
    b = await clients.connect(url(server))
    await b.subscribe(end - 1)
    await expect_closed(b, "not the start of a transaction")
    c = await clients.connect(url(server))
    await c.subscribe(end + 1000)
    await expect_closed(c, "not the start of a transaction")
    await still_serves(server, clients, chain)


# --- validation ---------------------------------------------------------------------------------
async def test_forged_and_wrongly_signed_transactions_are_refused(
    server: WsChainServer, clients: Clients
) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    end = await create_chain(a, chain)
    await a.subscribe(end)

    # a signature by another key, claiming to be the root key's
    mallory_pk, mallory_sk = chain.crypto.sign_keypair()
    tx = chain.write(b"forged")
    forged = reseal(tx, chain.signed_seal(tx[:-1], secret=mallory_sk))
    with pytest.raises(CommitFailed, match="does not verify"):
        await a.commit(forged, timeout=10)

    # signed by a key the chain does not hold
    digest = digest_of(chain.chain_id, tx[:-1], [])
    unknown = reseal(
        tx, [Signature(key_hash(mallory_pk), digest, chain.crypto.sign(mallory_sk, digest))]
    )
    with pytest.raises(CommitFailed, match="public key the chain does not hold"):
        await a.commit(unknown, timeout=10)

    # the event signed with the wrong key: one that introduces its own public key, signed by it
    meta: list[Meta] = [DataKey(77), Type("blob"), PublicKey(mallory_pk)]
    ev = make_header([*meta, Timestamp(chain.clock.now_ms())], Format.BINCODE, None)
    events = [CommitRecord(ev.meta_bytes, 1, None)]
    digest = digest_of(chain.chain_id, events, [])
    self_signed = [
        *events,
        CommitRecord(
            make_header(
                [Signature(key_hash(mallory_pk), digest, chain.crypto.sign(mallory_sk, digest))],
                Format.BINCODE,
                None,
            ).meta_bytes,
            1,
        ),
    ]
    with pytest.raises(CommitFailed, match="not authorised"):
        await a.commit(self_signed, timeout=10)

    # unsigned
    unsigned = reseal(tx, [Timestamp(chain.clock.now_ms())])
    with pytest.raises(CommitFailed, match="not authorised"):
        await a.commit(unsigned, timeout=10)

    # a signature over other events
    other = chain.write(b"other")
    with pytest.raises(CommitFailed, match="covers other events"):
        await a.commit([*tx[:-1], other[-1]], timeout=10)

    # the genuine one still goes through, and only it reached the log
    ok = await a.commit(tx, timeout=10)
    assert ok.position == end
    assert await a.next(timeout=10) == EndOfHistory(end)
    assert await a.next(timeout=10) == ok


async def test_a_local_seal_is_never_proof(server: WsChainServer, clients: Clients) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    tx = chain.write(b"sealed locally", sign=False)
    assert header_of(tx[-1]).find(LocalSeal) is not None
    with pytest.raises(CommitFailed, match="local seal is never accepted"):
        await a.commit(tx, timeout=10)
    # a correct MAC under any key, and a seal with both a signature and a local seal
    signed = chain.signed(tx)
    both = reseal(tx, [*chain.signed_seal(tx[:-1]), LocalSeal(local_mac(b"k" * 32, b"", b""))])
    with pytest.raises(CommitFailed, match="local seal"):
        await a.commit(both, timeout=10)
    await a.commit(signed, timeout=10)


async def test_replayed_transactions_are_refused(server: WsChainServer, clients: Clients) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    genesis = chain.genesis()
    await create_chain(a, chain)
    tx = chain.write(b"once")
    await a.commit(tx, timeout=10)
    for replay in (tx, genesis[0], chain.signed(tx)):
        with pytest.raises(CommitFailed, match="already in the chain"):
            await a.commit(replay, timeout=10)
    # an attestation replayed
    with pytest.raises(CommitFailed, match=r"covers other events|attested already"):
        await a.commit(genesis[1], timeout=10)
    # the same event twice inside one transaction
    fresh = chain.write(b"twice")
    doubled = reseal(fresh, chain.signed_seal([fresh[0], fresh[0]]))
    doubled = [fresh[0], *doubled]
    with pytest.raises(CommitFailed, match="already in the chain"):
        await a.commit(doubled, timeout=10)
    # the server's log holds each event once
    metas = [r[1] for r in server_log(server.app.logs.directory) if not r[4]]  # type: ignore[attr-defined]
    assert len(metas) == len(set(metas))


async def test_events_from_the_future_are_refused(servers: Servers, clients: Clients) -> None:
    server = await servers.start(ServerConfig(limits=ServerLimits(tolerance_ms=2_000)))
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    real = chain.clock.now_ms
    chain.clock.now_ms = lambda: real() + 3_600_000  # type: ignore[method-assign]
    with pytest.raises(CommitFailed, match="too far in the future"):
        await a.commit(chain.write(b"tomorrow"), timeout=10)


async def test_malformed_events_are_refused_not_fatal(
    server: WsChainServer, clients: Clients
) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    tx = chain.write(b"x")
    for bad in (
        [CommitRecord(b"\x00garbage", 1, None), tx[-1]],
        [CommitRecord(tx[0].meta, 9, tx[0].data), tx[-1]],
        [*tx[:-1], CommitRecord(b"not a seal", 1, None)],
    ):
        with pytest.raises(CommitFailed, match="malformed"):
            await a.commit(bad, timeout=10)
    await a.commit(tx, timeout=10)  # the connection is still fine


# --- hostile or broken clients ------------------------------------------------------------------
async def test_malformed_frames_close_that_connection_only(
    server: WsChainServer, clients: Clients
) -> None:
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    frames: list[bytes | str] = [
        b"\xc1\xc1\xc1",
        msgspec.msgpack.encode({"t": "commit", "tx_id": 1, "records": []}),
        "a text frame",
        encode(Hello([1], "fs")),  # a second Hello
    ]
    for frame in frames:
        victim = await clients.connect(url(server))
        await victim.send_raw(frame)
        await expect_closed(victim, "malformed|undecodable|binary|second Hello")
        await victim.wait_closed(10)
        assert victim.ws.close_code in (1002, 1008)
    await still_serves(server, clients, chain)


async def test_a_frame_before_hello_that_is_not_hello_is_fatal(server: WsChainServer) -> None:
    from websockets.asyncio.client import connect

    async with connect(url(server), compression=None) as ws:
        await ws.send(encode(Subscribe(0)))
        frame = await ws.recv()
        assert isinstance(frame, bytes) and b"first frame must be a Hello" in frame
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


async def test_oversized_frames_close_that_connection(servers: Servers, clients: Clients) -> None:
    server = await servers.start(ServerConfig(limits=ServerLimits(max_frame=256 * 1024)))
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    big = await clients.connect(url(server))
    with pytest.raises(ChainClientError):
        await big.commit(chain.write(b"z" * (300 * 1024)), timeout=10)
    await big.wait_closed(10)
    assert big.ws.close_code == 1009
    await still_serves(server, clients, chain)


async def test_a_client_that_stops_reading_is_dropped_as_too_slow(
    servers: Servers, clients: Clients
) -> None:
    config = ServerConfig(max_lag_bytes=256 * 1024, send_timeout=2.0)
    server = await servers.start(config, close_timeout=30)
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    # a reader that never reads: its client-side queue holds 1 message, its socket buffers fill
    slow = await clients.connect(url(server), queue_size=1)
    await slow.subscribe(0)
    await asyncio.sleep(0.1)
    payload = b"\x5a" * (256 * 1024)
    for _ in range(200):
        await a.commit(chain.write(payload), timeout=10)
        if any(c.peer.too_slow or c.failure for c in server._conns):
            break
    # drain what it had; the stream ends with Fatal("too slow")
    await expect_closed(slow, "too slow")
    # it can come back from its cursor, and gets the rest
    back = await clients.connect(url(server))
    await back.subscribe(slow.cursor)
    records, end = await back.history(timeout=30)
    assert end > slow.cursor
    assert records and records[0].position == slow.cursor
    await still_serves(server, clients, chain)
