"""Replicated mounts (docs/adr/0009), end to end: a `wasmer-dfs serve` process on loopback and two
or three `wasmer-dfs mount MNT ws://127.0.0.1:PORT/db/NAME LOG` processes of one chain.

* a file written and closed on A is read back on B; renames, deletes, chmods, links, xattrs
  and truncation propagate, also where B's kernel had the old attributes or names cached;
* a mount started later from an empty log catches up and holds the same tree;
* a server killed (SIGKILL) and restarted loses nothing it confirmed;
* the recovery-mode matrix of the manual, connected and disconnected;
* --temp removes the local replica at unmount, the chain stays on the server;
* the server's data never holds a name or contents in clear;
* --dns-server resolves the server's host name through our DNS client; --ntp-pool stamps
  events with NTP time.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mount.conftest import MOUNT_TIMEOUT, Mounter, MountProc, ServerProc

pytestmark = [pytest.mark.timeout(300)]

SYNC_TIMEOUT = 30.0


def mount_remote(
    mounter: Mounter, name: str, url: str, *args: str, global_args: tuple[str, ...] = ()
) -> MountProc:
    mnt, logdir = mounter.dirs(name)
    mp = mounter.spawn(mnt, None, url, str(logdir), *args, global_args=global_args)
    mp.logdir = logdir
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mp.is_mounted():
        if mp.proc.poll() is not None:
            pytest.fail(f"{name}: mount exited with {mp.proc.returncode}:\n{mp.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: not mounted within {MOUNT_TIMEOUT} s:\n{mp.stderr()}")
        time.sleep(0.02)
    return mp


def eventually(check: Callable[[], object], what: str, timeout: float = SYNC_TIMEOUT) -> None:
    """Retry ``check`` (an assertion or an OSError is "not yet") until it passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s: {exc!r}") from exc
        time.sleep(0.05)


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root``: kind, mode bits and contents' digest (or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                out[rel] = (
                    "file",
                    stat.S_IMODE(st.st_mode),
                    hashlib.sha256(p.read_bytes()).hexdigest(),
                )
    return out


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# --- propagation ---------------------------------------------------------------------------------
def test_changes_on_a_appear_on_b(mounter: Mounter, server: ServerProc) -> None:
    a = mount_remote(mounter, "a", server.url())
    write(a.mnt / "hello.txt", b"hello from A\n")
    (a.mnt / "dir").mkdir()
    write(a.mnt / "dir" / "inner", b"inner")
    b = mount_remote(mounter, "b", server.url())
    assert (b.mnt / "hello.txt").read_bytes() == b"hello from A\n"
    assert (b.mnt / "dir" / "inner").read_bytes() == b"inner"
    # B's kernel now caches these names and attributes (300 s): remote changes must invalidate
    before = (b.mnt / "hello.txt").stat()
    assert not (b.mnt / "later.txt").exists()  # a cached negative entry
    with open(a.mnt / "hello.txt", "ab") as f:
        f.write(b"more\n")
    write(a.mnt / "later.txt", b"created after B looked")
    os.chmod(a.mnt / "dir" / "inner", 0o600)
    os.rename(a.mnt / "dir", a.mnt / "moved")
    os.symlink("hello.txt", a.mnt / "link")
    os.link(a.mnt / "later.txt", a.mnt / "hard")
    os.setxattr(a.mnt / "hello.txt", "user.tag", b"v1")
    eventually(lambda: _same(b.mnt / "hello.txt", b"hello from A\nmore\n"), "an append")
    assert (b.mnt / "hello.txt").stat().st_size == before.st_size + 5
    eventually(lambda: _same(b.mnt / "later.txt", b"created after B looked"), "a new file")
    eventually(lambda: _mode(b.mnt / "moved" / "inner", 0o600), "a chmod and a rename")
    assert not (b.mnt / "dir").exists()
    eventually(lambda: _eq(os.readlink(b.mnt / "link"), "hello.txt"), "a symlink")
    eventually(lambda: _eq((b.mnt / "hard").stat().st_nlink, 2), "a hard link")
    eventually(lambda: _eq(os.getxattr(b.mnt / "hello.txt", "user.tag"), b"v1"), "an xattr")
    # and the other way round, with deletes and truncation
    write(b.mnt / "from-b", b"B was here")
    os.unlink(b.mnt / "later.txt")
    os.truncate(b.mnt / "hello.txt", 5)
    eventually(lambda: _same(a.mnt / "from-b", b"B was here"), "B's file on A")
    eventually(lambda: _gone(a.mnt / "later.txt"), "B's unlink on A")
    eventually(lambda: _same(a.mnt / "hello.txt", b"hello"), "B's truncation on A")
    eventually(lambda: _eq(tree(a.mnt), tree(b.mnt)), "the same tree")


