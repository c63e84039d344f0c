"""The server-order head a replica keeps (docs/adr/0016): the hash chain over every event of the
server's chain in the server's order, persisted on its bookkeeping seals, and the check of every
streamed attestation against it - a history with a transaction dropped or two swapped (each
transaction genuine on its own) is refused there, and the refusal never reaches the log."""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import sha256

import pytest

from application.replica_log import ForgedHistory, ReplicaLog
from application.wire_tx import header_of, split_transactions
from domain.events import Origin, Uploaded
from domain.hashing import EMPTY_HASH, chain_head, event_hash
from domain.wire import CommitRecord
from tests.hostile import record

from .conftest import LocalChain
from .test_replica_rules import Replica


@pytest.fixture
def chains() -> Iterator[tuple[LocalChain, Replica]]:
    writer = LocalChain()
    replica = Replica(writer)
    for tx in split_transactions(writer.session.log):
        replica.stream(tx)
    yield writer, replica
    replica.session.close()


def attestation(writer: LocalChain, head: bytes | None = None) -> list[CommitRecord]:
    s = writer.session
    return [record(s.signed_seal([], s.index.head if head is None else head))]


def digest(data: bytes) -> bytes:
    return sha256(data).digest()


def check(replica: Replica, tx: list[CommitRecord]) -> bool:
    return replica.log.check_attestation(header_of(tx[-1]))


def test_the_remote_head_follows_the_servers_order_and_survives_a_restart(
    chains: tuple[LocalChain, Replica],
) -> None:
    writer, replica = chains
    for n in range(3):
        replica.stream(writer.write(b"v%d" % n))
    assert replica.log.remote_head == writer.session.index.head
    assert check(replica, attestation(writer))
    # a restart reads it back from the Origin of the last streamed transaction
    again = ReplicaLog(replica.session)
    assert again.remote_head == writer.session.index.head
    assert again.remote_cursor == replica.log.remote_cursor


def test_a_dropped_or_swapped_transaction_is_refused_at_the_attestation(
    chains: tuple[LocalChain, Replica],
) -> None:
    writer, replica = chains
    one, two = writer.write(b"one"), writer.write(b"two")
    replica.stream(two)  # each is genuine on its own: accepted
    replica.stream(one)
    end = replica.session.log.committed_end
    with pytest.raises(ForgedHistory, match=r"served a history that differs .* forked"):
        check(replica, attestation(writer))
    assert replica.session.log.committed_end == end


def test_an_attestation_of_another_head_or_by_another_key_is_refused(
    chains: tuple[LocalChain, Replica],
) -> None:
    writer, replica = chains
    replica.stream(writer.write(b"one"))
    with pytest.raises(ForgedHistory, match="attestation"):
        check(replica, attestation(writer, head=digest(b"another history")))
    other = LocalChain()  # a key this chain does not hold
    with pytest.raises(ForgedHistory, match="does not hold"):
        check(replica, [record(other.session.signed_seal([], writer.session.index.head))])


def test_an_upload_confirmed_moves_the_head_and_its_marker_keeps_it(
    chains: tuple[LocalChain, Replica],
) -> None:
    _, replica = chains
    before = replica.log.remote_head
    hashes = [event_hash(digest(b"m%d" % i), EMPTY_HASH) for i in range(2)]
    replica.log.mark_uploaded(0, replica.position + 10, hashes)
    want = chain_head(chain_head(before, hashes[0]), hashes[1])
    assert replica.log.remote_head == want
    assert ReplicaLog(replica.session).remote_head == want
    # an upload the server refused (-1) changes nothing
    replica.log.mark_uploaded(0, -1, hashes)
    assert replica.log.remote_head == want
    seals = [t.seal.find(Uploaded) for t in replica.session.transactions()]
    assert [u.head for u in seals if u is not None] == [want, b""]


def test_a_log_from_before_the_head_was_kept_checks_nothing_until_it_is_known(
    chains: tuple[LocalChain, Replica],
) -> None:
    writer, replica = chains
    replica.stream(writer.write(b"one"))
    origins = [t.seal.find(Origin) for t in replica.session.transactions()]
    assert all(o.head for o in origins if o is not None)
    replica.log.remote_head = b""  # as an old log loads
    assert not check(replica, attestation(writer, head=digest(b"anything")))
