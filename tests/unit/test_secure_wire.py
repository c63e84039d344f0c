"""Wire encryption's channel and key schedule (domain/secure_wire.py, adapters/secure_channel.py):
round trip, nonces never reused, replayed / reordered / dropped / altered frames refused, rekeying
across the boundary, the handshake over a pair of in-memory sockets, the known-servers file and
the server's key files."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from adapters.secure_channel import (
    ClientWire,
    KnownServers,
    SecureChannel,
    ServerKeyError,
    ServerRefusedWire,
    ServerWire,
    WireRefused,
    client_handshake,
    load_server_keys,
    server_handshake,
    server_name,
)
from domain.secure_wire import (
    LEVELS,
    TAG_SIZE,
    Direction,
    HandshakeError,
    KnownServerError,
    SecureOffer,
    decode_accept,
    decode_offer,
    directions,
    encode,
    hkdf_expand,
    hkdf_extract,
    session_keys,
    transcript,
)
from domain.wire import Hello, WireError
from domain.wire import encode as encode_msg

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


KEYS = session_keys(b"e" * 32, b"s" * 32, transcript(b"offer", b"accept", b"finish"))


def pair(
    rekey_frames: int = 1 << 20, rekey_bytes: int = 1 << 34
) -> tuple[SecureChannel, SecureChannel]:
    kw = {"rekey_frames": rekey_frames, "rekey_bytes": rekey_bytes}
    client = SecureChannel(*directions(KEYS, client=True, **kw), 256)
    server = SecureChannel(*directions(KEYS, client=False, **kw), 256)
    return client, server


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    prk = hkdf_extract(salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = hkdf_expand(prk, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_keys_differ_per_direction_and_depend_on_every_input() -> None:
    assert KEYS.client_to_server != KEYS.server_to_client
    th = transcript(b"offer", b"accept", b"finish")
    others = [
        session_keys(b"E" * 32, b"s" * 32, th),
        session_keys(b"e" * 32, b"S" * 32, th),
        session_keys(b"e" * 32, b"s" * 32, transcript(b"offer", b"accept", b"finisH")),
        # the length prefix: moving a byte between frames changes the transcript
        session_keys(b"e" * 32, b"s" * 32, transcript(b"offe", b"raccept", b"finish")),
    ]
    for other in others:
        assert other.client_to_server != KEYS.client_to_server
        assert other.server_to_client != KEYS.server_to_client


def test_round_trip_both_ways_and_frames_are_ciphertext() -> None:
    client, server = pair()
    for i in range(50):
        frame = encode_msg(Hello([1], f"chain-{i}"))
        sealed = client.seal(frame)
        assert len(sealed) == len(frame) + TAG_SIZE
        assert b"chain-" not in sealed and b"hello" not in sealed
        assert server.open(sealed) == frame
        answer = b"answer %d" % i
        assert client.open(server.seal(answer)) == answer


def test_the_same_plaintext_never_seals_to_the_same_frame() -> None:
    client, _ = pair()
    frames = {client.seal(b"same bytes") for _ in range(1000)}
    assert len(frames) == 1000


def test_nonces_are_unique_across_rekeys() -> None:
    d = Direction(b"k" * 32, b"c2s", rekey_frames=7)
    seen: set[tuple[bytes, bytes]] = set()
    nonces: set[bytes] = set()
    keys: set[bytes] = set()
    for _ in range(100):
        key, nonce, aad = d.next(10)
        assert len(nonce) == 12 and nonce.startswith(b"\0\0\0\0")
        assert (key, nonce) not in seen
        seen.add((key, nonce))
        nonces.add(nonce)
        keys.add(key)
        assert aad.startswith(b"c2s") and aad.endswith(nonce[4:])
    assert len(nonces) == 100  # the counter runs on across keys
    assert len(keys) == 15  # ceil(100 / 7) epochs


def test_a_replayed_frame_is_refused() -> None:
    client, server = pair()
    first = client.seal(b"commit 1")
    assert server.open(first) == b"commit 1"
    with pytest.raises(WireError, match="failed to open"):
        server.open(first)


def test_reordered_frames_are_refused() -> None:
    client, server = pair()
    a, b = client.seal(b"a"), client.seal(b"b")
    with pytest.raises(WireError, match="replayed, reordered, dropped"):
        server.open(b)
    _, server2 = pair()
    assert server2.open(a) == b"a"
    assert server2.open(b) == b"b"


def test_a_dropped_frame_makes_the_next_one_fail() -> None:
    client, server = pair()
    client.seal(b"lost on the way")
    with pytest.raises(WireError):
        server.open(client.seal(b"next"))


@pytest.mark.parametrize("where", [0, 5, -1, -TAG_SIZE])
def test_an_altered_frame_is_refused(where: int) -> None:
    client, server = pair()
    sealed = bytearray(client.seal(b"x" * 40))
    sealed[where] ^= 0x01
    with pytest.raises(WireError):
        server.open(bytes(sealed))


def test_frames_of_the_other_direction_or_another_connection_are_refused() -> None:
    client, server = pair()
    with pytest.raises(WireError):
        client.open(client.seal(b"reflected back"))
    other = SecureChannel(
        *directions(session_keys(b"x" * 32, b"s" * 32, b"t" * 32), client=True), 256
    )
    with pytest.raises(WireError):
        server.open(other.seal(b"spliced in"))


def test_short_and_text_frames_are_refused() -> None:
    _, server = pair()
    with pytest.raises(WireError, match="too short"):
        server.open(b"short")
    with pytest.raises(WireError, match="text frame"):
        server.open("text")


@pytest.mark.parametrize("by", ["frames", "bytes"])
def test_rekeying_keeps_both_ends_in_step(by: str) -> None:
    kw = {"rekey_frames": 4} if by == "frames" else {"rekey_bytes": 100}
    client, server = pair(**kw)
    for i in range(40):
        payload = bytes([i]) * (30 + i % 7)
        assert server.open(client.seal(payload)) == payload
        assert client.open(server.seal(payload)) == payload
    assert client._send.epoch >= 9 and client._send.epoch == server._recv.epoch
    assert client._send.key != KEYS.client_to_server


def test_a_frame_of_an_old_epoch_does_not_open_after_the_rekey() -> None:
    client, server = pair(rekey_frames=2)
    frames = [client.seal(b"%d" % i) for i in range(3)]
    server.open(frames[0])
    server.open(frames[1])
    with pytest.raises(WireError):
        server.open(frames[0])  # old epoch, old counter: refused


# --- handshake -----------------------------------------------------------------------------------
class Pipe:
    """One end of an in-memory connection (the handshake's view of a websocket)."""

    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.sent: list[bytes] = []

    async def send(self, message: bytes) -> None:
        self.sent.append(message)
        await self.outbox.put(message)

    async def recv(self) -> Any:
        return await self.inbox.get()


def pipes() -> tuple[Pipe, Pipe]:
    a: asyncio.Queue[Any] = asyncio.Queue()
    b: asyncio.Queue[Any] = asyncio.Queue()
    return Pipe(a, b), Pipe(b, a)


async def _serve_one(end: Pipe, wire: ServerWire | None) -> SecureChannel:
    frame = await end.recv()
    offer = decode_offer(frame)
    assert offer is not None
    return await server_handshake(end, frame, offer, wire)


@pytest.fixture(scope="module")
def server_keys(tmp_path_factory: pytest.TempPathFactory) -> ServerWire:
    return ServerWire(load_server_keys(tmp_path_factory.mktemp("server")))


@pytest.mark.parametrize("level", [128, 192, 256])
async def test_handshake_gives_both_ends_one_channel(
    level: int, server_keys: ServerWire, tmp_path: Path
) -> None:
    c_end, s_end = pipes()
    wire = ClientWire(level, KnownServers(tmp_path / "known"))
    client, server = await asyncio.gather(
        client_handshake(c_end, wire, "ws://example.org:5000/db/x"), _serve_one(s_end, server_keys)
    )
    assert client.level == server.level == level
    assert server.open(client.seal(b"hello")) == b"hello"
    assert client.open(server.seal(b"welcome")) == b"welcome"
    offer = c_end.sent[0]
    assert len(decode_offer(offer).ephemeral) == LEVELS[level][1]  # type: ignore[union-attr]
    line = (tmp_path / "known").read_text()
    assert line.startswith(f"example.org:5000 {level} ")


async def test_a_second_connection_to_a_pinned_server_passes(
    server_keys: ServerWire, tmp_path: Path
) -> None:
    known = KnownServers(tmp_path / "known")
    for _ in range(2):
        c_end, s_end = pipes()
        await asyncio.gather(
            client_handshake(c_end, ClientWire(256, known), "ws://h:1/db/x"),
            _serve_one(s_end, server_keys),
        )
    assert len((tmp_path / "known").read_text().splitlines()) == 1


async def test_a_changed_server_key_is_refused_naming_the_line(tmp_path: Path) -> None:
    known = KnownServers(tmp_path / "known")
    (tmp_path / "known").write_text("# comment\nother:1 256 " + "A" * 43 + "=\n")
    first = ServerWire(load_server_keys(tmp_path / "one"))
    c_end, s_end = pipes()
    await asyncio.gather(
        client_handshake(c_end, ClientWire(192, known), "ws://h:1/db/x"), _serve_one(s_end, first)
    )
    replaced = ServerWire(load_server_keys(tmp_path / "two"))
    c_end, s_end = pipes()
    server = asyncio.create_task(_serve_one(s_end, replaced))
    with pytest.raises(KnownServerError, match=r"known line 3 .*delete line 3 of"):
        await client_handshake(c_end, ClientWire(192, known), "ws://h:1/db/x")
    assert not c_end.sent[1:]  # no finish: the client stopped before sending anything more
    server.cancel()
    # another level of the same server is another pin
    c_end, s_end = pipes()
    await asyncio.gather(
        client_handshake(c_end, ClientWire(256, known), "ws://h:1/db/x"),
        _serve_one(s_end, replaced),
    )


async def test_a_server_refuses_weaker_offers_and_without_keys_any(
    server_keys: ServerWire, tmp_path: Path
) -> None:
    strict = ServerWire(server_keys.keys, required=256)
    for wire, level, match in [
        (strict, 192, "at least 256 bits; the client offered 192"),
        (None, 256, "does not offer wire encryption"),
    ]:
        _, s_end = pipes()
        frame = encode(SecureOffer(level, os.urandom(32), os.urandom(LEVELS[level][1])))
        offer = decode_offer(frame)
        assert offer is not None
        with pytest.raises(WireRefused, match=match):
            await server_handshake(s_end, frame, offer, wire)


def test_a_server_answer_of_another_level_or_size_is_refused() -> None:
    from domain.secure_wire import SecureAccept

    ok = SecureAccept(192, b"n" * 32, b"k" * 1184, b"c" * 1088)
    assert isinstance(decode_accept(encode(ok), 192), SecureAccept)
    with pytest.raises(HandshakeError, match="answered wire encryption 192 to an offer of 256"):
        decode_accept(encode(ok), 256)
    short = SecureAccept(192, b"n" * 32, b"k" * 1183, b"c" * 1088)
    with pytest.raises(HandshakeError, match="malformed"):
        decode_accept(encode(short), 192)
    with pytest.raises(HandshakeError):
        decode_accept(encode_msg(Hello([1], "x")), 192)  # a plain answer is no answer


def test_offers_are_told_apart_from_hello() -> None:
    assert decode_offer(encode_msg(Hello([1], "x"))) is None
    assert decode_offer(b"\xc1garbage") is None
    with pytest.raises(HandshakeError):
        decode_offer(encode(SecureOffer(100, b"n" * 32, b"k")))  # unknown level
    with pytest.raises(HandshakeError):
        decode_offer(encode(SecureOffer(256, b"n" * 32, b"k" * 5)))  # wrong key size


async def test_the_client_reports_a_refusal_and_sends_nothing_more(tmp_path: Path) -> None:
    from domain.wire import Fatal

    c_end, s_end = pipes()
    await s_end.outbox.put(encode_msg(Fatal("no")))
    with pytest.raises(ServerRefusedWire, match="no"):
        await client_handshake(c_end, ClientWire(128, KnownServers(tmp_path / "k")), "ws://h/db/x")
    assert len(c_end.sent) == 1


# --- files ---------------------------------------------------------------------------------------
def test_server_keys_are_created_once_private_and_checked(tmp_path: Path) -> None:
    keys = load_server_keys(tmp_path)
    assert set(keys) == {128, 192, 256}
    for level, key in keys.items():
        assert len(key.public) == LEVELS[level][1]
    files = sorted((tmp_path / "wire-keys").iterdir())
    assert [f.name for f in files] == ["ml-kem-1024.key", "ml-kem-512.key", "ml-kem-768.key"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert load_server_keys(tmp_path) == keys
    files[0].chmod(0o644)
    with pytest.raises(ServerKeyError, match="readable by others"):
        load_server_keys(tmp_path)
    files[0].chmod(0o600)
    files[0].write_bytes(b"short")
    with pytest.raises(ServerKeyError, match="damaged"):
        load_server_keys(tmp_path)


def test_the_known_servers_file_follows_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert KnownServers().path == tmp_path / "wasmer-dfs" / "known_servers"
    monkeypatch.setenv("XDG_CONFIG_HOME", "")
    assert KnownServers().path == Path.home() / ".config" / "wasmer-dfs" / "known_servers"


def test_a_malformed_known_servers_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "known"
    path.write_text("h:1 256 not-base64\n")
    with pytest.raises(KnownServerError, match="line 1 is not"):
        KnownServers(path).check_or_pin("h:1", 256, b"k")


def test_server_names() -> None:
    assert server_name("ws://Example.ORG/db/x") == "example.org:80"
    assert server_name("wss://h/db/x") == "h:443"
    assert server_name("ws://[::1]:5000/db/x") == "[::1]:5000"
