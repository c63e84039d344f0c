"""Mutated transactions (docs/adr/0015): a valid signed transaction is mutated at random - a bit
flipped in its metadata or data, a record dropped, duplicated or moved, a format byte changed, a
metadata item of any kind inserted or removed, the seal swapped for another's - and offered both
to the chain server's rules (``ChainState``) and to a replica's (``ReplicaLog``). The server may
accept a mutation only when the replica accepts it too; what the server accepts is applied on
both, and the two must then hold the same chain (objects and head).

``WASMER_DFS_MUTATIONS`` sets the number of examples (default 500).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.clock import SystemClock
from adapters.memory.log import MemoryRedoLogFactory
from application.chain_admission import ChainState, TransactionRefused
from application.chain_server import ServerConfig
from application.replica_log import ReplicaLog
from application.session import ChainIntegrityError, ChainSession, Formats
from application.wire_tx import split_transactions
from domain.events import decode_meta, encode_meta
from domain.formats import Format
from domain.wire import CommitRecord, WireRecord
from tests.fakes import FastCrypto
from tests.hostile import every_kind
from tests.server.conftest import LocalChain

EXAMPLES = int(os.environ.get("WASMER_DFS_MUTATIONS", "500"))
STATS: Counter[str] = Counter()


@dataclass
class World:
    writer: LocalChain
    server: ChainState
    replica: ReplicaLog
    position: int = 0

    def offer(self, records: list[CommitRecord]) -> tuple[bool, bool]:
        """Whether the server's rules and the replica's accept ``records`` (nothing applied)."""
        try:
            tx = self.server.transaction(records)
            self.server.check_new(tx)
            server_ok = True
        except TransactionRefused:
            server_ok = False
        wire = self.wire(records)
        try:
            headers = self.replica.validate_remote(wire)
            if len(headers) > 1:
                self.replica.check_remote(headers, self.position + len(wire))
            replica_ok = True
        except ChainIntegrityError:
            replica_ok = False
        return server_ok, replica_ok

    def wire(self, records: list[CommitRecord]) -> list[WireRecord]:
        n = len(records)
        return [
            WireRecord(self.position + i, r.meta, r.fmt, r.data, i == n - 1)
            for i, r in enumerate(records)
        ]

    def apply(self, records: list[CommitRecord]) -> None:
        tx = self.server.transaction(records)
        self.server.check_new(tx)
        self.server.apply(tx)
        wire = self.wire(records)
        headers = self.replica.validate_remote(wire)
        self.position += len(wire)
        if len(headers) > 1:
            self.replica.append_remote(wire, headers, self.position)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    writer = LocalChain()
    crypto = FastCrypto()
    server = ChainState(writer.session.header, crypto, SystemClock(), ServerConfig())
    session = ChainSession.create_replica(
        MemoryRedoLogFactory(), "local", writer.header, b"pw", crypto, SystemClock(), Formats()
    )
    replica = ReplicaLog(session)
    w = World(writer, server, replica)
    for tx in split_transactions(writer.session.log):
        w.apply(tx)
    yield w
    session.close()
    print(f"\nmutations: {dict(STATS)}")


def _flip(b: bytes, at: int) -> bytes:
    if not b:
        return b"\x00"
    i = at % len(b)
    return b[:i] + bytes([b[i] ^ (1 << (at % 8))]) + b[i + 1 :]


def _reencode(rec: CommitRecord, change: object) -> CommitRecord:
    fmt = Format(rec.fmt)
    meta = decode_meta(rec.meta, fmt)
    assert callable(change)
    return CommitRecord(encode_meta(change(meta), fmt), rec.fmt, rec.data)


KINDS = sorted(every_kind(b"k" * 32, 1000))


def mutate(
    records: list[CommitRecord], other_seal: CommitRecord, op: str, a: int, b: int
) -> list[CommitRecord]:
    recs = list(records)
    i, j = a % len(recs), b % len(recs)
    r = recs[i]
    if op == "flip-meta":
        recs[i] = CommitRecord(_flip(r.meta, b), r.fmt, r.data)
    elif op == "flip-data":
        recs[i] = CommitRecord(r.meta, r.fmt, _flip(r.data or b"", b))
    elif op == "drop":
        del recs[i]
    elif op == "duplicate":
        recs.insert(j, r)
    elif op == "swap":
        recs[i], recs[j] = recs[j], recs[i]
    elif op == "format":
        recs[i] = CommitRecord(r.meta, b % 256, r.data)
    elif op == "insert-kind":
        kind = every_kind(b"k" * 32, 1000)[KINDS[b % len(KINDS)]]
        recs[i] = _reencode(r, lambda m: [*m[: j % (len(m) + 1)], kind, *m[j % (len(m) + 1) :]])
    elif op == "remove-item":
        recs[i] = _reencode(r, lambda m: [x for k, x in enumerate(m) if k != j % max(1, len(m))])
    elif op == "truncate-meta":
        recs[i] = CommitRecord(r.meta[: b % max(1, len(r.meta))], r.fmt, r.data)
    elif op == "other-seal":
        recs[-1] = other_seal
    elif op == "data-on-seal":
        recs[-1] = CommitRecord(recs[-1].meta, recs[-1].fmt, b"x" * (1 + b % 64))
    return recs


OPS = [
    "none",
    "flip-meta",
    "flip-data",
    "drop",
    "duplicate",
    "swap",
    "format",
    "insert-kind",
    "remove-item",
    "truncate-meta",
    "other-seal",
    "data-on-seal",
]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    op=st.sampled_from(OPS),
    a=st.integers(0, 2**16),
    b=st.integers(0, 2**16),
    payload=st.binary(min_size=0, max_size=64),
)
def test_the_server_accepts_only_what_a_replica_accepts(
    world: World, op: str, a: int, b: int, payload: bytes
) -> None:
    tx = world.writer.write(payload)
    other = world.writer.write(b"other")
    try:
        mutated = mutate(tx, other[-1], op, a, b)
    except (msgspec.DecodeError, ValueError):
        return  # a record this mutation cannot re-encode
    server_ok, replica_ok = world.offer(mutated)
    STATS["tried"] += 1
    STATS["server accepted" if server_ok else "server refused"] += 1
    assert replica_ok or not server_ok, f"the server accepted a mutation ({op}) a replica refuses"
    if server_ok:
        world.apply(mutated)
        assert world.server.index.head == world.replica.session.index.head
        assert set(world.server.index.objects) == set(world.replica.session.index.objects)
    if op != "none" and mutated != tx:
        STATS[f"{op}: {'accepted' if server_ok else 'refused'}"] += 1
