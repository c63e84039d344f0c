"""The wire protocol's frames (domain/wire.py): every message round-trips, versions are
negotiated, and anything malformed raises ``WireError`` instead of reaching the receiver."""

from __future__ import annotations

import contextlib
import random

import msgspec
import pytest

from domain.locks import EOF
from domain.wire import (
    PROTOCOL_VERSIONS,
    ClientMessage,
    Commit,
    CommitError,
    CommitRecord,
    Confirmed,
    EndOfHistory,
    Events,
    Fatal,
    Hello,
    Lock,
    LockCancel,
    LockRenew,
    LockResult,
    LockSpan,
    LockStatus,
    LockSync,
    LockTest,
    ReadOnly,
    ServerLimits,
    ServerMessage,
    Subscribe,
    Unlock,
    VersionMismatch,
    Welcome,
    WireError,
    WireRecord,
    decode_client,
    decode_server,
    encode,
    negotiate,
)

CLIENT: list[ClientMessage] = [
    Hello([1], "myfs"),
    Hello([1, 2, 7], "a.b_c-d", b"\x00header", "tests"),
    Subscribe(),
    Subscribe(123456789),
    Commit(1, [CommitRecord(b"meta", 1, b"data"), CommitRecord(b"seal", 1)]),
    Commit(2**64 - 1, [CommitRecord(b"", 255, None)]),
    Hello([1], "myfs", client_id=b"\x01" * 16),
    Lock(1, 42, 7, 2),
    Lock(2, 42, 7, 1, 100, 110, flock=False, wait=True, position=4096),
    Lock(3, 2**64 - 1, 2**64 - 1, 2, 0, EOF, flock=True),
    Unlock(42, 7),
    Unlock(42, 7, 5, 6, position=99),
    LockCancel(2),
    LockTest(4, 42, 7, 1, 0, 10),
    LockSync(5, [LockSpan(42, 7, False, 0, 10, 2), LockSpan(43, 8, True, 0, EOF, 1)], 4096, True),
    LockSync(6, []),
    LockRenew(7),
]

SERVER: list[ServerMessage] = [
    Welcome(1, "myfs", None, 0),
    Welcome(1, "myfs", b"hdr", 4096, ServerLimits(max_frame=1 << 20, tolerance_ms=5)),
    Events([], 10),
    Events(
        [WireRecord(10, b"m", 1, b"d", False), WireRecord(90, b"s", 2, None, True)],
        150,
    ),
    EndOfHistory(150),
    Confirmed(7, 150, 300),
    CommitError(7, "a signature does not verify"),
    ReadOnly("the server is read-only"),
    Fatal("too slow"),
    LockResult(42, LockStatus.GRANTED, 4096),
    LockResult(43, LockStatus.CONFLICT, holder=LockSpan(42, 7, False, 100, 110, 2)),
    LockResult(44, LockStatus.GRANTED, lost=[0, 3]),
    LockResult(45, LockStatus.REFUSED, reason="too many locks"),
]


@pytest.mark.parametrize("msg", CLIENT, ids=lambda m: type(m).__name__)
def test_client_messages_round_trip(msg: ClientMessage) -> None:
    frame = encode(msg)
    assert isinstance(frame, bytes)
    assert decode_client(frame) == msg


@pytest.mark.parametrize("msg", SERVER, ids=lambda m: type(m).__name__)
def test_server_messages_round_trip(msg: ServerMessage) -> None:
    assert decode_server(encode(msg)) == msg


def test_every_message_kind_is_covered() -> None:
    kinds = {type(m) for m in CLIENT} | {type(m) for m in SERVER}
    assert kinds == {
        Hello,
        Subscribe,
        Commit,
        Lock,
        Unlock,
        LockCancel,
        LockTest,
        LockSync,
        LockRenew,
        Welcome,
        Events,
        EndOfHistory,
        Confirmed,
        CommitError,
        ReadOnly,
        Fatal,
        LockResult,
    }


def test_a_side_refuses_the_other_sides_messages() -> None:
    with pytest.raises(WireError):
        decode_client(encode(Fatal("x")))
    with pytest.raises(WireError):
        decode_server(encode(Hello([1], "x")))


def test_hello_of_a_newer_program_still_decodes() -> None:
    """Hello keeps its shape in every version: new fields are ignored by older programs."""
    frame = msgspec.msgpack.encode(
        {"t": "hello", "versions": [1, 2], "chain": "x", "header": None, "future": [1, 2, 3]}
    )
    msg = decode_client(frame)
    assert isinstance(msg, Hello) and msg.versions == [1, 2]


@pytest.mark.parametrize(
    ("client", "server", "chosen"),
    [([1], (1,), 1), ([1, 2, 3], (1, 2), 2), ([3, 1], (1, 3, 4), 3)],
)
def test_negotiate_chooses_the_highest_common_version(
    client: list[int], server: tuple[int, ...], chosen: int
) -> None:
    assert negotiate(client, server) == chosen


