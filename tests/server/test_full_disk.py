"""A chain server whose disk fills up (issue 12): ``serve --data-dir`` on a 16 MiB tmpfs. Commits
that do not fit are refused with ``CommitError`` (the connection stays, no traceback in the
server's log), the server stays up, a refused transaction leaves nothing in the chain, and once
space is freed the same connection commits again; after a restart a fresh client gets every
confirmed transaction."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters.ws_client import ChainClient, CommitFailed
from domain.wire import DISK_FULL_REASON, CommitRecord
from tests.net import free_port

from .conftest import LocalChain, Servers, create_chain

if TYPE_CHECKING:
    from tests.tmpfs import Tmpfs

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def start_serve(data_dir: Path, port: int, stderr: Path) -> subprocess.Popen[bytes]:
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "entrypoints.serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(data_dir)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while b"serving chains at" not in stderr.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"serve did not start:\n{stderr.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def content(tx: list[CommitRecord]) -> list[tuple[bytes, bytes | None]]:
    return [(r.meta, r.data) for r in tx]


async def test_a_full_disk_refuses_commits_and_the_server_stays_up(
    small_tmpfs: Tmpfs, tmp_path: Path
) -> None:
    data_dir = small_tmpfs.path / "data"
    stderr = tmp_path / "serve.stderr"
    port = free_port()
    url = f"ws://127.0.0.1:{port}/db/fs"
    chain = LocalChain()
    proc = start_serve(data_dir, port, stderr)
    try:
        a = await ChainClient.connect(url, header=chain.header)
        await create_chain(a, chain)
        confirmed: list[list[CommitRecord]] = []
        for i in range(5):
            tx = chain.write(os.urandom(10_000 + i))
            await a.commit(tx, timeout=10)
            confirmed.append(tx)

        filler = small_tmpfs.fill("filler", leave=MiB)
        refused_tx: list[CommitRecord] | None = None
        for i in range(40):
            tx = chain.write(os.urandom(200_000 + i))
            try:
                await a.commit(tx, timeout=10)
            except CommitFailed as exc:
                assert "disk is full" in exc.reason, exc.reason
                refused_tx = tx
                break
            confirmed.append(tx)
        assert refused_tx is not None, "the server never reported a full disk"
        assert proc.poll() is None, stderr.read_text()
        size_full = (data_dir / "fs.log").stat().st_size

        # still full: refused again, on the same connection, and nothing of it stays
        with pytest.raises(CommitFailed, match="disk is full"):
            await a.commit(refused_tx, timeout=10)
        assert (data_dir / "fs.log").stat().st_size == size_full

        filler.unlink()
        await a.commit(refused_tx, timeout=10)  # the same transaction, once there is room
        confirmed.append(refused_tx)
        tx = chain.write(b"after the disk had room again")
        await a.commit(tx, timeout=10)
        confirmed.append(tx)
        await a.close()
        assert await asyncio.to_thread(stop, proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr.read_text(errors="replace")
    assert "Traceback" not in log, log
    assert "a commit was refused" in log  # the operator sees why

    proc = start_serve(data_dir, port, tmp_path / "serve-2.stderr")
    try:
        b = await ChainClient.connect(url)
        await b.subscribe(0)
        records, _ = await b.history(timeout=30)
        served = [(r.meta, r.data) for r in records]
        for tx in confirmed:
            want = content(tx)
            at = served.index(want[0])
            assert served[at : at + len(want)] == want, "a confirmed transaction is not served"
        assert served.count(content(refused_tx)[0]) == 1  # stored once, after the retry
        await b.close()
        assert await asyncio.to_thread(stop, proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_chain_is_not_created_on_a_full_disk_and_is_once_there_is_room(
    small_tmpfs: Tmpfs, tmp_path: Path
) -> None:
    data_dir = small_tmpfs.path / "data"
    data_dir.mkdir()
    stderr = tmp_path / "serve.stderr"
    port = free_port()
    url = f"ws://127.0.0.1:{port}/db/fs"
    chain = LocalChain()
    proc = start_serve(data_dir, port, stderr)
    try:
        filler = small_tmpfs.fill("filler", leave=0)
        a = await ChainClient.connect(url, header=chain.header)
        genesis = chain.genesis()
        with pytest.raises(CommitFailed, match="disk is full"):
            await a.commit(genesis[0], timeout=10)
        assert not (data_dir / "fs.log").exists(), "a chain without its genesis was left"
        assert proc.poll() is None, stderr.read_text()
        filler.unlink()
        for tx in genesis:
            await a.commit(tx, timeout=10)
        await a.commit(chain.write(b"first"), timeout=10)
        await a.close()
        assert await asyncio.to_thread(stop, proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr.read_text(errors="replace")
    assert "Traceback" not in log, log


async def test_a_replica_keeps_its_changes_while_the_servers_disk_is_full(
    small_tmpfs: Tmpfs, tmp_path: Path
) -> None:
    """A full server disk is a refusal for now, not for good: the replica's changes stay
    (not counted as rejected) and go up once the server has room."""
    from tests.replicas import Rig, settled

    servers = Servers(small_tmpfs.path / "server")
    try:
        server = await servers.start()
        rig = Rig(tmp_path / "replicas", f"{server.url}/db/svc")
        rig.tmp.mkdir()
        try:
            a = await rig.replica("a")
            a.write(b"before", b"b" * 1000)
            await settled([a])
            filler = small_tmpfs.fill("filler", leave=64 * 1024)
            data = os.urandom(300_000)
            a.write(b"while-full", data)
            async with asyncio.timeout(30):
                while DISK_FULL_REASON not in a.service.state.last_error:
                    a.fs.flush_all()
                    a.mounted.session.commit()
                    await asyncio.sleep(0.05)
            assert a.service.state.stats.rejected == 0
            assert a.read(b"while-full") == data
            filler.unlink()
            await settled([a], timeout=60)
            assert a.service.state.stats.rejected == 0
            b = await rig.replica("b")
            assert b.read(b"while-full") == data
            assert b.read(b"before") == b"b" * 1000
        finally:
            for r in rig.replicas:
                with contextlib.suppress(Exception):
                    await r.stop()
    finally:
        await servers.stop_all()
