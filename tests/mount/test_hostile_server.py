"""A hostile chain server (issue 12, docs/adr/0016): a websocket proxy on loopback in front of a
real `wasmer-dfs serve` decodes the server's frames and tampers with the history it streams to one
replica - a flipped byte, swapped payloads, a dropped event, two transactions swapped or one
dropped, a fork after the replica had seen the original history. Each time the replica refuses
with a clear message on stderr, its mounted tree never shows forged content, and `wasmer-dfs
verify` on its log reports the refusal (and exits non-zero). An honest proxy changes nothing:
the same replicas then follow the server, attestations included, without a word of refusal.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from domain.wire import (
    Events,
    Subscribe,
    Welcome,
    WireRecord,
    decode_client,
    decode_server,
    encode,
)
from tests.mount.conftest import DEFAULT_PASSCODE, Mounter, MountProc, ServerProc
from tests.mount.test_replication import eventually, mount_remote, write
from tests.net import free_port

pytestmark = [pytest.mark.timeout(180)]

REFUSED = "the chain server served a history that"
GENUINE = b"genuine contents, as the writer wrote them\n" * 50

Tx = list[WireRecord]
Ended = tuple[Tx, int]  # a transaction's records and the position after it


@dataclass
class Tamper:
    """What the proxy does to the transactions it streams once ``armed`` (None: pass them)."""

    #: one transaction with events -> what is sent instead (called once)
    one: Callable[[Tx], Tx] | None = None
    #: two transactions with events -> what is sent instead (called once)
    two: Callable[[Tx, Tx], list[Tx]] | None = None
    #: answer a Subscribe with the server's current end instead (a server that lost history)
    rebase: bool = False
    done: bool = False
    held: list[Ended] = field(default_factory=list)


class HostileProxy:
    """A websocket proxy (in a thread of this process) in front of ``upstream``: client frames
    pass as they are (but ``rebase``), server frames are decoded and their transactions
    reassembled and passed through ``tamper``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.tamper = Tamper()
        self.armed = False
        self.tampered = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, chain: str = "fs") -> str:
        return f"ws://127.0.0.1:{self.port}/db/{chain}"

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._client, "127.0.0.1", self.port, max_size=None, compression=None):
            self._ready.set()
            await self._stop.wait()

    async def _client(self, down: ServerConnection) -> None:
        path = down.request.path if down.request is not None else "/"
        url = f"ws://127.0.0.1:{self.upstream_port}{path}"
        try:
            async with connect(url, max_size=None, compression=None) as up:
                welcome: list[Welcome] = []
                tasks = [
                    asyncio.create_task(self._up(down, up, welcome)),
                    asyncio.create_task(self._down(up, down, welcome)),
                ]
                _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in pending:
                    t.cancel()
        except (OSError, ConnectionClosed):
            pass

    async def _up(self, down: ServerConnection, up: object, welcome: list[Welcome]) -> None:
        async for frame in down:
            assert isinstance(frame, bytes)
            msg = decode_client(frame)
            if isinstance(msg, Subscribe) and self.tamper.rebase and welcome:
                frame = encode(Subscribe(welcome[0].position))
            await up.send(frame)  # type: ignore[attr-defined]

    async def _down(self, up: object, down: ServerConnection, welcome: list[Welcome]) -> None:
        pending: Tx = []
        async for frame in up:  # type: ignore[attr-defined]
            msg = decode_server(frame)
            if isinstance(msg, Welcome):
                welcome.append(msg)
            if not isinstance(msg, Events):
                await down.send(frame)
                continue
            out: list[Ended] = []
            for i, rec in enumerate(msg.records):
                pending.append(rec)
                if rec.commit:
                    nxt = msg.records[i + 1].position if i + 1 < len(msg.records) else msg.end
                    out += self._pass((pending, nxt))
                    pending = []
            for tx, end in out:
                await down.send(encode(Events(tx, end)))

    def _pass(self, ended: Ended) -> list[Ended]:
        t = self.tamper
        tx, end = ended
        if not self.armed or t.done or len(tx) < 2:
            if t.held:  # an attestation (or another seal) behind a held transaction waits too
                t.held.append(ended)
                return []
            return [ended]
        if t.one is not None:
            t.done = True
            self.tampered += 1
            new = t.one(list(tx))  # as many records or fewer: at the original's positions
            return [([_at(r, old.position) for r, old in zip(new, tx, strict=False)], end)]
        if t.two is not None:
            t.held.append(ended)
            events = [h for h in t.held if len(h[0]) > 1]
            if len(events) < 2:
                return []
            t.done = True
            self.tampered += 1
            held, t.held = t.held, []
            (first, _), (second, _) = events
            new = [*t.two(first, second), *(h[0] for h in held if len(h[0]) < 2)]
            # at the positions the held transactions had (they must increase in a frame)
            positions = iter(sorted(r.position for h in held for r in h[0]))
            placed = [[_at(r, next(positions)) for r in tx] for tx in new]
            ends = [tx[0].position for tx in placed[1:]] + [max(h[1] for h in held)]
            return list(zip(placed, ends, strict=True))
        return [ended]


