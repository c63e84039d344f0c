"""The chain-store contract (application/ports/chain_store.py), run against the local store
(redo logs in a directory), the JetStream store (on a real 3-node nats-server cluster, one per
module: tests/nats_cluster.py) and the in-memory twin. "Two servers" are two factories over one
backend (two JetStream connections; for the twin, two stores of one factory)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.chain_store_local import LocalChainStoreFactory
from adapters.chain_store_nats import NatsChainStoreFactory, NatsRefused
from adapters.memory.chain_store import MemoryChainStoreFactory
from adapters.redolog import FileRedoLogFactory
from application.ports.chain_store import (
    ChainStore,
    ChainStoreFactory,
    StoreConflict,
    StoredRecord,
    StoredTransaction,
    StoreExists,
    StoreNotFound,
)
from tests.nats_cluster import NatsCluster, nats_cluster

HEADER = b"chain-header\x00\x01"
_names = itertools.count()


def fresh() -> str:
    return f"chain-{next(_names)}"


def tx(tag: bytes, n: int = 2) -> list[StoredRecord]:
    """A transaction of ``n`` records: events with data and without, then the seal."""
    events = [
        StoredRecord(
            tag + b"-meta-%d" % i, 1 + i % 3, (tag * (i + 1)) if i % 2 == 0 else None, False
        )
        for i in range(n - 1)
    ]
    return [*events, StoredRecord(tag + b"-seal", 7, None, True)]


def history(store: ChainStore) -> list[StoredTransaction]:
    return [*store.read(store.start), *store.catch_up()]


# --- the three backends ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


class Backend:
    """Makes factories over one shared backend (``second`` is another server's)."""

    def __init__(self, make: Callable[[], ChainStoreFactory], shared: bool) -> None:
        self._make = make
        self.made: list[ChainStoreFactory] = []
        #: whether two factories share chains (False: the local store, one writer per chain)
        self.shared = shared

    def factory(self) -> ChainStoreFactory:
        f = self._make()
        self.made.append(f)
        return f

    def close(self) -> None:
        for f in self.made:
            f.close()


@pytest.fixture(params=["local", "nats", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        made = Backend(lambda: LocalChainStoreFactory(FileRedoLogFactory(tmp_path)), False)
    elif request.param == "nats":
        cluster: NatsCluster = request.getfixturevalue("cluster")
        made = Backend(lambda: NatsChainStoreFactory(cluster.servers, replicas=3), True)
    else:
        memory = MemoryChainStoreFactory()
        made = Backend(lambda: memory, True)
    try:
        yield made
    finally:
        made.close()


# --- the contract ---------------------------------------------------------------------------------
def test_create_open_header_and_missing(backend: Backend) -> None:
    f = backend.factory()
    name = fresh()
    assert not f.exists(name)
    with pytest.raises(StoreNotFound):
        f.open(name)
    store = f.create(name, HEADER)
    assert store.header == HEADER and store.end == store.start and f.exists(name)
    with pytest.raises(StoreExists):
        f.create(name, b"other")
    store.close()
    again = f.open(name)
    assert again.header == HEADER and history(again) == []
    again.close()


def test_appended_transactions_read_back_whole_and_in_order(backend: Backend) -> None:
    f = backend.factory()
    store = f.create(fresh(), HEADER)
    written = [store.append(tx(b"t%d" % i, 1 + i % 4), store.end) for i in range(6)]
    assert written[0].position == store.start
    for a, b in itertools.pairwise(written):
        assert a.end == b.position and a.position < a.end
    for t in written:
        assert len(t.positions) == len(t.records) and t.positions[0] == t.position
        assert list(t.positions) == sorted(set(t.positions))
    assert store.end == written[-1].end
    assert list(store.read(store.start)) == written
    assert list(store.read(written[2].position)) == written[2:]
    assert list(store.read(written[1].position, written[4].position)) == written[1:4]
    store.sync()
    assert store.durable_end == store.end
    name = store.name
    store.close()
    reopened = f.open(name)
    assert history(reopened) == written and reopened.end == written[-1].end
    reopened.close()


def test_a_stale_expected_end_is_a_conflict_and_stores_nothing(backend: Backend) -> None:
    f = backend.factory()
    store = f.create(fresh(), HEADER)
    first = store.append(tx(b"a"), store.end)
    with pytest.raises(StoreConflict):
        store.append(tx(b"b"), first.position)
    with pytest.raises(StoreConflict):
        store.append(tx(b"c"), first.end + 1)
    assert history(store) == [first] or list(store.read(store.start)) == [first]
    store.close()


def test_records_that_are_no_transaction_are_refused(backend: Backend) -> None:
    f = backend.factory()
    store = f.create(fresh(), HEADER)
    with pytest.raises(ValueError):
        store.append([], store.end)
    with pytest.raises(ValueError):
        store.append([StoredRecord(b"m", 1, None, False)], store.end)
    with pytest.raises(ValueError):
        store.append(
            [StoredRecord(b"m", 1, None, True), StoredRecord(b"s", 1, None, True)], store.end
        )
    assert list(store.read(store.start)) == []
    store.close()


def test_a_second_server_sees_the_same_chain_and_positions(backend: Backend) -> None:
    if not backend.shared:
        pytest.skip("the local store has one writer per chain")
    one, two = backend.factory(), backend.factory()
    name = fresh()
    a = one.create(name, HEADER)
    first = a.append(tx(b"1"), a.end)
    b = two.open(name)
    assert history(b) == [first] and b.end == a.end
    woken = threading.Event()
    a.watch(woken.set)
    second = b.append(tx(b"2"), b.end)
    assert woken.wait(10), "the first server was not told of the second's append"
    with pytest.raises(StoreConflict):
        a.append(tx(b"stale"), a.end)  # a does not know of `second` yet
    assert a.catch_up() == [second] and a.end == b.end
    third = a.append(tx(b"3"), a.end)
    assert b.catch_up() == [third]
    assert list(a.read(a.start)) == list(b.read(b.start)) == [first, second, third]
    a.close()
    b.close()


def test_two_servers_creating_one_chain_one_wins(backend: Backend) -> None:
    if not backend.shared:
        pytest.skip("the local store has one writer per chain")
    one, two = backend.factory(), backend.factory()
    name = fresh()
    won = one.create(name, b"first")
    with pytest.raises(StoreExists):
        two.create(name, b"second")
    assert two.open(name).header == b"first"
    won.close()


def _race(backend: Backend, writers: int, per_writer: int, sizes: list[int]) -> None:
    """``writers`` threads, each its own server (factory) and store, append ``per_writer``
    transactions to one chain as fast as they can: on a conflict they catch up and retry (as a
    server does). The chain must hold every transaction exactly once, in one order that every
    store reads alike: no fork, nothing lost, nothing twice."""
    factories = [backend.factory() for _ in range(writers)]
    name = fresh()
    factories[0].create(name, HEADER).close()
    stores = [f.open(name) for f in factories]
    for s in stores:
        s.read(s.start)
        s.catch_up()
    conflicts = [0] * writers
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(w: int) -> None:
        try:
            store = stores[w]
            start.wait(10)
            for i in range(per_writer):
                records = tx(b"w%d-%d" % (w, i), sizes[(w + i) % len(sizes)])
                while True:
                    try:
                        store.append(records, store.end)
                        break
                    except StoreConflict:
                        conflicts[w] += 1
                        store.catch_up()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for s in stores:
        s.catch_up()
    seen = [list(s.read(s.start)) for s in stores]
    assert all(h == seen[0] for h in seen), "two servers read different histories: a fork"
    seals = [t.records[-1].meta for t in seen[0]]
    expected = {b"w%d-%d-seal" % (w, i) for w in range(writers) for i in range(per_writer)}
    assert len(seals) == len(expected) and set(seals) == expected
    for w in range(writers):  # each writer's own transactions stay in its order
        mine = [s for s in seals if s.startswith(b"w%d-" % w)]
        assert mine == [b"w%d-%d-seal" % (w, i) for i in range(per_writer)]
    for a, b in itertools.pairwise(seen[0]):
        assert a.end == b.position
    fresh_reader = backend.factory().open(name)
    assert history(fresh_reader) == seen[0]
    for s in [*stores, fresh_reader]:
        s.close()


def test_two_servers_racing_never_fork_a_chain(backend: Backend) -> None:
    if not backend.shared:
        pytest.skip("the local store has one writer per chain")
    _race(backend, writers=2, per_writer=40, sizes=[1, 3, 2])


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    writers=st.integers(2, 4),
    per_writer=st.integers(1, 12),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
)
def test_racing_writers_property(
    backend: Backend, writers: int, per_writer: int, sizes: list[int]
) -> None:
    if not backend.shared:
        pytest.skip("the local store has one writer per chain")
    _race(backend, writers, per_writer, sizes)


# --- refusals of the JetStream store --------------------------------------------------------------
def test_a_server_without_jetstream_is_refused(tmp_path: Path) -> None:
    with (
        nats_cluster(tmp_path, nodes=1, jetstream=False) as plain,
        pytest.raises(NatsRefused, match="no JetStream"),
    ):
        NatsChainStoreFactory(plain.servers, replicas=1, timeout=3)


def test_a_stream_with_fewer_replicas_than_asked_is_refused(tmp_path: Path) -> None:
    with nats_cluster(tmp_path, nodes=1) as single:
        NatsChainStoreFactory(single.servers, replicas=1, timeout=5).close()  # stream R1
        with pytest.raises(NatsRefused, match="has 1 replica"):
            NatsChainStoreFactory(single.servers, replicas=3, timeout=5)


def test_an_unreachable_cluster_is_refused(tmp_path: Path) -> None:
    from tests.net import free_port

    with pytest.raises(NatsRefused, match="cannot connect"):
        NatsChainStoreFactory([f"nats://127.0.0.1:{free_port()}"], replicas=1, timeout=2)
