"""A replica runs the server's rules on what the server streams (docs/adr/0015), also for the
objects it does not apply a streamed transaction to: those it changed itself and the server has
not confirmed yet (issue 12, finding 2: their authorisation was not checked at all)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.clock import SystemClock
from adapters.memory.log import MemoryRedoLogFactory
from application.replica_log import ReplicaLog
from application.session import ChainIntegrityError, ChainSession, Formats
from application.wire_tx import split_transactions
from domain.events import DataKey, Nonce, Timestamp, Tombstone, Type
from domain.wire import CommitRecord, WireRecord
from tests.fakes import FastCrypto
from tests.hostile import Signer, record

from .conftest import LocalChain

KEY = 5000


class Replica:
    def __init__(self, writer: LocalChain) -> None:
        self.session = ChainSession.create_replica(
            MemoryRedoLogFactory(), "local", writer.header, b"pw", FastCrypto(), SystemClock(),
            Formats(),
        )  # fmt: skip
        self.log = ReplicaLog(self.session)
        self.position = 0

    def stream(self, records: list[CommitRecord]) -> None:
        n = len(records)
        wire = [
            WireRecord(self.position + i, r.meta, r.fmt, r.data, i == n - 1)
            for i, r in enumerate(records)
        ]
        headers = self.log.validate_remote(wire)
        self.log.append_remote(wire, headers, self.position + n)
        self.position += n


@pytest.fixture
def pair() -> Iterator[tuple[LocalChain, Replica]]:
    writer = LocalChain()
    replica = Replica(writer)
    for tx in split_transactions(writer.session.log):
        replica.stream(tx)
    replica.session.load_signing_key()
    yield writer, replica
    replica.session.close()


def busy(replica: Replica, key: int) -> None:
    """A local change to ``key`` the server has not confirmed."""
    s = replica.session
    s.write(key, type_name="blob", payload=b"mine", okey=s.new_object_key())
    s.commit()
    assert replica.log.busy(key)


def test_an_unsigned_write_to_an_object_with_local_changes_is_refused(
    pair: tuple[LocalChain, Replica],
) -> None:
    writer, replica = pair
    busy(replica, KEY)
    forged = [record([DataKey(KEY), Type("blob"), Timestamp(1), Nonce(b"f" * 8)], b"forged")]
    end = replica.session.log.committed_end
    with pytest.raises(ChainIntegrityError, match="not authorised"):
        replica.stream([*forged, record([Timestamp(2)])])
    tomb = [record([Tombstone(KEY), Type("blob"), Timestamp(1), Nonce(b"t" * 8)])]
    with pytest.raises(ChainIntegrityError, match="not authorised"):
        replica.stream([*tomb, record([Timestamp(2)])])
    # a key the attacker made up does not help either
    crypto = FastCrypto()
    mallory = Signer(crypto, writer.chain_id, *crypto.sign_keypair())
    with pytest.raises(ChainIntegrityError, match="not hold"):
        replica.stream(mallory.tx(forged))
    assert replica.session.log.committed_end == end, "a refused transaction reached the log"


def test_a_signed_write_to_an_object_with_local_changes_is_skipped_not_refused(
    pair: tuple[LocalChain, Replica],
) -> None:
    writer, replica = pair
    busy(replica, KEY)
    replica.stream(writer.write(b"theirs", key=KEY))  # the server orders ours after it
    info = replica.session.index.objects[KEY]
    rec = replica.session.log.read_record(info.position)
    hdr = replica.session.parse(rec)
    assert rec.data is not None
    assert replica.session.read_payload(hdr, rec.data) == b"mine"
