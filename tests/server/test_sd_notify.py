"""systemd readiness (adapters/sd_notify.py): the datagram reaches a path or an abstract socket,
nothing is sent without $NOTIFY_SOCKET, and `wasmer-dfs serve` says READY=1 once it listens
(what `Type=notify` in wasmer-dfs-serve.service waits for) and STOPPING=1 when it stops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.sd_notify import notify
from tests.net import free_port


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def test_notify_reaches_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=x"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"wasmer-dfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_a_socket_sends_nothing(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def _wasmer_dfs() -> str:
    exe = Path(sys.executable).parent / "wasmer-dfs"
    if not exe.exists():
        pytest.skip("the wasmer-dfs console script is not installed")
    return str(exe)


@pytest.mark.timeout(60)
def test_serve_says_ready_once_it_listens(
    tmp_path: Path, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": path}
    with open(tmp_path / "serve.out", "wb") as out:
        proc = subprocess.Popen(
            [_wasmer_dfs(), "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(tmp_path / "data")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        try:
            message = sock.recv(4096)
        except TimeoutError:
            pytest.fail(f"no READY=1 within 30 s: {(tmp_path / 'serve.out').read_text()}")
        assert message.split(b"\n")[0] == b"READY=1"
        # ready means serving: the port accepts a connection at once
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
