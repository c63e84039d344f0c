"""Targets for the POSIX tier: one long-lived wasmer-dfs mount per test session and, as the
control, a plain directory on the local disk (ext4 or tmpfs). Tests that take ``target`` run
against both and must see the same results and errnos; ``docs/conformance.md`` lists every
place where the mount may differ, and why.

The mount lives under a world-searchable directory and is mounted with ``--allow-other`` so
that tests can drop privileges (sticky bit, setgid directories, EACCES) on both targets alike.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import Mounter, MountProc, fuse_mounts_under

try:
    import pyfuse3

    PATCHED = bool(getattr(pyfuse3, "WASMER_DFS_PATCH", 0))
except ImportError:  # pragma: no cover - the mount tier is skipped then anyway
    PATCHED = False

NO_PATCH = (
    "pyfuse3 without the wasmer-dfs patch (build it: bash scripts/build_pyfuse3.sh .venv):"
    " the mount has no fallocate and lseek(SEEK_DATA/SEEK_HOLE) handlers"
)


def needs_patch(target: Target) -> None:
    """Skip a mount target when pyfuse3 cannot deliver fallocate and lseek to the mount."""
    if target.is_mount and not PATCHED:
        pytest.skip(NO_PATCH)


#: uid/gid the privilege-dropping helpers use (exist on Debian: nobody/nogroup, and 1000/1000
#: need not exist in /etc/passwd for the kernel).
USER_A = (1000, 1000)
USER_B = (1001, 1001)


@dataclass
class Target:
    """One place to run a file-system test: ``root`` is a fresh empty directory."""

    kind: str  # "plain" or "mount"
    root: Path
    proc: MountProc | None = None
    mounter: Mounter | None = None

    @property
    def is_mount(self) -> bool:
        return self.kind != "plain"

    def remount(self) -> None:
        """Unmount and mount again (the plain directory: nothing); paths stay valid."""
        if self.proc is None or self.mounter is None:
            return
        self.proc = self.mounter.remount(self.proc)
        _SHARED[self.kind] = self.proc

    def __truediv__(self, other: str) -> Path:
        return self.root / other


_SHARED: dict[str, MountProc] = {}


@pytest.fixture(scope="session")
def posix_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="wdfs-posix-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for point in fuse_mounts_under(base):
            with contextlib.suppress(OSError):
                os.system(f"fusermount3 -uz '{point}' >/dev/null 2>&1")
        shutil.rmtree(base, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def session_mounter(posix_base: Path) -> Iterator[Mounter]:
    """Mounts that live for the whole session. A SIGTERM (``timeout``, CI cancelling the job)
    becomes a KeyboardInterrupt while they are up, so that pytest still unmounts them instead of
    leaving mount processes behind."""
    m = Mounter(posix_base)
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield m
    finally:
        m.cleanup()
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _mount(mounter: Mounter, name: str, *args: str) -> MountProc:
    mnt, logdir = mounter.dirs(name)
    for p in (mnt, logdir):
        p.chmod(0o755)
    return mounter.mount(mnt, logdir, "--allow-other", *args)


#: the mounts a test may run on, by target kind: extra mount options
MOUNT_KINDS = {"mount": (), "writeback": ("--write-back",)}


def shared_mount(mounter: Mounter, kind: str = "mount") -> MountProc:
    """The session's wasmer-dfs mount of this kind (encrypted, --allow-other), mounted once."""
    if kind not in _SHARED:
        _SHARED[kind] = _mount(mounter, kind, *MOUNT_KINDS[kind])
        os.chmod(_SHARED[kind].mnt, 0o755)
    return _SHARED[kind]


@pytest.fixture(scope="session")
def plain_base(posix_base: Path) -> Path:
    p = posix_base / "plain"
    p.mkdir(exist_ok=True)
    p.chmod(0o755)
    return p


_counter = iter(range(1_000_000))


def _fresh(parent: Path, request: pytest.FixtureRequest) -> Path:
    name = f"{next(_counter):05d}-{request.node.name}"[:200]
    for bad in "/[]":
        name = name.replace(bad, "_")
    p = parent / name
    p.mkdir()
    p.chmod(0o777)
    return p


@pytest.fixture(params=["plain", "mount", "writeback"])
def target(
    request: pytest.FixtureRequest, plain_base: Path, session_mounter: Mounter
) -> Iterator[Target]:
    """A fresh empty directory (mode 0777, owned by root) on the plain disk, in the mount, or
    in a mount with the kernel's write-back cache (``--write-back``)."""
    kind = request.param
    old_umask = os.umask(0o022)
    try:
        if kind == "plain":
            yield Target("plain", _fresh(plain_base, request))
        else:
            mp = shared_mount(session_mounter, kind)
            yield Target(kind, _fresh(mp.mnt, request), mp, session_mounter)
            mp = _SHARED[kind]
            _close_fds_under(mp.mnt)  # a failed test must not keep the next remount busy
            assert mp.proc.poll() is None, f"the mount process died; stderr:\n{mp.stderr()}"
    finally:
        os.umask(old_umask)


def _close_fds_under(where: Path) -> None:
    prefix = str(where) + "/"
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith(prefix):
                os.close(int(name))


# --- running code as another user -----------------------------------------------------------------
def as_user(ids: tuple[int, int], fn: Callable[[], Any], groups: tuple[int, ...] = ()) -> Any:
    """Run ``fn`` in a forked child with real and effective ids ``ids`` (and no supplementary
    groups but ``groups``); return its result, or the errno of the OSError it raised as
    ``OSError``-like ``("errno", n)``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setgroups(list(groups))
            os.setresgid(ids[1], ids[1], ids[1])
            os.setresuid(ids[0], ids[0], ids[0])
            try:
                out: Any = ("ok", fn())
            except OSError as exc:
                out = ("errno", exc.errno)
            except BaseException as exc:  # reported to the parent
                out = ("error", repr(exc))
            with os.fdopen(w, "wb") as f:
                pickle.dump(out, f)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"as_user({ids}) failed: {value}")
    return value if kind == "ok" else ("errno", value)
