"""fstab (issue 19): a line of type fuse.wasmer-dfs in the test's own fstab file, mounted with
`mount -T FSTAB MOUNTPOINT` (mount(8) runs /sbin/mount.fuse.wasmer-dfs, which install-helpers
writes) and unmounted with `umount`; the options reach the file system (a `ro` line refuses
writes, `log=` gets the daemon's lines, the passcode comes from `passfile=`).

Needs root (mount(8) only looks for helpers in /sbin). The helper is installed for the test and
removed after it unless one was there before; an unrelated helper there skips the test."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints.daemon import RECORD_NAME
from entrypoints.helpers import HELPER_NAME, helper_script
from entrypoints.unmounting import running

from .conftest import EXIT_TIMEOUT, Mounter, fuse_mounts_under

SBIN = Path("/sbin")


@pytest.fixture
def helper() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mount(8) runs helpers from /sbin: needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("util-linux mount/umount missing")
    path = SBIN / HELPER_NAME
    before = path.read_text() if path.exists() else None
    if before is not None and "entrypoints.fstab" not in before:
        pytest.skip(f"{path} exists and is not a wasmer-dfs helper of this kind")
    path.write_text(helper_script())
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


def _daemon_pid(logdir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = json.loads((logdir / RECORD_NAME).read_text())["pid"]
        return pid if isinstance(pid, int) else None
    return None


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[list[Path]]:
    """Log directories whose daemons are stopped by pid after the test, mounts or not."""
    logdirs: list[Path] = []
    try:
        yield logdirs
    finally:
        for point in fuse_mounts_under(tmp_path):
            subprocess.run(["fusermount3", "-u", point], capture_output=True, check=False)
        for logdir in logdirs:
            pid = _daemon_pid(logdir)
            if pid is None:
                continue
            for sig in (signal.SIGTERM, signal.SIGKILL):
                _wait_exit(pid)
                if not running(pid):
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


def _wait_exit(pid: int, timeout: float = EXIT_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False
    )


def test_an_fstab_line_mounts_and_umount_unmounts(
    tmp_path: Path, mounter: Mounter, helper: Path, cleanup: list[Path]
) -> None:
    mnt, logdir = mounter.dirs()
    cleanup.append(logdir)
    passfile = tmp_path / "fs.pass"
    passfile.write_text("fstab secret\n")
    os.chmod(passfile, 0o600)
    log = tmp_path / "fs.out"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# the test's own fstab\n"
        f"{logdir} {mnt} fuse.wasmer-dfs"
        f" _netdev,nofail,noauto,x-systemd.automount,passfile={passfile},log={log} 0 0\n"
    )
    r = _run("mount", "-T", str(fstab), str(mnt))
    assert r.returncode == 0, r.stderr
    assert os.path.ismount(mnt)  # mount(8) returned once it was mounted
    (mnt / "from-fstab.txt").write_text("written through an fstab mount")
    pid = _daemon_pid(logdir)
    assert pid is not None and running(pid)
    assert "mounted encrypted file system" in log.read_text()

    r = _run("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(mnt)
    assert _wait_exit(pid), "the daemon did not exit after umount"
    assert f"unmounted {mnt}" in log.read_text()

    # a `ro` line: the options reach the file system
    ro_fstab = tmp_path / "fstab.ro"
    ro_fstab.write_text(f"{logdir} {mnt} fuse.wasmer-dfs ro,passfile={passfile},nofail 0 0\n")
    r = _run("mount", "-T", str(ro_fstab), str(mnt))
    assert r.returncode == 0, r.stderr
    assert (mnt / "from-fstab.txt").read_text() == "written through an fstab mount"
    with pytest.raises(OSError) as err:
        (mnt / "new.txt").write_text("refused")
    assert err.value.errno == errno.EROFS
    with open("/proc/mounts") as f:
        line = next(x for x in f if f" {mnt} " in x)
    assert " fuse.wasmer-dfs ro," in line
    pid = _daemon_pid(logdir)
    assert pid is not None
    r = _run("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert _wait_exit(pid)


def test_an_fstab_line_with_a_bad_option_fails_with_the_reason(
    tmp_path: Path, mounter: Mounter, helper: Path, cleanup: list[Path]
) -> None:
    mnt, logdir = mounter.dirs()
    cleanup.append(logdir)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{logdir} {mnt} fuse.wasmer-dfs passcode=in-the-clear 0 0\n")
    r = _run("mount", "-T", str(fstab), str(mnt))
    assert r.returncode != 0
    assert "use passfile=/path" in r.stderr
    assert not os.path.ismount(mnt)
