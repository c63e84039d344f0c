"""Every mount option of the manual, each with a test that would fail without the option:
``--uid``, ``--gid``, ``--impersonate-uid``, ``--allow-other``, ``--allow-root``,
``--read-only``, ``--non-empty``, ``--write-back``, ``--temp``."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import (
    DEFAULT_PASSCODE,
    MOUNT_TIMEOUT,
    PASSCODE_ENV,
    Mounter,
    MountProc,
    fuse_mounts_under,
    wasmer_dfs_exe,
)

from .conftest import USER_A, as_user

NOBODY = (65534, 65534)
MiB = 1024 * 1024


@pytest.fixture
def open_mounter() -> Iterator[Mounter]:
    """A Mounter under a world-searchable directory (other users must reach the mounts)."""
    base = Path(tempfile.mkdtemp(prefix="wdfs-opts-", dir="/tmp"))
    base.chmod(0o755)
    m = Mounter(base)
    try:
        yield m
    finally:
        m.cleanup()
        for point in fuse_mounts_under(base):
            subprocess.run(["fusermount3", "-uz", point], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def fresh(m: Mounter, name: str) -> tuple[Path, Path]:
    mnt, logdir = m.dirs(name)
    mnt.chmod(0o755)
    return mnt, logdir


def owner(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def make(path: Path, data: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(data)


# --- --uid and --gid ------------------------------------------------------------------------------
def test_uid_and_gid_make_every_file_appear_owned_by_them(open_mounter: Mounter) -> None:
    mnt, logdir = fresh(open_mounter, "ids")
    mp = open_mounter.mount(mnt, logdir)
    os.mkdir(mnt / "dir", 0o755)
    make(mnt / "dir" / "file")
    os.chown(mnt / "dir" / "file", 7, 8)
    assert owner(mnt / "dir") == (0, 0)
    assert as_user(USER_A, lambda: make(mnt / "dir" / "mine")) == ("errno", errno.EACCES)
    mp = open_mounter.remount(mp, "--uid", "1000", "--gid", "1000", "--allow-other")
    for p in (mnt, mnt / "dir", mnt / "dir" / "file"):
        assert owner(p) == (1000, 1000), p
    # default_permissions: the kernel checks the owner shown, so user 1000 may now write here
    assert as_user(USER_A, lambda: make(mnt / "dir" / "mine", b"ok")) is None
    assert owner(mnt / "dir" / "mine") == (1000, 1000)
    mp = open_mounter.remount(mp, "--gid", "3")
    assert owner(mnt / "dir") == (0, 3), "--gid alone maps only the group"
    mp = open_mounter.remount(mp, "--allow-root")  # no id options: what is stored
    assert owner(mnt / "dir") == (0, 0)
    assert owner(mnt / "dir" / "file") == (7, 8)
    assert owner(mnt / "dir" / "mine") == (1000, 1000), "files keep their creator's ids"


# --- --impersonate-uid ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--impersonate-uid", "-i"])
def test_impersonate_uid_maps_the_owners_global_ids_to_the_local_user(
    open_mounter: Mounter, flag: str
) -> None:
    """Without users, the global id of the file system's owner is the owner of its root
    directory. Here the owner is 4242:4343 and the mounting user is root (0:0)."""
    mnt, logdir = fresh(open_mounter, "imp")
    mp = open_mounter.mount(mnt, logdir)
    make(mnt / "mine")
    make(mnt / "theirs")
    os.chown(mnt / "theirs", 7, 7)
    os.chown(mnt / "mine", 4242, 4343)
    os.chown(mnt, 4242, 4343)
    assert owner(mnt / "mine") == (4242, 4343)

    mp = open_mounter.remount(mp, flag)
    assert owner(mnt) == (0, 0)
    assert owner(mnt / "mine") == (0, 0), "the owner's files appear as the local user's"
    assert owner(mnt / "theirs") == (7, 7), "other owners are shown as they are"
    make(mnt / "new")
    assert owner(mnt / "new") == (0, 0)
    os.chown(mnt / "theirs", 0, -1)  # chown to the local user stores the global id
    assert owner(mnt / "theirs") == (0, 7)

    mp = open_mounter.remount(mp, "--non-empty")  # without the flag: the stored, global ids
    assert owner(mnt / "new") == (4242, 4343)
    assert owner(mnt / "theirs") == (4242, 7)
    assert owner(mnt / "mine") == (4242, 4343)


# --- --allow-other --------------------------------------------------------------------------------
def test_allow_other_lets_other_users_in(open_mounter: Mounter) -> None:
    mnt, logdir = fresh(open_mounter, "other")
    mp = open_mounter.mount(mnt, logdir)
    make(mnt / "f", b"shared")
    os.chmod(mnt / "f", 0o644)
    assert as_user(NOBODY, lambda: os.listdir(mnt)) == ("errno", errno.EACCES)
    mp = open_mounter.remount(mp, "--allow-other")
    assert as_user(NOBODY, lambda: os.listdir(mnt)) == ["f"]
    assert as_user(NOBODY, lambda: Path(mnt / "f").read_bytes()) == b"shared"
    del mp


# --- --allow-root ---------------------------------------------------------------------------------
def _mount_as_user(m: Mounter, mnt: Path, logdir: Path, uid: int, *args: str) -> MountProc:
    """Mount with real uid ``uid`` (effective root, so no fusermount3 is needed): the kernel and
    libfuse see ``uid`` as the mount's owner, exactly as if that user had mounted."""
    m._n += 1
    err, out = m.tmp_path / f"user-mount-{m._n}.stderr", m.tmp_path / f"user-mount-{m._n}.stdout"
    env = {k: v for k, v in os.environ.items() if k != PASSCODE_ENV}
    env[PASSCODE_ENV] = DEFAULT_PASSCODE
    cmd = [wasmer_dfs_exe(), "mount", str(mnt), str(logdir), *args]
    with open(err, "wb") as ef, open(out, "wb") as of:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=of,
            stderr=ef,
            env=env,
            cwd=m.tmp_path,
            start_new_session=True,
            preexec_fn=lambda: os.setresuid(uid, 0, 0),
        )
    mp = MountProc(proc, mnt, logdir, tuple(args), (), None, DEFAULT_PASSCODE, None, err, out)
    m.procs.append(mp)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mp.in_proc_mounts():  # (os.path.ismount would be refused without access)
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"mount as uid {uid} failed; stderr:\n{mp.stderr()}")
        time.sleep(0.02)
    return mp