def _same(path: Path, data: bytes) -> None:
    assert path.read_bytes() == data


def _mode(path: Path, mode: int) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == mode


def _eq(a: object, b: object) -> None:
    assert a == b, (a, b)


def _gone(path: Path) -> None:
    assert not path.exists()


def test_a_late_mount_from_an_empty_log_catches_up(mounter: Mounter, server: ServerProc) -> None:
    a = mount_remote(mounter, "a", server.url())
    (a.mnt / "src" / "pkg").mkdir(parents=True)
    for i in range(40):
        write(a.mnt / "src" / "pkg" / f"m{i}.py", f"print({i})\n".encode() * (i + 1))
    write(a.mnt / "big.bin", os.urandom(3 * 1024 * 1024 + 123))
    os.symlink("src/pkg", a.mnt / "pkg")
    b = mount_remote(mounter, "b", server.url())
    write(b.mnt / "from-b", b"b")
    c = mount_remote(mounter, "c", server.url())
    eventually(lambda: _eq(tree(c.mnt), tree(a.mnt)), "C to match A")
    eventually(lambda: _eq(tree(b.mnt), tree(a.mnt)), "B to match A")


def test_a_restarted_replica_resumes(mounter: Mounter, server: ServerProc) -> None:
    a = mount_remote(mounter, "a", server.url())
    b = mount_remote(mounter, "b", server.url())
    write(a.mnt / "one", b"1")
    eventually(lambda: _same(b.mnt / "one", b"1"), "B to see one")
    assert b.unmount() == 0, b.stderr()
    write(a.mnt / "two", b"2")  # while B is away
    b2 = mount_remote(mounter, "b", server.url())
    eventually(lambda: _same(b2.mnt / "two", b"2"), "B to catch up after a restart")
    write(b2.mnt / "three", b"3")
    eventually(lambda: _same(a.mnt / "three", b"3"), "B's new write on A")
    eventually(lambda: _eq(tree(a.mnt), tree(b2.mnt)), "the same tree")


# --- the server ----------------------------------------------------------------------------------
def test_a_killed_server_loses_nothing_it_confirmed(mounter: Mounter, server: ServerProc) -> None:
    a = mount_remote(mounter, "a", server.url(), "--recovery-mode", "readonly-sync")
    files = {f"f{i}": os.urandom(1000 + i * 5000) for i in range(20)}
    for name, data in files.items():
        write(a.mnt / name, data)  # readonly-sync: the close returns once the server confirmed
    server.stop(signal.SIGKILL)
    server.start()
    c = mount_remote(mounter, "c", server.url())
    for name, data in files.items():
        assert (c.mnt / name).read_bytes() == data
    # A reconnects by itself and goes on
    eventually(lambda: write(a.mnt / "after", b"after the restart"), "A writable again")
    eventually(lambda: _same(c.mnt / "after", b"after the restart"), "A's write after the restart")


def test_the_server_never_holds_names_or_contents_in_clear(
    mounter: Mounter, server: ServerProc
) -> None:
    a = mount_remote(mounter, "a", server.url())
    (a.mnt / "secret-directory-name").mkdir()
    write(a.mnt / "secret-directory-name" / "secret-file-name.txt", b"secret-contents-" * 100)
    os.symlink("secret-link-target", a.mnt / "lnk")
    b = mount_remote(mounter, "b", server.url())  # B has it: the server has it all
    assert (b.mnt / "secret-directory-name" / "secret-file-name.txt").exists()
    blob = b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    assert len(blob) > 1600
    for needle in (b"secret-directory-name", b"secret-file-name", b"secret-contents-",
                   b"secret-link-target"):  # fmt: skip
        assert needle not in blob, needle


