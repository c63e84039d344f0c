"""Crashes instead of errors (issue 12, item 6): a mount never dies with SIGSEGV.

* On a pyfuse3 without wasmer-dfs's patch (the plain PyPI build, or another API level) every
  kind of mount is refused at start with a message that names the fix (exit 4), before it
  connects, creates its log directory or mounts. The plain build is imitated by a fake
  ``pyfuse3`` package first on PYTHONPATH (the real plain build made a remote mount die with
  SIGSEGV as it started: pyfuse3.close() on a session that init() never created).
* A new replica stopped by SIGTERM or SIGINT while it waits for its first sync (nothing listens at
  the server's address; or the server answered the header but the sync never finishes) exits 5
  with a message, no traceback and no mount left (it died with SIGSEGV, for the same reason).
* A local mount stopped by SIGTERM or SIGINT at any moment of its start, or while mounted, exits
  0 (it was mounted and unmounted) or 5 (stopped before it mounted), never by the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, MountProc, fuse_mounts_under

pytestmark = [pytest.mark.timeout(120)]

STOPPED = 5  # the CLI's exit code for a mount stopped before it was mounted
CANNOT_MOUNT = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_clean(rc: int | None, stderr: str) -> None:
    assert rc is not None, f"still running:\n{stderr}"
    assert rc not in (139, -signal.SIGSEGV), f"segmentation fault:\n{stderr}"
    assert rc >= 0, f"killed by signal {-rc}:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "Fatal Python error" not in stderr, stderr


# --- a pyfuse3 without the patch ------------------------------------------------------------------
FAKES = {
    # the plain PyPI build: no marker, none of the patch's operations
    "plain": "class Operations:\n    pass\n",
    # an older patch
    "level 1": "WASMER_DFS_PATCH = 1\nclass Operations:\n    pass\nclass LockInfo:\n    pass\n",
    # the marker without the operations (a broken build)
    "broken": "WASMER_DFS_PATCH = 2\nclass Operations:\n    pass\n",
}
EXPECTED = {
    "plain": "without wasmer-dfs's patch (no pyfuse3.WASMER_DFS_PATCH)",
    "level 1": "at API level 1, this wasmer-dfs needs level 2",
    "broken": "lacks getlk, setlk, flock",
}


@pytest.mark.parametrize("kind", sorted(FAKES))
@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_a_pyfuse3_without_the_patch_is_refused_before_anything_starts(
    mounter: Mounter, tmp_path: Path, kind: str, remote: bool
) -> None:
    fake = tmp_path / "fake-site" / "pyfuse3"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKES[kind])
    (fake / "asyncio.py").write_text("def enable():\n    pass\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    logdir = tmp_path / "log-never-created"
    # remote: nothing listens there; a check after the first connection attempt would retry
    # for ever (and time out here)
    where = [f"ws://127.0.0.1:{free_port()}/db/fs"] if remote else []
    r = mounter.cli(
        "mount", str(mnt), *where, str(logdir), "--passcode", "pw",
        env={"PYTHONPATH": str(fake.parent)}, timeout=30,
    )  # fmt: skip
    assert_clean(r.returncode, r.stderr)
    assert r.returncode == CANNOT_MOUNT, r.stderr
    assert EXPECTED[kind] in r.stderr
    assert "bash scripts/install.sh" in r.stderr
    assert str(fake) in r.stderr  # which pyfuse3 it is
    assert not logdir.exists(), "the log directory was created before the check"
    assert not os.path.ismount(mnt)


def test_the_installed_pyfuse3_passes_the_check() -> None:
    from adapters.fuse_binding import check_pyfuse3

    check_pyfuse3()  # the mount tier runs on it; a failure here says why every mount fails


# --- a new replica stopped while it waits for its first sync ------------------------------------
class HeaderOnlyProxy:
    """Forwards the first connection (the header a new replica asks for) to ``target``; later
    connections (replication) are accepted and never answered: the sync never finishes."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted += 1
            if self.accepted == 1:
                up = socket.create_connection(("127.0.0.1", self.target))
                self.conns.append(up)
                for a, b in ((conn, up), (up, conn)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for s in (self.sock, *self.conns):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def stalled_server(tmp_path: Path) -> Iterator[HeaderOnlyProxy]:
    """A real `wasmer-dfs serve` behind a HeaderOnlyProxy; the server is stopped by its pid."""
    from tests.mount.conftest import ServerProc

    (tmp_path / "server").mkdir()
    srv = ServerProc(tmp_path / "server", tmp_path / "server.out")
    srv.start()
    proxy = HeaderOnlyProxy(srv.port)
    try:
        yield proxy
    finally:
        proxy.close()
        srv.stop()


def wait_until(check: object, what: str, mp: MountProc, timeout: float = 30.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if mp.proc.poll() is not None:
            pytest.fail(f"exited with {mp.proc.returncode} before {what}:\n{mp.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}:\n{mp.stderr()}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_new_replica_stopped_while_nothing_answers_exits_cleanly(
    mounter: Mounter, tmp_path: Path, sig: signal.Signals
) -> None:
    mnt, logdir = mounter.dirs("replica")
    url = f"ws://127.0.0.1:{free_port()}/db/fs"  # nothing listens
    mp = mounter.spawn(mnt, None, url, str(logdir))
    wait_until(lambda: "cannot reach" in mp.stderr(), "the first attempt to reach the server", mp)
    mp.signal(sig)
    rc = mp.wait()
    assert_clean(rc, mp.stderr())
    assert rc == STOPPED, mp.stderr()
    assert f"stopped by {sig.name} before the file system was mounted" in mp.stderr()
    assert not mp.in_proc_mounts()
    assert fuse_mounts_under(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_new_replica_stopped_before_its_first_sync_finishes_exits_cleanly(
    mounter: Mounter, tmp_path: Path, stalled_server: HeaderOnlyProxy, sig: signal.Signals
) -> None:
    mnt, logdir = mounter.dirs("replica")
    url = f"ws://127.0.0.1:{stalled_server.port}/db/fs"
    mp = mounter.spawn(mnt, None, url, str(logdir))
    # the header came through; replication's connection is held: it waits for its first sync
    wait_until(lambda: stalled_server.accepted >= 2, "replication's connection", mp)
    time.sleep(0.3)
    mp.signal(sig)
    rc = mp.wait()
    assert_clean(rc, mp.stderr())
    assert rc == STOPPED, mp.stderr()
    assert f"stopped before the replica caught up with {url}" in mp.stderr()
    assert not mp.in_proc_mounts()
    assert fuse_mounts_under(tmp_path) == []


# --- a local mount stopped at any moment ---------------------------------------------------------
def test_a_local_mount_stopped_at_any_moment_exits_cleanly(
    mounter: Mounter, tmp_path: Path
) -> None:
    mnt, logdir = mounter.dirs("local")
    first = mounter.mount(mnt, logdir)  # the chain exists: later starts only open it
    assert first.unmount() == 0
    outcomes = []
    # seconds after the start (None: once mounted); the first ones fall while the interpreter
    # imports. Before it reaches its first import (~50 ms) a signal still has its default action.
    moments: list[float | None] = [0.1, 0.2, 0.35, 0.6, 0.9, 1.2, None, None]
    start = time.monotonic()
    for i, delay in enumerate(moments):
        sig = (signal.SIGTERM, signal.SIGINT)[i % 2]
        mp = mounter.spawn(mnt, logdir)
        if delay is None:
            wait_until(mp.is_mounted, "the mount", mp)
        else:
            time.sleep(delay)
        mp.signal(sig)
        rc = mp.wait()
        err = mp.stderr()
        assert_clean(rc, err)
        if rc == 0:
            assert f"unmounted {mnt}" in err
        else:
            assert rc == STOPPED, err
            assert any(
                said in err
                for said in (
                    f"stopped by {sig.name} while starting",  # still importing
                    f"stopped by {sig.name} before the file system was mounted",
                    "was not mounted",
                )
            ), err
        assert delay is not None or rc == 0, f"stopped while mounted: exit {rc}\n{err}"
        assert not mp.in_proc_mounts(), f"{mnt} left mounted after {sig.name} at {delay}"
        outcomes.append(rc)
    assert time.monotonic() - start < 60
    # the log survived every stop: it mounts and serves
    again = mounter.mount(mnt, logdir)
    (again.mnt / "after").write_bytes(b"ok")
    assert again.unmount() == 0
    assert STOPPED in outcomes and 0 in outcomes, outcomes  # both kinds of moment were hit