def _unmount(mp: MountProc) -> None:
    subprocess.run(["fusermount3", "-u", str(mp.mnt)], check=False, capture_output=True)
    assert mp.wait() == 0, mp.stderr()


def test_allow_root_lets_root_into_a_users_mount(open_mounter: Mounter) -> None:
    mnt, logdir = fresh(open_mounter, "root")
    for p in (mnt, logdir):
        os.chown(p, *USER_A)
    mp = _mount_as_user(open_mounter, mnt, logdir, USER_A[0])
    with pytest.raises(PermissionError):
        os.listdir(mnt)  # a user's FUSE mount is closed to root by default
    _unmount(mp)
    mp = _mount_as_user(open_mounter, mnt, logdir, USER_A[0], "--allow-root")
    assert os.listdir(mnt) == []
    make(mnt / "by-root", b"x")
    assert as_user(NOBODY, lambda: os.listdir(mnt)) == ("errno", errno.EACCES), "root only"
    _unmount(mp)


# --- --read-only ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--read-only", "-r"])
def test_read_only_refuses_every_change(open_mounter: Mounter, flag: str) -> None:
    mnt, logdir = fresh(open_mounter, "ro")
    mp = open_mounter.mount(mnt, logdir)
    make(mnt / "f", b"content")
    os.setxattr(mnt / "f", "user.k", b"v")
    mp = open_mounter.remount(mp, flag)
    size = mp.log_file.stat().st_size
    assert (mnt / "f").read_bytes() == b"content"
    assert os.getxattr(mnt / "f", "user.k") == b"v"
    changes = [
        lambda: make(mnt / "g"),
        lambda: make(mnt / "f", b"new"),
        lambda: os.mkdir(mnt / "d"),
        lambda: os.unlink(mnt / "f"),
        lambda: os.rename(mnt / "f", mnt / "h"),
        lambda: os.chmod(mnt / "f", 0o600),
        lambda: os.utime(mnt / "f", ns=(1, 1)),
        lambda: os.truncate(mnt / "f", 0),
        lambda: os.setxattr(mnt / "f", "user.k", b"w"),
        lambda: os.removexattr(mnt / "f", "user.k"),
        lambda: os.symlink("f", mnt / "l"),
        lambda: os.link(mnt / "f", mnt / "l"),
        lambda: os.mkfifo(mnt / "p"),
    ]
    for change in changes:
        with pytest.raises(OSError) as exc:
            change()
        assert exc.value.errno == errno.EROFS
    assert "ro" in _mount_options(mnt)
    open_mounter.remount(mp, "--allow-root")  # without the flag: writable again
    make(mnt / "g")
    assert mp.log_file.stat().st_size >= size