def test_temp_removes_the_replica_and_the_chain_stays(mounter: Mounter, server: ServerProc) -> None:
    a = mount_remote(mounter, "a", server.url(), "--temp")
    write(a.mnt / "kept", b"on the server")
    assert (a.logdir / "local.log").exists()
    assert a.unmount() == 0, a.stderr()
    assert not (a.logdir / "local.log").exists()
    b = mount_remote(mounter, "b", server.url())
    assert (b.mnt / "kept").read_bytes() == b"on the server"


# --- recovery modes ------------------------------------------------------------------------------
def test_connected_metadata_waits_for_the_server_in_readonly_async(
    mounter: Mounter, server: ServerProc
) -> None:
    a = mount_remote(mounter, "a", server.url())  # readonly-async is the default
    for i in range(5):
        size = server.data_bytes()
        (a.mnt / f"d{i}").mkdir()  # returns once the server confirmed (fsynced) it
        assert server.data_bytes() > size


def test_connected_data_waits_for_the_server_in_readonly_sync(
    mounter: Mounter, server: ServerProc
) -> None:
    a = mount_remote(mounter, "a", server.url(), "--recovery-mode", "readonly-sync")
    for i in range(3):
        size = server.data_bytes()
        write(a.mnt / f"f{i}", os.urandom(512 * 1024))
        assert server.data_bytes() >= size + 512 * 1024


@pytest.mark.parametrize(
    ("mode", "offline_errno"),
    [("async", None), ("readonly-async", errno.EROFS), ("readonly-sync", errno.EROFS),
     ("sync", errno.ENOTCONN)],
)  # fmt: skip
def test_recovery_mode_while_disconnected(
    mounter: Mounter, server: ServerProc, mode: str, offline_errno: int | None
) -> None:
    a = mount_remote(mounter, "a", server.url(), "--recovery-mode", mode)
    write(a.mnt / "before", b"written while connected")
    server.stop()
    if offline_errno is None:
        time.sleep(1.0)  # the mount has seen the server go
        write(a.mnt / "offline", b"written while disconnected")
        (a.mnt / "offline-dir").mkdir()
    else:

        def refused() -> None:
            name = a.mnt / f"probe-{time.monotonic_ns()}"
            with pytest.raises(OSError) as info:
                write(name, b"x")
            assert info.value.errno == offline_errno, info.value
            with pytest.raises(OSError) as info:
                (a.mnt / "before").write_bytes(b"changed")
            assert info.value.errno == offline_errno

        eventually(refused, f"{mode}: writes to fail while disconnected", 20)
        assert (a.mnt / "before").read_bytes() == b"written while connected"  # reads go on
    server.start()
    eventually(lambda: write(a.mnt / "after", b"reconnected"), f"{mode}: writable again", 30)
    b = mount_remote(mounter, "b", server.url())
    eventually(lambda: _same(b.mnt / "after", b"reconnected"), "the write after reconnecting")
    assert (b.mnt / "before").read_bytes() == b"written while connected"
    if offline_errno is None:  # async: what was written offline went up on reconnect
        eventually(lambda: _same(b.mnt / "offline", b"written while disconnected"), "offline")
        assert (b.mnt / "offline-dir").is_dir()
    else:
        assert not any(p.name.startswith("probe-") for p in b.mnt.iterdir())


