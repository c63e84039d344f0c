"""The chain session on an in-memory log: create and open, passcodes, torn tails, attestation,
and tampering with the signatures and seals of the log."""

from __future__ import annotations

import pytest

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application.ports import LogCorrupt, LogExists
from application.session import (
    CHAIN_KEY_OBJECT,
    ChainIntegrityError,
    ChainMismatch,
    ChainSession,
    Formats,
    SessionError,
    WrongPasscode,
)
from domain.chain import Located
from domain.events import LocalSeal, Meta, Signature, decode_meta, encode_meta
from domain.formats import Format
from domain.trust import signed_digest
from tests.fakes import FAST_KDF, FastCrypto, LatestEvents, frames, rewrite_meta

CHAIN = "unit"
PW = b"correct horse"
BLOB = "blob"


def create(
    logs: MemoryRedoLogFactory,
    crypto: FastCrypto,
    clock: FakeClock,
    passcode: bytes | None = PW,
    chain: str = CHAIN,
) -> ChainSession:
    return ChainSession.create(
        logs, chain, passcode, crypto, clock, Formats(), page_size=4096, kdf=FAST_KDF
    )


def reopen(
    logs: MemoryRedoLogFactory,
    crypto: FastCrypto,
    clock: FakeClock,
    passcode: bytes | None = PW,
    chain: str = CHAIN,
    latest: LatestEvents | None = None,
) -> ChainSession:
    session = ChainSession.open(
        logs, chain, passcode, crypto, clock, Formats(), indexers=[latest] if latest else ()
    )
    session.start()
    return session


def put(session: ChainSession, key: int, payload: bytes) -> Located:
    okey = session.new_object_key() if session.encrypted else None
    return session.write(key, type_name=BLOB, payload=payload, okey=okey)


def payloads(session: ChainSession, latest: LatestEvents) -> dict[int, bytes]:
    out = {}
    for key, ev in latest.events.items():
        if key != CHAIN_KEY_OBJECT and ev.header.has_data:
            out[key] = session.read_payload(ev.header, ev.locator)
    return out


