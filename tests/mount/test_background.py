"""Living without a terminal (issue 19): secrets from --passfile / --extpass, `mount
--background` returning once the file system is usable (or failing with the mount's own error),
its logs in --log FILE, and `wasmer-dfs umount` waiting for the daemon to write out and exit.

Every daemon a test starts is found by its pid (the record it writes) and, whatever happens,
unmounted with fusermount3 and stopped by that pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints.daemon import RECORD_NAME
from entrypoints.unmounting import running

from .conftest import (
    EXIT_TIMEOUT,
    MOUNT_TIMEOUT,
    Mounter,
    ServerProc,
    fuse_mounts_under,
    wasmer_dfs_exe,
)

PASSCODE = "correct horse battery staple"


class Daemons:
    """`wasmer-dfs mount --background` runs; teardown unmounts and stops each daemon by pid."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.logdirs: list[Path] = []

    def run(self, *args: str, timeout: float = MOUNT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "WASMER_DFS_PASSCODE"}
        return subprocess.run(
            [wasmer_dfs_exe(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
            env=env, cwd=self.tmp_path, timeout=timeout, check=False,
        )  # fmt: skip

    def mount(self, mnt: Path, logdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        self.logdirs.append(logdir)
        return self.run("mount", "--background", str(mnt), str(logdir), *args)

    @staticmethod
    def record(logdir: Path) -> dict[str, object]:
        value = json.loads((logdir / RECORD_NAME).read_text())
        assert isinstance(value, dict)
        return value

    def teardown(self) -> None:
        for point in fuse_mounts_under(self.tmp_path):
            subprocess.run(["fusermount3", "-u", point], capture_output=True, check=False)
        for logdir in self.logdirs:
            with contextlib.suppress(OSError, ValueError):
                pid = self.record(logdir)["pid"]
                assert isinstance(pid, int)
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    deadline = time.monotonic() + EXIT_TIMEOUT
                    while running(pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if not running(pid):
                        break
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(tmp_path)
    try:
        yield d
    finally:
        d.teardown()


def private_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    os.chmod(path, mode)
    return path


# --- secrets without a terminal -------------------------------------------------------------------
def test_extpass_mounts_and_passfile_opens_the_same_chain(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--extpass", "echo secret", passcode=None)
    (mnt / "f").write_text("kept")
    assert mp.unmount() == 0, mp.stderr()
    passfile = private_file(mounter.tmp_path / "pass", "secret\n")
    mp = mounter.mount(mnt, logdir, "--passfile", str(passfile), passcode=None)
    assert (mnt / "f").read_text() == "kept"
    assert mp.unmount() == 0, mp.stderr()
    # and a passfile with another passcode is the wrong one
    other = private_file(mounter.tmp_path / "other", "not the secret\n")
    out = mounter.attempt(mnt, logdir, "--passfile", str(other), passcode=None)
    assert out.returncode == 3 and not out.mounted, out.stderr
    assert "wrong passcode" in out.stderr


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_passfile_others_may_read_is_refused(mounter: Mounter, mode: int) -> None:
    mnt, logdir = mounter.dirs()
    passfile = private_file(mounter.tmp_path / "pass", "secret\n", mode)
    out = mounter.attempt(mnt, logdir, "--passfile", str(passfile), passcode=None)
    assert out.returncode == 2 and not out.mounted, out.stderr
    assert f"{passfile} is readable or writable by its group or others" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (logdir / "local.log").exists()  # refused before anything was created


def test_two_secret_sources_are_refused(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    out = mounter.attempt(mnt, logdir, "--extpass", "echo a")  # plus the fixture's --passcode
    assert out.returncode == 2 and not out.mounted
    assert "not --passcode and --extpass" in out.stderr


def test_a_failing_extpass_is_refused(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    out = mounter.attempt(mnt, logdir, "--extpass", "false", passcode=None)
    assert out.returncode == 2 and not out.mounted
    assert "the extpass command 'false' exited with 1" in out.stderr


# --- background mode and umount -------------------------------------------------------------------
def test_background_returns_once_usable_and_umount_waits_for_the_daemon(
    tmp_path: Path, mounter: Mounter, daemons: Daemons
) -> None:
    mnt, logdir = mounter.dirs()
    log = tmp_path / "daemon.log"
    r = daemons.mount(mnt, logdir, "--passcode", PASSCODE, "--log", str(log))
    assert r.returncode == 0, r.stderr
    assert "running in the background" in r.stderr and str(log) in r.stderr
    assert os.path.ismount(mnt)  # mounted when the command returned, not later
    (mnt / "hello.txt").write_text("from the background")
    record = daemons.record(logdir)
    pid = record["pid"]
    assert isinstance(pid, int) and running(pid) and record["mountpoint"] == str(mnt)
    assert "mounted encrypted file system at" in log.read_text()

    u = daemons.run("umount", str(mnt))
    assert u.returncode == 0, u.stderr
    assert f"the mount process (pid {pid}) finished" in u.stderr
    assert not os.path.ismount(mnt)
    assert not running(pid)  # umount returned after the daemon exited
    assert daemons.record(logdir)["running"] is False
    assert f"unmounted {mnt}" in log.read_text()  # the daemon's last line, in its log

    # what was written is there at the next mount
    mp = mounter.mount(mnt, logdir)
    assert (mnt / "hello.txt").read_text() == "from the background"
    assert mp.unmount() == 0


def test_background_with_a_wrong_passcode_exits_with_the_error(
    mounter: Mounter, daemons: Daemons
) -> None:
    mnt, logdir = mounter.dirs()
    mounter.mount(mnt, logdir).unmount()  # the chain exists
    started = time.monotonic()
    r = daemons.mount(mnt, logdir, "--passcode", "not the passcode")
    assert r.returncode == 3, r.stderr
    assert "wrong passcode" in r.stderr
    assert "running in the background" not in r.stderr
    assert not os.path.ismount(mnt)
    assert time.monotonic() - started < MOUNT_TIMEOUT


def test_background_bad_usage_fails_at_once(mounter: Mounter, daemons: Daemons) -> None:
    mnt, logdir = mounter.dirs()
    (mnt / "occupied").write_text("x")
    r = daemons.mount(mnt, logdir, "--passcode", PASSCODE)
    assert r.returncode == 2 and "is not empty" in r.stderr
    assert not os.path.ismount(mnt)


def test_umount_of_what_is_not_a_wasmer_dfs_mount(tmp_path: Path, daemons: Daemons) -> None:
    r = daemons.run("umount", str(tmp_path))
    assert r.returncode == 2 and "is not mounted" in r.stderr
    r = daemons.run("umount", "/proc")
    assert r.returncode == 2 and "is a proc mount, not a wasmer-dfs one" in r.stderr


def test_umount_of_a_foreground_mount(mounter: Mounter, daemons: Daemons) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir)
    r = daemons.run("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert "not started with --background" in r.stderr
    assert mp.wait() == 0
    assert not os.path.ismount(mnt)


def test_umount_reports_what_did_not_reach_the_server(
    tmp_path: Path, mounter: Mounter, daemons: Daemons, server: ServerProc
) -> None:
    mnt, logdir = mounter.dirs()
    daemons.logdirs.append(logdir)
    r = daemons.run(
        "mount", "--background", str(mnt), server.url(), str(logdir), "--passcode", PASSCODE,
        "--recovery-mode", "async", "--log", str(tmp_path / "d.log"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    server.stop()  # writes from now on stay local
    (mnt / "offline.txt").write_text("not on the server")
    u = daemons.run("umount", str(mnt))
    assert u.returncode == 0, u.stderr
    assert "chain server" in u.stderr and "with the warnings above" in u.stderr, u.stderr
    assert not os.path.ismount(mnt)
