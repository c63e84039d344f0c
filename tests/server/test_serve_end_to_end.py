"""A mount's encrypted chain uploaded through the server: the server's files never hold a name or
a byte of content, and the log it keeps replays into the same tree. And `serve` as a process:
SIGTERM/SIGINT stop it cleanly (exit 0) and a restart keeps everything it confirmed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.clock import SystemClock
from adapters.memory.log import MemoryRedoLogFactory
from adapters.redolog import FileRedoLogFactory
from adapters.ws_client import ChainClient
from adapters.ws_server import WsChainServer
from application.mount import Mounted, MountRequest, MountService
from application.session import Formats
from application.wire_tx import header_of, split_transactions
from domain.events import LocalSeal
from domain.fs.model import ROOT_INO
from tests.fakes import FAST_KDF, FastCrypto
from tests.net import free_port

from .conftest import Clients, LocalChain, Servers, create_chain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

NAME = b"very-secret-file-name.txt"
DIR_NAME = b"classified-directory"
LINK_TARGET = b"/hidden/link/target/path"
CONTENT = b"top secret contents, never on the server in clear. " * 200


def make_tree(passcode: bytes | None) -> Mounted:
    logs = MemoryRedoLogFactory()
    service = MountService(logs, FastCrypto(), SystemClock())
    request = MountRequest(
        chain="local", passcode=passcode, formats=Formats(), uid=1000, gid=1000, kdf=FAST_KDF
    )
    mounted = service.open(request)
    fs = mounted.fs
    fh, _ = fs.create(ROOT_INO, NAME, 0o644, 1000, 1000)
    fs.write(fh, 0, CONTENT)
    fs.release(fh)
    d = fs.mkdir(ROOT_INO, DIR_NAME, 0o755, 1000, 1000)
    fs.symlink(d.ino, b"pointer", LINK_TARGET, 1000, 1000)
    fs.sync_all()
    return mounted


async def upload(client: ChainClient, mounted: Mounted) -> int:
    """Every transaction of the mount's log, locally sealed ones re-sealed with a signature."""
    session = mounted.session
    signing = session._signing
    from application.wire_tx import digest_of, reseal
    from domain.events import Signature, Timestamp

    end = 0
    for tx in split_transactions(session.log):
        if header_of(tx[-1]).find(LocalSeal) is not None:
            assert signing is not None
            pk_hash, secret = signing
            ts = Timestamp(session.clock.now_ms())
            digest = digest_of(session.header.chain_id, tx[:-1], [ts])
            sig = Signature(pk_hash, digest, session.crypto.sign(secret, digest))
            tx = reseal(tx, [sig, ts])
        end = (await client.commit(tx, timeout=10)).end
    return end


def server_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


async def test_the_server_never_holds_names_or_contents(
    servers: Servers, clients: Clients, tmp_path: Path
) -> None:
    server = await servers.start()
    mounted = make_tree(b"correct horse")
    client = await clients.connect(f"{server.url}/db/fs", header=mounted.session.header.encode())
    end = await upload(client, mounted)
    assert end > 0
    mounted.close()
    await client.close()
    await server.close()

    blob = server_bytes(servers.data_dir)
    assert len(blob) > len(CONTENT)
    for secret in (NAME, DIR_NAME, b"pointer", LINK_TARGET, CONTENT[:24], b"correct horse"):
        assert secret not in blob, f"{secret!r} is on the server in clear"

    # the server's log is a complete, valid chain: a replica with the passcode replays it
    replica = tmp_path / "replica"
    replica.mkdir()
    shutil.copy(servers.data_dir / "fs.log", replica / "local.log")
    service = MountService(FileRedoLogFactory(replica), FastCrypto(), SystemClock())
    again = service.open(
        MountRequest(
            chain="local",
            passcode=b"correct horse",
            formats=Formats(),
            uid=0,
            gid=0,
            read_only=True,
            kdf=FAST_KDF,
            use_checkpoint=False,
        )
    )
    try:
        fs = again.fs
        ino = fs.lookup(ROOT_INO, NAME).ino
        fh = fs.open(ino)
        assert fs.read(fh, 0, len(CONTENT) + 10) == CONTENT
        fs.release(fh)
        d = fs.lookup(ROOT_INO, DIR_NAME).ino
        assert fs.readlink(fs.lookup(d, b"pointer").ino) == LINK_TARGET
    finally:
        again.close()


async def test_the_grep_would_find_an_unencrypted_chain(servers: Servers, clients: Clients) -> None:
    """The control of the test above: a --no-auth chain's names do show in the server's log."""
    server = await servers.start()
    mounted = make_tree(None)
    client = await clients.connect(f"{server.url}/db/plain", header=mounted.session.header.encode())
    await upload(client, mounted)
    mounted.close()
    blob = server_bytes(servers.data_dir)
    assert NAME in blob and CONTENT[:24] in blob


# --- the process ------------------------------------------------------------------------------
def start_serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir)],
        cwd=Path(__file__).resolve().parents[2],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    for _ in range(200):
        line = proc.stderr.readline()
        if b"serving chains at" in line or not line:
            break
    assert proc.poll() is None, "the server did not start"
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_stops_cleanly_on_signals_and_keeps_what_it_confirmed(
    tmp_path: Path, sig: int
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    proc = start_serve(data_dir, port)
    try:
        chain = LocalChain()
        url = f"ws://127.0.0.1:{port}/db/fs"
        a = await ChainClient.connect(url, header=chain.header)
        await create_chain(a, chain)
        confirmed = [await a.commit(chain.write(b"%d" % i), timeout=10) for i in range(5)]
        # a subscriber sees the shutdown as a close with 1001, not as an error
        b = await ChainClient.connect(url)
        await b.subscribe(0)
        await b.history(timeout=10)
        code = await asyncio.to_thread(stop, proc, sig)
        assert code == 0
        await b.wait_closed(10)
        assert b.ws.close_code == 1001
        await a.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    assert b"Traceback" not in proc.stderr.read()

    proc = start_serve(data_dir, port)
    try:
        c = await ChainClient.connect(url, header=chain.header)
        assert c.welcome.position == confirmed[-1].end
        await c.commit(chain.write(b"after restart"), timeout=10)
        await c.close()
        assert await asyncio.to_thread(stop, proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.serve", "--listen", "nowhere", "--data-dir",
         str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert b"HOST:PORT" in result.stderr


async def test_server_close_is_idempotent_and_stops_listening(servers: Servers) -> None:
    server: WsChainServer = await servers.start()
    port = server.port
    await server.close()
    await server.close()
    with pytest.raises(OSError):
        await ChainClient.connect(f"ws://127.0.0.1:{port}/db/fs", open_timeout=2)


def test_the_cli_registration_line_gives_a_serve_command() -> None:
    import typer
    from typer.testing import CliRunner

    from entrypoints.serve import serve

    app = typer.Typer(rich_markup_mode=None)

    @app.callback()
    def main() -> None:
        """A CLI with several commands, like entrypoints/cli.py."""

    app.command("serve")(serve)  # the line entrypoints/cli.py adds
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--listen", "--data-dir", "--clock-tolerance", "--max-frame", "--read-only"):
        assert option in result.output
