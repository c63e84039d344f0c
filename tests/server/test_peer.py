"""The server's protocol logic without sockets (application/server_peer.py over the chain host
and server): what a connection is sent and when, over an in-memory log."""

from __future__ import annotations

import pytest

from adapters.clock import SystemClock
from adapters.memory.log import MemoryRedoLogFactory
from application.chain_admission import Refused
from application.chain_host import ChainHost, HostBroken
from application.chain_server import ChainServer, ServerConfig
from application.ports import LogRecord
from application.server_peer import Peer
from domain.wire import (
    Commit,
    CommitError,
    Confirmed,
    EndOfHistory,
    Events,
    Hello,
    ReadOnly,
    ServerLimits,
    ServerMessage,
    Subscribe,
)
from tests.fakes import FastCrypto

from .conftest import LocalChain


def make_server(config: ServerConfig | None = None) -> ChainServer:
    return ChainServer(
        MemoryRedoLogFactory(), FastCrypto(), SystemClock(), config or ServerConfig()
    )


def drain(peer: Peer) -> list[ServerMessage]:
    out: list[ServerMessage] = []
    for _ in range(10_000):
        msg = peer.next_output()
        if msg is None:
            return out
        out.append(msg)
    raise AssertionError("the stream never ends")


def connect(server: ChainServer, header: bytes | None = None) -> tuple[Peer, list[int]]:
    wakes: list[int] = []
    peer = Peer(server, "fs", lambda: wakes.append(1))
    peer.hello(Hello([1], "fs", header), server.loaded("fs") or server.load("fs"))
    return peer, wakes


def durable(server: ChainServer) -> None:
    host = server.loaded("fs")
    assert host is not None
    end = host.committed_end
    host.sync()
    host.made_durable(end)


def created(server: ChainServer) -> tuple[LocalChain, Peer]:
    chain = LocalChain()
    creator, _ = connect(server, chain.header)
    for i, tx in enumerate(chain.genesis()):
        creator.handle(Commit(i, tx))
    durable(server)
    assert [type(m) for m in drain(creator)] == [Confirmed, Confirmed]
    return chain, creator


def test_nothing_is_streamed_or_confirmed_before_it_is_durable() -> None:
    server = make_server()
    chain, a = created(server)
    b, wakes = connect(server)
    b.handle(Subscribe(0))
    history = drain(b)
    assert isinstance(history[-1], EndOfHistory)
    a.handle(Commit(10, chain.write(b"one")))
    assert drain(a) == [] and drain(b) == []  # appended, not fsynced
    wakes.clear()
    durable(server)
    assert wakes, "the subscriber was not woken"
    (events,) = drain(b)
    (confirmed,) = drain(a)
    assert isinstance(events, Events) and isinstance(confirmed, Confirmed)
    assert events.end == confirmed.end and events.records[0].position == confirmed.position


def test_own_transactions_are_confirmed_in_their_place_in_the_stream() -> None:
    server = make_server()
    chain, a = created(server)
    other, _ = connect(server)
    a.handle(Subscribe(server.loaded("fs").durable_end))  # type: ignore[union-attr]
    assert [type(m) for m in drain(a)] == [EndOfHistory]
    other.handle(Commit(1, chain.write(b"theirs 1")))
    a.handle(Commit(7, chain.write(b"mine")))
    other.handle(Commit(2, chain.write(b"theirs 2")))
    durable(server)
    stream = drain(a)
    assert [type(m) for m in stream] == [Events, Confirmed, Events]
    assert isinstance(stream[1], Confirmed) and stream[1].tx_id == 7
    assert stream[0].end == stream[1].position  # type: ignore[union-attr]
    assert stream[1].end == stream[2].records[0].position  # type: ignore[union-attr]
    assert a.cursor == server.loaded("fs").durable_end  # type: ignore[union-attr]


def test_refusals_are_commit_errors_and_the_connection_goes_on() -> None:
    server = make_server()
    chain, a = created(server)
    tx = chain.write(b"x", sign=False)
    a.handle(Commit(3, tx))
    (err,) = drain(a)
    assert isinstance(err, CommitError) and err.tx_id == 3 and "local seal" in err.reason
    a.handle(Commit(4, chain.signed(tx)))
    durable(server)
    assert [type(m) for m in drain(a)] == [Confirmed]


