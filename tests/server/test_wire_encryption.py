"""Wire encryption between real clients and a real chain server on loopback (docs/adr/0013): the
handshake, encrypted clients beside plain ones, a server that requires a level refusing plain and
weaker clients, a server without keys refusing encrypted ones, a pinned key that changed, frames
altered or replayed on the way, rekeying on a live connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.remote import WsConnector, fetch_header
from adapters.secure_channel import ClientWire, KnownServers, ServerWire, load_server_keys
from adapters.ws_client import (
    ChainClient,
    ServerFatal,
    ServerKeyChanged,
    WireEncryptionRefused,
)
from adapters.ws_server import WsChainServer
from application.ports import RemoteRefused
from domain.wire import EndOfHistory, Events, Hello, Subscribe, encode

from .conftest import Clients, LocalChain, Servers, create_chain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def url(server: WsChainServer, chain: str = "fs") -> str:
    return f"{server.url}/db/{chain}"


@pytest.fixture
def keys(tmp_path: Path) -> ServerWire:
    return ServerWire(load_server_keys(tmp_path / "server"))


@pytest.fixture
def known(tmp_path: Path) -> KnownServers:
    return KnownServers(tmp_path / "config" / "known_servers")


async def test_encrypted_and_plain_clients_share_a_chain(
    servers: Servers, clients: Clients, keys: ServerWire, known: KnownServers
) -> None:
    server = await servers.start(wire=keys)
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header, wire=ClientWire(256, known))
    assert a.channel.encrypted
    end = await create_chain(a, chain)
    plain = await clients.connect(url(server))
    assert not plain.channel.encrypted
    b = await clients.connect(url(server), wire=ClientWire(128, known))
    for c in (plain, b):
        await c.subscribe(end)
        assert await c.next(timeout=10) == EndOfHistory(end)
    confirmed = await a.commit(chain.write(b"over the encrypted wire"), timeout=10)
    for c in (plain, b):
        msg = await c.next(timeout=10)
        assert isinstance(msg, Events) and msg.end == confirmed.end
    # the server was pinned once per level, under its URL's host:port
    lines = known.path.read_text().splitlines()
    assert sorted(line.split()[1] for line in lines) == ["128", "256"]
    assert all(line.startswith(f"127.0.0.1:{server.port} ") for line in lines)


async def test_a_server_that_requires_a_level_refuses_plain_and_weaker_clients(
    servers: Servers, clients: Clients, keys: ServerWire, known: KnownServers
) -> None:
    server = await servers.start(wire=ServerWire(keys.keys, required=192))
    with pytest.raises(ServerFatal, match=r"requires wire encryption \(at least 192 bits\)"):
        await ChainClient.connect(url(server), header=LocalChain().header)
    with pytest.raises(
        WireEncryptionRefused,
        match=r"refused wire encryption 128 \(ML-KEM-512\): .* 192 bits; the client offered 128",
    ):
        await ChainClient.connect(url(server), wire=ClientWire(128, known))
    assert not known.path.exists() or known.path.read_text() == ""  # nothing pinned
    chain = LocalChain()
    for level in (192, 256):
        ok = await clients.connect(url(server), header=chain.header, wire=ClientWire(level, known))
        assert ok.channel.encrypted and ok.welcome.chain == "fs"


async def test_a_server_without_wire_encryption_never_gets_a_plain_frame(
    servers: Servers, clients: Clients, known: KnownServers
) -> None:
    server = await servers.start()  # no keys: as a server of an older version
    with pytest.raises(WireEncryptionRefused, match="does not offer wire encryption"):
        await ChainClient.connect(url(server), wire=ClientWire(256, known))
    with pytest.raises(RemoteRefused, match="refused wire encryption 256"):
        await fetch_header(url(server), wire=ClientWire(256, known))
    with pytest.raises(RemoteRefused, match="refused wire encryption 256"):
        await WsConnector(url(server), wire=ClientWire(256, known)).connect(None)
    plain = await clients.connect(url(server), header=LocalChain().header)  # still served
    assert not plain.channel.encrypted


async def test_a_changed_server_key_is_refused_until_its_line_is_deleted(
    servers: Servers, clients: Clients, tmp_path: Path, known: KnownServers
) -> None:
    # two servers with different keys, both known as chains.example:5000 (the name the user
    # typed; here as if the second one took the first one's place)
    first = await servers.start(wire=ServerWire(load_server_keys(tmp_path / "one")))
    second = await servers.start(wire=ServerWire(load_server_keys(tmp_path / "two")))
    wire = ClientWire(256, known, name="chains.example:5000")
    header = LocalChain().header
    await clients.connect(url(first), header=header, wire=wire)
    assert known.path.read_text().startswith("chains.example:5000 256 ")
    with pytest.raises(
        ServerKeyChanged, match=r"different wire encryption key.*known_servers line 1"
    ):
        await ChainClient.connect(url(second), header=header, wire=wire)
    with pytest.raises(RemoteRefused, match="delete line 1 of"):
        await fetch_header(url(second), wire=wire)
    with pytest.raises(RemoteRefused, match="delete line 1 of"):
        await WsConnector(url(second), wire=wire).connect(header)
    known.path.write_text("")  # the user deletes the line: the new key is pinned
    ok = await clients.connect(url(second), header=header, wire=wire)
    assert ok.channel.encrypted
    with pytest.raises(ServerKeyChanged):  # and now the first one is the stranger
        await ChainClient.connect(url(first), header=header, wire=wire)


async def test_an_altered_or_replayed_frame_closes_the_connection(
    servers: Servers, clients: Clients, keys: ServerWire, known: KnownServers
) -> None:
    server = await servers.start(wire=keys)
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header, wire=ClientWire(256, known))
    await create_chain(a, chain)
    # a sealed frame replayed (sent again as it was) fails to open: the counter moved on
    sealed = a.channel.seal(b"\x81\xa1t\xa9subscribe")
    await a.send_raw(sealed)
    await a.send_raw(sealed)
    err = await a.wait_closed(10)
    assert isinstance(err, ServerFatal) and "failed to open (replayed" in err.reason
    assert a.ws.close_code == 1002
    # a plain frame on an encrypted connection is refused too
    b = await clients.connect(url(server), wire=ClientWire(256, known))
    await b.send_raw(encode(Hello([1], "fs", b"h" * 64)))
    assert "failed to open" in str(await b.wait_closed(10))
    assert b.ws.close_code == 1002
    # and a sealed frame with one bit flipped
    c = await clients.connect(url(server), wire=ClientWire(256, known))
    altered = bytearray(c.channel.seal(encode(Subscribe(0))))
    altered[3] ^= 0x10
    await c.send_raw(bytes(altered))
    assert "failed to open" in str(await c.wait_closed(10))
    still = await clients.connect(url(server), wire=ClientWire(256, known))
    await still.subscribe(0)
    records, _ = await still.history(timeout=10)
    assert records


async def test_rekeying_on_a_live_connection(
    servers: Servers, clients: Clients, keys: ServerWire, known: KnownServers
) -> None:
    wire = ServerWire(keys.keys, rekey_frames=3)
    server = await servers.start(wire=wire)
    chain = LocalChain()
    a = await clients.connect(
        url(server), header=chain.header, wire=ClientWire(192, known, rekey_frames=3)
    )
    end = await create_chain(a, chain)
    b = await clients.connect(url(server), wire=ClientWire(192, known, rekey_frames=3))
    await b.subscribe(end)
    assert await b.next(timeout=10) == EndOfHistory(end)
    for i in range(20):
        await a.commit(chain.write(b"tx %d" % i), timeout=10)
    got = 0
    while got < 20:
        msg = await b.next(timeout=10)
        assert isinstance(msg, Events)
        got += sum(r.commit for r in msg.records)
    assert a.channel._send.epoch >= 6 and b.channel._recv.epoch >= 6  # type: ignore[attr-defined]