def test_negotiate_without_common_version_says_so() -> None:
    with pytest.raises(VersionMismatch, match=r"server speaks \[1\].*client \[2, 3\]"):
        negotiate([3, 2], (1,))
    assert PROTOCOL_VERSIONS == (1,)


MALFORMED_CLIENT: list[object] = [
    b"",
    b"\xc1",  # never used in msgpack
    b"\x92\x01\x02",  # an array, not a tagged map
    msgspec.msgpack.encode({"t": "nonsense"}),
    msgspec.msgpack.encode({"versions": [1], "chain": "x"}),  # no tag
    msgspec.msgpack.encode({"t": "hello", "versions": [], "chain": "x"}),
    msgspec.msgpack.encode({"t": "hello", "versions": [0], "chain": "x"}),
    msgspec.msgpack.encode({"t": "hello", "versions": [1], "chain": ""}),
    msgspec.msgpack.encode({"t": "hello", "versions": [1], "chain": "x" * 300}),
    msgspec.msgpack.encode({"t": "hello", "versions": ["1"], "chain": "x"}),
    msgspec.msgpack.encode({"t": "subscribe", "from_position": -1}),
    msgspec.msgpack.encode({"t": "subscribe", "from_position": 2**63}),
    msgspec.msgpack.encode({"t": "commit", "tx_id": 1, "records": []}),
    msgspec.msgpack.encode({"t": "commit", "tx_id": -1, "records": [[b"m", 1, None]]}),
    msgspec.msgpack.encode({"t": "commit", "tx_id": 1, "records": [[b"m", 256, None]]}),
    msgspec.msgpack.encode({"t": "commit", "tx_id": 1, "records": [[b"m", 1, b"d"]]}),
    msgspec.msgpack.encode({"t": "commit", "tx_id": 1, "records": [["m", 1, None]]}),
    msgspec.msgpack.encode({"t": "commit", "tx_id": 1, "records": "x"}),
    msgspec.msgpack.encode({"t": "hello", "versions": [1], "chain": "x", "client_id": b""}),
    msgspec.msgpack.encode({"t": "lock", "req": 1, "key": 1, "owner": 1, "kind": 0}),
    msgspec.msgpack.encode({"t": "lock", "req": 1, "key": 1, "owner": 1, "kind": 3}),
    msgspec.msgpack.encode(
        {"t": "lock", "req": 1, "key": 1, "owner": 1, "kind": 1, "start": 5, "end": 5}
    ),
    msgspec.msgpack.encode({"t": "lock", "req": 1, "key": 1, "owner": 1, "kind": 1, "end": 2**63}),
    msgspec.msgpack.encode({"t": "lock", "req": -1, "key": 1, "owner": 1, "kind": 1}),
    msgspec.msgpack.encode({"t": "unlock", "key": 1, "owner": 1, "start": 9, "end": 3}),
    msgspec.msgpack.encode(
        {"t": "lock-test", "req": 1, "key": 1, "owner": 1, "kind": 1, "start": -1}
    ),
    msgspec.msgpack.encode({"t": "lock-sync", "req": 1, "held": [[1, 1, False, 7, 7, 1]]}),
    msgspec.msgpack.encode({"t": "lock-sync", "req": 1, "held": [[1, 1, False, 0, 7, 9]]}),
    msgspec.msgpack.encode({"t": "lock-cancel"}),
    b"\x91" * 100_000 + b"\xc0",  # nested too deeply
    "a text frame",
    None,
]


@pytest.mark.parametrize("frame", MALFORMED_CLIENT)
def test_malformed_client_frames_raise_wire_error(frame: object) -> None:
    with pytest.raises(WireError):
        decode_client(frame)


MALFORMED_SERVER: list[bytes] = [
    encode(Events([WireRecord(10, b"", 1, None, True), WireRecord(10, b"", 1, None, True)], 20)),
    encode(Events([WireRecord(10, b"", 1, None, True)], 10)),
    encode(Confirmed(1, 100, 100)),
    msgspec.msgpack.encode({"t": "welcome", "version": 0, "chain": "x", "header": None}),
    msgspec.msgpack.encode({"t": "fatal", "reason": "x" * 5000}),
    msgspec.msgpack.encode({"t": "lock-result", "req": 1, "status": 9}),
]


@pytest.mark.parametrize("frame", MALFORMED_SERVER)
def test_malformed_server_frames_raise_wire_error(frame: bytes) -> None:
    with pytest.raises(WireError):
        decode_server(frame)


def test_random_bytes_never_escape_as_another_error() -> None:
    rng = random.Random(7)
    good = [encode(m) for m in CLIENT]
    for _ in range(20_000):
        frame = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        with contextlib.suppress(WireError):
            decode_client(bytes(frame))