def test_read_only_server_says_so_and_refuses_commits() -> None:
    server = make_server()
    chain, creator = created(server)
    creator.close()
    server.close()
    ro = ChainServer(server.logs, server.crypto, server.clock, ServerConfig(read_only=True))
    peer, _ = connect(ro)
    peer.handle(Commit(1, chain.write(b"x")))
    msgs = drain(peer)
    assert isinstance(msgs[0], ReadOnly)
    assert isinstance(msgs[1], CommitError) and "read-only" in msgs[1].reason


@pytest.mark.parametrize(
    ("config", "header", "match"),
    [
        (ServerConfig(create_chains=False), True, "creates none"),
        (ServerConfig(), False, "does not exist"),
        (ServerConfig(versions=(2,)), True, "no common protocol version"),
    ],
)
def test_hello_refusals(config: ServerConfig, header: bool, match: str) -> None:
    server = make_server(config)
    with pytest.raises(Refused, match=match):
        connect(server, LocalChain().header if header else None)


def test_subscribing_before_the_chain_exists_is_refused_until_it_does() -> None:
    server = make_server()
    chain = LocalChain()
    early, _ = connect(server, chain.header)
    with pytest.raises(Refused, match="does not exist yet"):
        early.handle(Subscribe(0))
    creator, _ = connect(server, chain.header)
    creator.handle(Commit(1, chain.genesis()[0]))
    durable(server)
    late, _ = connect(server, chain.header)
    late.handle(Subscribe(0))
    stream = drain(late)
    assert isinstance(stream[0], Events) and isinstance(stream[-1], EndOfHistory)


def test_a_reopened_chain_resumes_and_remembers(tmp_path: object) -> None:
    server = make_server()
    chain, a = created(server)
    for i in range(3):
        a.handle(Commit(20 + i, chain.write(b"%d" % i)))
    durable(server)
    drain(a)
    host = server.loaded("fs")
    assert host is not None
    ends = (host.start, host.durable_end, host.transactions)
    a.close()
    server.close_host(host)
    reopened = ChainHost.open(server.logs, "fs", server.crypto, server.clock, server.config)
    assert reopened is not None
    assert (reopened.start, reopened.durable_end, reopened.transactions) == ends
    with pytest.raises(Refused, match="not the start of a transaction"):
        reopened.resolve(ends[1] - 1)
    assert reopened.resolve(0) == ends[0]


def test_a_log_altered_on_disk_is_not_served() -> None:
    server = make_server()
    chain, a = created(server)
    a.close()
    host = server.loaded("fs")
    assert host is not None
    # someone appends a locally sealed transaction to the server's log behind its back
    tx = chain.write(b"smuggled", sign=False)
    for i, rec in enumerate(tx):
        host.log.append(LogRecord(rec.meta, rec.fmt, rec.data, i == len(tx) - 1))
    host.log.sync()
    server.close_host(host)
    with pytest.raises(Refused, match="fails validation"):
        server.load("fs")


def test_a_failing_log_breaks_its_chain_for_every_connection() -> None:
    server = make_server()
    chain, a = created(server)
    b, wakes = connect(server)
    b.handle(Subscribe(0))
    drain(b)
    host = server.loaded("fs")
    assert host is not None

    # (a full disk is a refusal for now, not a broken chain: tests/server/test_full_disk.py)
    def failing(record: LogRecord) -> tuple[int, None]:
        raise OSError(5, "Input/output error")

    host.log.append = failing  # type: ignore[method-assign]
    with pytest.raises(HostBroken, match="Input/output error"):
        a.handle(Commit(1, chain.write(b"x")))
    assert wakes
    with pytest.raises(HostBroken):
        b.next_output()
    assert server.loaded("fs") is None  # dropped: the next connection reopens the log


def test_a_live_subscriber_that_lags_too_far_is_too_slow() -> None:
    config = ServerConfig(max_lag_bytes=10_000, limits=ServerLimits(batch_events=1))
    server = make_server(config)
    chain, a = created(server)
    slow, _ = connect(server)
    slow.handle(Subscribe(server.loaded("fs").durable_end))  # type: ignore[union-attr]
    drain(slow)
    for i in range(3):
        a.handle(Commit(i, chain.write(bytes(8000))))
        durable(server)
    assert slow.too_slow
    with pytest.raises(Refused, match="too slow"):
        slow.next_output()
