"""Wire encryption end to end (docs/adr/0013): `wasmer-dfs serve` and two `--no-auth` mounts of one
chain (so file contents travel as they are inside the protocol's frames), captured with tcpdump
on loopback, once without and once with `--wire-encryption 256`; a mount offering less than the
server requires, or a plain one, is refused; a server whose key changed is refused by a new and
by an existing replica, naming the known_servers line to delete.

Only frames from the server to a client are compared: a websocket client masks its frames
(RFC 6455), so they are not legible on the wire even without wire encryption. The chain name in
the URL path (the HTTP upgrade request) is outside the encrypted channel, as a host name is
outside TLS; the test looks for it where the protocol carries it (msgpack, in Welcome).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.mount.conftest import MOUNT_TIMEOUT, Mounter, MountProc, ServerProc
from tests.mount.test_replication import eventually, write

pytestmark = [pytest.mark.timeout(300)]

CONTENT = b"wire-encryption-plaintext-canary 0123456789 " * 40
FILE_NAME = "canary-file-name.txt"
CHAIN = "wirecanarychain"


def _tcpdump_unavailable() -> str | None:
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed (scripts/install.sh installs it)"
    if os.geteuid() != 0:
        return "tcpdump needs root to capture on loopback"
    return None


class Capture:
    """tcpdump on loopback for one TCP port, writing a pcap; stopped by its pid."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self.err = path.with_suffix(".err")
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-n", "-w", str(path),
                 f"tcp port {port}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while b"listening on" not in self.err.read_bytes():
            if self.proc.poll() is not None:
                pytest.skip(f"tcpdump cannot capture here: {self.err.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"tcpdump did not start: {self.err.read_text()}")
            time.sleep(0.05)

    def stop(self) -> bytes:
        """The capture, once tcpdump has written every packet it was given (the file stops
        growing), then tcpdump stopped."""
        size, quiet_since = -1, time.monotonic()
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            now = self.path.stat().st_size if self.path.exists() else 0
            if now != size:
                size, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since > 0.5:
                break
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.path.read_bytes() if self.path.exists() else b""


@pytest.fixture
def captures() -> Iterator[list[Capture]]:
    started: list[Capture] = []
    try:
        yield started
    finally:
        for cap in started:
            cap.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    try:
        yield started
    finally:
        for srv in started:
            srv.stop()


def start_server(
    tmp_path: Path, servers: list[ServerProc], name: str, *global_args: str
) -> ServerProc:
    data = tmp_path / name
    data.mkdir(exist_ok=True)
    srv = ServerProc(data, tmp_path / f"{name}.out", tuple(global_args))
    srv.start()
    servers.append(srv)
    return srv


def spawn_remote(
    mounter: Mounter, name: str, url: str, config: Path, *global_args: str
) -> MountProc:
    mnt, logdir = mounter.dirs(name)
    mp = mounter.spawn(
        mnt, None, url, str(logdir), passcode=None, global_args=("--no-auth", *global_args),
        env={"XDG_CONFIG_HOME": str(config)},
    )  # fmt: skip
    mp.logdir = logdir
    return mp


def mount_remote(
    mounter: Mounter, name: str, url: str, config: Path, *global_args: str
) -> MountProc:
    mp = spawn_remote(mounter, name, url, config, *global_args)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mp.is_mounted():
        if mp.proc.poll() is not None:
            pytest.fail(f"{name}: mount exited with {mp.proc.returncode}:\n{mp.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: not mounted within {MOUNT_TIMEOUT} s:\n{mp.stderr()}")
        time.sleep(0.02)
    return mp


def failed_mount(
    mounter: Mounter, name: str, url: str, config: Path, *global_args: str
) -> tuple[int | None, str]:
    mp = spawn_remote(mounter, name, url, config, *global_args)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while mp.proc.poll() is None:
        assert not mp.is_mounted(), f"{name} mounted:\n{mp.stderr()}"
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: neither failed nor mounted:\n{mp.stderr()}")
        time.sleep(0.05)
    return mp.proc.returncode, mp.stderr()


def run_and_capture(
    tmp_path: Path,
    mounter: Mounter,
    servers: list[ServerProc],
    captures: list[Capture],
    label: str,
    *global_args: str,
) -> bytes:
    """A writes the canary file, B (connected before) receives it; the capture of it all."""
    srv = start_server(tmp_path, servers, f"server-{label}", *global_args)
    cap = Capture(srv.port, tmp_path / f"{label}.pcap")
    captures.append(cap)
    config = tmp_path / f"config-{label}"
    url = srv.url(CHAIN)
    a = mount_remote(mounter, f"a-{label}", url, config, *global_args)
    b = mount_remote(mounter, f"b-{label}", url, config, *global_args)
    write(a.mnt / FILE_NAME, CONTENT)
    eventually(lambda: _same(b.mnt / FILE_NAME), f"{label}: the file on B")
    for mp in (a, b):
        assert mp.unmount() == 0, mp.stderr()
    srv.stop()
    return cap.stop()


def _pack(value: str) -> bytes:
    return msgspec.msgpack.encode(value)


def _same(path: Path) -> None:
    assert path.read_bytes() == CONTENT


# what the protocol carries in its frames from the server: the contents, the file's name (a
# --no-auth chain's metadata), the chain name as msgpack in Welcome, message tags
MARKERS = {
    "file contents": CONTENT[:64],
    "file name": FILE_NAME.encode(),
    "chain name in Welcome": _pack("chain") + _pack(CHAIN),
    "Welcome tag": _pack("welcome"),
    "EndOfHistory tag": _pack("end-of-history"),
    "Events tag": _pack("events"),
}


def test_a_capture_of_an_encrypted_mount_holds_none_of_the_plain_frames(
    tmp_path: Path, mounter: Mounter, servers: list[ServerProc], captures: list[Capture]
) -> None:
    reason = _tcpdump_unavailable()
    if reason is not None:
        pytest.skip(reason)
    plain = run_and_capture(tmp_path, mounter, servers, captures, "plain")
    secure = run_and_capture(
        tmp_path, mounter, servers, captures, "secure", "--wire-encryption", "256"
    )
    for what, marker in MARKERS.items():
        assert marker in plain, f"the plain capture should show the {what}"
        assert marker not in secure, f"the encrypted capture shows the {what}"
    assert len(secure) > len(CONTENT)  # the encrypted run did carry the file
    assert _pack("secure-accept") in secure  # and it was the encrypted protocol


def test_weaker_and_plain_mounts_are_refused_by_a_server_that_requires_256(
    tmp_path: Path, mounter: Mounter, servers: list[ServerProc]
) -> None:
    srv = start_server(tmp_path, servers, "server", "--wire-encryption", "256")
    config = tmp_path / "config"
    rc, err = failed_mount(mounter, "weak", srv.url(CHAIN), config, "--wire-encryption", "128")
    assert rc == 3, err
    assert "refused wire encryption 128 (ML-KEM-512)" in err and "at least 256 bits" in err
    assert "Traceback" not in err
    rc, err = failed_mount(mounter, "plain", srv.url(CHAIN), config)
    assert rc == 3, err
    assert "requires wire encryption (at least 256 bits)" in err and "Traceback" not in err
    ok = mount_remote(mounter, "ok", srv.url(CHAIN), config, "--wire-encryption", "256")
    write(ok.mnt / "f", b"x")
    assert ok.unmount() == 0, ok.stderr()


def test_a_server_whose_key_changed_is_refused_naming_the_line(
    tmp_path: Path, mounter: Mounter, servers: list[ServerProc]
) -> None:
    srv = start_server(tmp_path, servers, "server")
    config = tmp_path / "config"
    a = mount_remote(mounter, "a", srv.url(CHAIN), config, "--wire-encryption", "192")
    write(a.mnt / "f", b"before")
    assert a.unmount() == 0, a.stderr()
    known = config / "wasmer-dfs" / "known_servers"
    assert known.read_text().startswith(f"127.0.0.1:{srv.port} 192 ")
    srv.stop()
    shutil.rmtree(srv.data_dir / "wire-keys")  # the server gets new keys at its next start
    srv.start()
    for name in ("a", "new"):  # an existing replica and a new one
        rc, err = failed_mount(mounter, name, srv.url(CHAIN), config, "--wire-encryption", "192")
        assert rc == 3, err
        assert "different wire encryption key" in err and f"delete line 1 of {known}" in err
        assert "Traceback" not in err
    known.write_text("")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(tmp_path / "new-log")
    b = mount_remote(mounter, "new", srv.url(CHAIN), config, "--wire-encryption", "192")
    eventually(lambda: (b.mnt / "f").read_bytes() == b"before" or _fail(), "the file on B")
    assert b.unmount() == 0, b.stderr()


def _fail() -> None:
    raise AssertionError("not yet")