def _at(rec: WireRecord, position: int) -> WireRecord:
    return WireRecord(position, rec.meta, rec.fmt, rec.data, rec.commit)


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def proxies() -> Iterator[list[HostileProxy]]:
    made: list[HostileProxy] = []
    try:
        yield made
    finally:
        for p in made:
            p.stop()


def proxy_to(proxies: list[HostileProxy], server: ServerProc) -> HostileProxy:
    p = HostileProxy(server.port)
    proxies.append(p)
    p.start()
    return p


def remount(mounter: Mounter, mp: MountProc, name: str, url: str) -> MountProc:
    """Unmount ``mp`` and mount its replica (``name``) again from ``url``."""
    assert mp.unmount() == 0, mp.stderr()
    return mount_remote(mounter, name, url)


def refused(mp: MountProc) -> None:
    assert REFUSED in mp.stderr(), mp.stderr()
    assert "stopped following it" in mp.stderr()


def verify_reports(mounter: Mounter, mp: MountProc) -> str:
    """Unmount ``mp``, run `wasmer-dfs verify` on its log: it must report the refusal."""
    assert mp.unmount() == 0, mp.stderr()
    r = mounter.cli("verify", str(mp.logdir), "--passcode", DEFAULT_PASSCODE)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused what its chain server served" in r.stderr, r.stderr
    assert REFUSED in r.stderr
    return r.stderr


def never_forged(root: Path, *allowed: bytes) -> None:
    """Every regular file under ``root`` holds contents a writer wrote (or none yet)."""
    for p in root.rglob("*"):
        if p.is_file():
            assert p.read_bytes() in (*allowed, b""), f"{p} holds forged contents"