def _mount_options(mnt: Path) -> list[str]:
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[1] == str(mnt):
                return parts[3].split(",")
    return []


# --- --non-empty ----------------------------------------------------------------------------------
def test_non_empty_allows_mounting_over_files(open_mounter: Mounter) -> None:
    mnt, logdir = fresh(open_mounter, "ne")
    make(mnt / "hidden", b"under the mount")
    out = open_mounter.attempt(mnt, logdir)
    assert out.returncode == 2 and not out.mounted
    assert "not empty" in out.stderr and "--non-empty" in out.stderr
    mp = open_mounter.mount(mnt, logdir, "--non-empty")
    assert os.listdir(mnt) == []
    make(mnt / "inside")
    assert mp.unmount() == 0
    assert sorted(os.listdir(mnt)) == ["hidden"]
    assert (mnt / "hidden").read_bytes() == b"under the mount"


# --- --write-back ---------------------------------------------------------------------------------
def _bytes_read(pid: int) -> int:
    """Bytes the mount process has read (its requests from /dev/fuse included)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.parametrize("write_back", [False, True])
def test_write_back_keeps_small_writes_in_the_kernel_until_flush(
    open_mounter: Mounter, write_back: bool
) -> None:
    """With the kernel's write-back cache, write() only fills the page cache: the mount
    process receives the data in a few large writes at flush. Without it, every write() is a
    request that carries its data to the mount process."""
    mnt, logdir = fresh(open_mounter, f"wb-{write_back}")
    # (no background compaction reading the log while we count what the process reads)
    options = ["--compact-mode", "never", *(["--write-back"] if write_back else [])]
    mp = open_mounter.mount(mnt, logdir, *options)
    fd = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    before = _bytes_read(mp.pid)
    for i in range(1024):
        os.write(fd, bytes([i % 251]) * 4096)
    during = _bytes_read(mp.pid) - before
    os.close(fd)
    after = _bytes_read(mp.pid) - before
    if write_back:
        assert during < 1 * MiB, f"{during} bytes reached the file system before the flush"
    else:
        assert during >= 4 * MiB, f"only {during} bytes reached the file system"
    assert after >= 4 * MiB
    data = (mnt / "f").read_bytes()
    assert data == b"".join(bytes([i % 251]) * 4096 for i in range(1024))
    open_mounter.remount(mp)
    assert (mnt / "f").read_bytes() == data


# --- --temp ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temp", [False, True])
def test_temp_deletes_the_local_log_at_unmount(open_mounter: Mounter, temp: bool) -> None:
    mnt, logdir = fresh(open_mounter, f"temp-{temp}")
    mp = open_mounter.mount(mnt, logdir, *(["--temp"] if temp else []))
    make(mnt / "f", b"cached only")
    assert mp.log_file.exists()
    assert mp.unmount() == 0
    if temp:
        assert not mp.log_file.exists() and os.listdir(logdir) == []
    else:
        assert mp.log_file.stat().st_size > 0
        open_mounter.remount(mp, "--allow-root")
        assert (mnt / "f").read_bytes() == b"cached only"