# --- create and open ---------------------------------------------------------------------------
def test_create_then_open_replays_every_committed_object(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    assert s.encrypted
    assert s.header.name == CHAIN
    assert CHAIN_KEY_OBJECT in s.index.objects
    put(s, 10, b"ten")
    put(s, 11, b"eleven")
    s.commit()
    put(s, 10, b"ten, again")
    s.sync()
    head = s.index.head
    s.close()

    latest = LatestEvents()
    s2 = reopen(logs, crypto, clock, latest=latest)
    assert set(s2.index.objects) == {CHAIN_KEY_OBJECT, 10, 11}
    assert s2.index.head == head
    assert payloads(s2, latest) == {10: b"ten, again", 11: b"eleven"}
    # the signing key was found and unsealed: a signed commit works after reopening
    put(s2, 12, b"twelve")
    assert s2.commit(sign=True)
    s2.close()
    s3 = reopen(logs, crypto, clock)
    assert 12 in s3.index.objects
    s3.close()


def test_start_counts_the_replayed_transactions(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)  # the signed chain-key transaction, then its attestation
    put(s, 10, b"x")
    s.sync()
    s.close()
    s2 = ChainSession.open(logs, CHAIN, PW, crypto, clock, Formats())
    assert s2.start() == 3
    s2.close()


def test_a_chain_name_is_created_only_once(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    create(logs, crypto, clock).close()
    with pytest.raises(LogExists, match="already exists"):
        create(logs, crypto, clock)


def test_nothing_pending_commits_nothing(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    size = s.log.size()
    assert not s.has_pending
    assert s.commit() is False
    assert s.log.size() == size
    s.close()


def test_the_data_of_an_encrypted_chain_is_not_in_the_log_in_clear(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    secret = b"a rather recognisable secret payload"
    put(s, 10, secret)
    s.sync()
    s.close()
    assert secret not in bytes(logs.disk(CHAIN))
    assert PW not in bytes(logs.disk(CHAIN))


# --- passcodes ---------------------------------------------------------------------------------
def test_a_wrong_passcode_is_refused_and_changes_nothing(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    put(s, 10, b"x")
    s.sync()
    s.close()
    before = bytes(logs.disk(CHAIN))
    with pytest.raises(WrongPasscode, match="wrong passcode") as info:
        ChainSession.open(logs, CHAIN, b"not it", crypto, clock, Formats())
    assert "nothing was changed" in str(info.value)
    assert bytes(logs.disk(CHAIN)) == before
    # the refused open left no writer behind: the right passcode still opens it for writing
    s2 = reopen(logs, crypto, clock)
    assert 10 in s2.index.objects
    s2.close()


def test_an_encrypted_chain_needs_a_passcode(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    create(logs, crypto, clock).close()
    with pytest.raises(SessionError, match="passcode is needed") as info:
        ChainSession.open(logs, CHAIN, None, crypto, clock, Formats())
    assert not isinstance(info.value, WrongPasscode)


def test_a_no_auth_chain_refuses_a_passcode(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock, passcode=None)
    assert not s.encrypted
    assert s.header.kdf is None and s.header.root_key_hash is None
    put(s, 10, b"in clear")
    s.sync()
    s.close()
    with pytest.raises(SessionError, match="--no-auth"):
        ChainSession.open(logs, CHAIN, PW, crypto, clock, Formats())
    latest = LatestEvents()
    s2 = reopen(logs, crypto, clock, passcode=None, latest=latest)
    assert payloads(s2, latest) == {10: b"in clear"}
    with pytest.raises(SessionError):
        s2.new_object_key()
    s2.close()


def test_a_log_of_another_chain_is_refused(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    create(logs, crypto, clock, chain="first").close()
    logs.create("second", logs.read_header("first")).close()  # a copy of first's header
    with pytest.raises(ChainMismatch, match="'first'") as info:
        ChainSession.open(logs, "second", PW, crypto, clock, Formats())
    assert "'second'" in str(info.value)


# --- torn tails --------------------------------------------------------------------------------
def test_uncommitted_events_are_not_replayed(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    put(s, 10, b"committed")
    s.sync()
    committed_head, committed_size = s.index.head, s.log.size()
    put(s, 11, b"torn")
    put(s, 10, b"overwritten, but never committed")
    s.log.sync()  # durable, yet no commit record follows: a torn transaction
    s.close()
    assert len(logs.disk(CHAIN)) > committed_size

    latest = LatestEvents()
    s2 = reopen(logs, crypto, clock, latest=latest)
    assert s2.log.open_report.cut_from == committed_size
    assert s2.log.open_report.cut_bytes > 0
    assert 11 not in s2.index.objects
    assert s2.index.head == committed_head
    assert payloads(s2, latest) == {10: b"committed"}
    assert len(logs.disk(CHAIN)) == committed_size  # the torn tail was cut
    # and the chain goes on from there
    put(s2, 11, b"again")
    s2.sync()
    s2.close()
    latest = LatestEvents()
    s3 = reopen(logs, crypto, clock, latest=latest)
    assert payloads(s3, latest) == {10: b"committed", 11: b"again"}
    s3.close()


def test_a_crash_loses_only_what_was_not_synced(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    put(s, 10, b"synced")
    s.sync()
    put(s, 11, b"committed, not synced")
    s.commit()
    logs.crash()
    latest = LatestEvents()
    s2 = reopen(logs, crypto, clock, latest=latest)
    assert payloads(s2, latest) == {10: b"synced"}
    s2.close()


# --- attestation -------------------------------------------------------------------------------
def test_attest_signs_the_head_and_the_signature_validates_on_reopen(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    assert not s.unattested  # create attests its first transaction
    put(s, 10, b"x")
    s.commit()  # a local seal: cheap, not a signature
    assert s.unattested
    assert s.attest() is True
    assert not s.unattested
    assert s.attest() is False  # nothing new to attest
    head = s.index.head
    s.sync()
    s.close()

    raw = bytes(logs.disk(CHAIN))
    last = frames(raw)[-1]
    assert last.commit
    seal = decode_meta(last.meta, Format(last.fmt))
    sigs = [m for m in seal if isinstance(m, Signature)]
    # the signature covers the head and the seal's timestamp (domain/trust.py)
    digest = signed_digest(s.header.chain_id, [], seal, head)
    assert len(sigs) == 1 and sigs[0].digest == digest
    s2 = reopen(logs, crypto, clock)
    public = s2.index.public_keys[sigs[0].public_key_hash]
    assert crypto.verify(public, digest, sigs[0].signature)
    assert s2.index.attested == s2.index.head == head
    assert not s2.unattested
    s2.close()


def test_attest_seals_pending_events_first(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock)
    put(s, 10, b"pending")
    assert s.attest() is True
    assert not s.has_pending
    s.log.sync()
    s.close()
    s2 = reopen(logs, crypto, clock)
    assert 10 in s2.index.objects and not s2.unattested
    s2.close()


def test_a_no_auth_chain_has_nothing_to_attest_with(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    s = create(logs, crypto, clock, passcode=None)
    put(s, 10, b"x")
    assert s.attest() is False
    s.close()


# --- tampering ---------------------------------------------------------------------------------
def _alter(logs: MemoryRedoLogFactory, pick: str) -> None:
    """Alter one seal of the log as an attacker would: the frame CRC stays valid."""
    raw = logs.disk(CHAIN)
    seals = [f for f in frames(raw) if f.commit]
    for frame in seals if pick != "last" else seals[-1:]:
        meta = decode_meta(frame.meta, Format(frame.fmt))
        new: list[Meta] = []
        changed = False
        for m in meta:
            if not changed and pick in ("signature", "last") and isinstance(m, Signature):
                sig = bytearray(m.signature)
                sig[len(sig) // 2] ^= 0x01
                m = Signature(m.public_key_hash, m.digest, bytes(sig))
                changed = True
            elif not changed and pick == "digest" and isinstance(m, Signature):
                m = Signature(m.public_key_hash, bytes(32), m.signature)
                changed = True
            elif not changed and pick == "seal" and isinstance(m, LocalSeal):
                m = LocalSeal(bytes(b ^ 0xFF for b in m.mac))
                changed = True
            new.append(m)
        if changed:
            rewrite_meta(raw, frame, encode_meta(new, Format(frame.fmt)))
            return
    raise AssertionError(f"no seal to alter for {pick!r}")


def _chain_with_history(logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock) -> None:
    s = create(logs, crypto, clock)
    put(s, 10, b"one")
    s.commit()
    put(s, 11, b"two")
    s.commit()
    s.attest()
    s.sync()
    s.close()


@pytest.mark.parametrize(
    "pick",
    ["last", "signature", "digest", "seal"],
    ids=[
        "attestation-signature",
        "first-signature",
        "signature-digest",
        "local-seal",
    ],
)
def test_an_altered_signature_or_seal_fails_with_chain_integrity_error(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock, pick: str
) -> None:
    _chain_with_history(logs, crypto, clock)
    _alter(logs, pick)
    altered = bytes(logs.disk(CHAIN))
    s = ChainSession.open(logs, CHAIN, PW, crypto, clock, Formats())
    assert s.log.open_report.cut_bytes == 0  # structurally sound: the chain must notice
    with pytest.raises(ChainIntegrityError, match="fails validation"):
        s.start()
    # start closed the log on the way out: the chain is not left open for writing
    logs.open(CHAIN, read_only=False).close()
    assert bytes(logs.disk(CHAIN)) == altered


def test_a_flipped_byte_in_an_earlier_seal_is_damage_not_a_torn_tail(
    logs: MemoryRedoLogFactory, crypto: FastCrypto, clock: FakeClock
) -> None:
    _chain_with_history(logs, crypto, clock)
    raw = logs.disk(CHAIN)
    first_seal = next(f for f in frames(raw) if f.commit)
    raw[first_seal.meta_offset + len(first_seal.meta) // 2] ^= 0x40  # CRC left as it was
    with pytest.raises(LogCorrupt, match="damaged"):
        ChainSession.open(logs, CHAIN, PW, crypto, clock, Formats())