# --- one transaction tampered ------------------------------------------------------------------
def _flip(tx: Tx) -> Tx:
    i = next(i for i, r in enumerate(tx) if r.data)
    r = tx[i]
    assert r.data is not None
    data = bytearray(r.data)
    data[len(data) // 2] ^= 0x01
    tx[i] = WireRecord(r.position, r.meta, r.fmt, bytes(data), r.commit)
    return tx


def _swap_payloads(tx: Tx) -> Tx:
    i, j = [i for i, r in enumerate(tx) if r.data][:2]
    a, b = tx[i], tx[j]
    tx[i] = WireRecord(a.position, a.meta, a.fmt, b.data, a.commit)
    tx[j] = WireRecord(b.position, b.meta, b.fmt, a.data, b.commit)
    return tx


def _drop_event(tx: Tx) -> Tx:
    return [r for i, r in enumerate(tx) if i != len(tx) - 2]


@pytest.mark.parametrize(
    "tamper", [_flip, _swap_payloads, _drop_event], ids=["flipped-byte", "swapped", "dropped"]
)
def test_a_tampered_transaction_is_refused(
    mounter: Mounter,
    server: ServerProc,
    proxies: list[HostileProxy],
    tamper: Callable[[Tx], Tx],
) -> None:
    a = mount_remote(mounter, "a", server.url())
    proxy = proxy_to(proxies, server)
    b = mount_remote(mounter, "b", proxy.url())
    proxy.tamper = Tamper(one=tamper)
    proxy.armed = True
    write(a.mnt / "f", GENUINE)
    eventually(lambda: _assert(proxy.tampered == 1), "the proxy tampered with the write")
    eventually(lambda: refused(b), "the replica refused")
    assert not (b.mnt / "f").exists()
    never_forged(b.mnt, GENUINE)
    assert "forged" in verify_reports(mounter, b)


def _assert(cond: bool) -> None:
    assert cond


# --- whole transactions dropped or swapped: found at the next attestation ----------------------
def _swap(first: Tx, second: Tx) -> list[Tx]:
    return [second, first]


def _drop_first(first: Tx, second: Tx) -> list[Tx]:
    return [second]


@pytest.mark.parametrize("order", [_swap, _drop_first], ids=["swapped", "dropped"])
def test_transactions_reordered_or_dropped_are_found_at_the_next_attestation(
    mounter: Mounter,
    server: ServerProc,
    proxies: list[HostileProxy],
    order: Callable[[Tx, Tx], list[Tx]],
) -> None:
    a = mount_remote(mounter, "a", server.url())
    proxy = proxy_to(proxies, server)
    b = mount_remote(mounter, "b", proxy.url())
    proxy.tamper = Tamper(two=order)
    proxy.armed = True
    one, two = GENUINE + b"one", GENUINE + b"two"
    write(a.mnt / "one", one)
    eventually(lambda: _assert(len(proxy.tamper.held) == 1), "the first write reached the proxy")
    write(a.mnt / "two", two)
    eventually(lambda: _assert(proxy.tampered == 1), "the proxy reordered the writes")
    # each transaction is genuine on its own: the writer's attestation of the head (after a
    # second of quiet) is what the reordered history no longer matches
    eventually(lambda: refused(b), "the replica refused at the attestation")
    assert "an attestation of the chain's head" in b.stderr()
    never_forged(b.mnt, one, two)
    verify_reports(mounter, b)


# --- honest: nothing refused ----------------------------------------------------------------------
def test_an_honest_proxy_changes_nothing(
    mounter: Mounter, server: ServerProc, proxies: list[HostileProxy]
) -> None:
    a = mount_remote(mounter, "a", server.url())
    proxy = proxy_to(proxies, server)
    b = mount_remote(mounter, "b", proxy.url())
    proxy.armed = True  # with no tamper: every transaction passes as it is
    for n in range(3):
        write(a.mnt / f"f{n}", GENUINE + bytes([n]))
    for n in range(3):
        eventually(lambda n=n: _assert((b.mnt / f"f{n}").read_bytes() == GENUINE + bytes([n])),
                   f"f{n} on b")  # fmt: skip
    # B writes too, and both attest: each checks the other's attestations
    write(b.mnt / "from-b", GENUINE)
    eventually(lambda: _assert((a.mnt / "from-b").read_bytes() == GENUINE), "from-b on a")
    time.sleep(2.5)  # past both writers' attestations
    assert REFUSED not in a.stderr() + b.stderr()
    assert a.unmount() == 0 and b.unmount() == 0
    for mp in (a, b):
        r = mounter.cli("verify", str(mp.logdir), "--passcode", DEFAULT_PASSCODE)
        assert r.returncode == 0, r.stdout + r.stderr


# --- a fork after the replica saw the original ---------------------------------------------------
def test_a_fork_after_the_replica_saw_the_original_is_found(
    mounter: Mounter, server: ServerProc, proxies: list[HostileProxy], tmp_path: Path
) -> None:
    a = mount_remote(mounter, "a", server.url())
    write(a.mnt / "f", GENUINE)
    proxy = proxy_to(proxies, server)
    b = mount_remote(mounter, "b", proxy.url())
    eventually(lambda: _assert((b.mnt / "f").read_bytes() == GENUINE), "f on b")
    # the server's data as it stands now: what a forked server will go on from
    assert a.unmount() == 0 and b.unmount() == 0
    server.stop()
    backup = tmp_path / "server-backup"
    shutil.copytree(server.data_dir, backup)
    server.start()
    a = mount_remote(mounter, "a", server.url())
    b = mount_remote(mounter, "b", proxy.url())
    write(a.mnt / "g", GENUINE + b"g")
    eventually(lambda: _assert((b.mnt / "g").read_bytes() == GENUINE + b"g"), "g on b")
    # (a attests its head a second later; b checks it: nothing to refuse)
    eventually(lambda: _assert("g" in [p.name for p in b.mnt.iterdir()]), "b still follows")
    assert a.unmount() == 0 and b.unmount() == 0
    assert REFUSED not in a.stderr() + b.stderr()
    server.stop()
    # the fork: a server on the backup (it never had g), which tells b it is up to date
    forked = ServerProc(backup, tmp_path / "forked.out")
    forked.start()
    try:
        fork_proxy = proxy_to(proxies, forked)
        fork_proxy.tamper = Tamper(rebase=True)
        b = mount_remote(mounter, "b", fork_proxy.url())
        c = mount_remote(mounter, "c", forked.url())  # a writer on the forked server
        write(c.mnt / "h", GENUINE + b"h")
        eventually(lambda: refused(b), "the replica refused the fork")
        assert "an attestation of the chain's head" in b.stderr()
        assert (b.mnt / "g").read_bytes() == GENUINE + b"g"  # what b saw stays
        never_forged(b.mnt, GENUINE, GENUINE + b"g", GENUINE + b"h")
        verify_reports(mounter, b)
        assert c.unmount() == 0
    finally:
        forked.stop()