# --- clock and resolver ------------------------------------------------------------------------
def test_the_servers_host_name_resolves_through_dns_server(
    mounter: Mounter, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import dns_server

    monkeypatch.setitem(dns_server.ZONE, "chains.test", [(dns_server.A, "127.0.0.1")])
    with dns_server.DnsServer() as dns:
        url = f"ws://chains.test:{server.port}/db/named"
        a = mount_remote(mounter, "a", url, global_args=("--dns-server", f"127.0.0.1:{dns.port}"))
        assert any(q.name == "chains.test" for q in dns.queries)
    write(a.mnt / "via-dns", b"ok")
    b = mount_remote(mounter, "b", server.url("named"))
    eventually(lambda: _same(b.mnt / "via-dns", b"ok"), "the write through the named server")


def test_ntp_time_stamps_the_files(mounter: Mounter) -> None:
    from tests.sntp_server import SntpServer

    offset = 3 * 3600
    with SntpServer(offset_ns=offset * 10**9) as ntp:
        mnt, logdir = mounter.dirs("ntp")
        mounter.mount(
            mnt, logdir, global_args=("--ntp-pool", "127.0.0.1", "--ntp-port", str(ntp.port))
        )
        assert ntp.requests
    write(mnt / "stamped", b"x")
    assert abs((mnt / "stamped").stat().st_mtime - (time.time() + offset)) < 60


# --- concurrent offline changes ------------------------------------------------------------------
def test_offline_edits_on_both_sides_lose_nothing(mounter: Mounter, server: ServerProc) -> None:
    a = mount_remote(mounter, "a", server.url(), "--recovery-mode", "async")
    write(a.mnt / "doc.txt", b"the original\n")
    b = mount_remote(mounter, "b", server.url(), "--recovery-mode", "async")
    eventually(lambda: _same(b.mnt / "doc.txt", b"the original\n"), "B to have the doc")
    server.stop()
    time.sleep(1.0)  # both mounts have seen the server go
    write(a.mnt / "doc.txt", b"A's version, written offline\n" * 3)
    write(b.mnt / "doc.txt", b"B's version, written offline\n")
    write(a.mnt / "new.txt", b"created on A")
    write(b.mnt / "new.txt", b"created on B")
    server.start()
    eventually(lambda: _eq(tree(a.mnt), tree(b.mnt)), "A and B to converge", 60)
    names = sorted(p.name for p in a.mnt.iterdir())
    contents = {p.read_bytes() for p in a.mnt.iterdir() if p.name.startswith("doc.txt")}
    assert contents == {b"A's version, written offline\n" * 3, b"B's version, written offline\n"}
    assert len([n for n in names if n.startswith("doc.txt")]) == 2, names
    assert {p.read_bytes() for p in a.mnt.iterdir() if p.name.startswith("new.txt")} == {
        b"created on A",
        b"created on B",
    }
    assert "new.txt" in names and "doc.txt" in names


def test_events_too_far_in_the_future_are_refused_by_the_servers_clock(
    mounter: Mounter, tmp_path: Path
) -> None:
    from tests.sntp_server import SntpServer

    with SntpServer(offset_ns=3600 * 10**9) as ntp:  # an hour ahead of this machine
        ahead = ("--ntp-pool", "127.0.0.1", "--ntp-port", str(ntp.port))
        plain = ServerProc(tmp_path / "plain", tmp_path / "plain.out")
        synced = ServerProc(tmp_path / "synced", tmp_path / "synced.out", ahead)
        for srv in (plain, synced):
            srv.data_dir.mkdir()
            srv.start()
        try:
            # a server on the system clock refuses what a mount an hour ahead stamps
            mnt, logdir = mounter.dirs("early")
            mp = mounter.spawn(mnt, None, plain.url(), str(logdir), global_args=ahead)
            eventually(lambda: _eq("too far in the future" in mp.stderr(), True), "a refusal")
            assert not mp.is_mounted()
            mp.signal(signal.SIGTERM)
            assert mp.wait() != 0
            # a server on the same NTP time accepts it
            a = mount_remote(mounter, "a", synced.url(), global_args=ahead)
            write(a.mnt / "on-time", b"ok")
            b = mount_remote(mounter, "b", synced.url(), global_args=ahead)
            eventually(lambda: _same(b.mnt / "on-time", b"ok"), "the write on the synced server")
        finally:
            for srv in (plain, synced):
                srv.stop()
