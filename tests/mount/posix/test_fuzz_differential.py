"""Differential fuzzing: random sequences of file-system calls go to the mount AND to a plain
directory on the local disk, and both must answer alike - the same return value or the same
errno - and hold the same tree after every step (names, types, modes, sizes, link counts,
which names share an inode, contents, link targets, extended attributes, and mtimes where a
test set them), and again after a remount.

One mount serves the whole run; between examples both trees are cleared. Every
``REMOUNT_EVERY``-th example ends with a remount of the file system and one more comparison.

Examples: ``WASMER_DFS_FUZZ_EXAMPLES`` (default 800, the CI figure: about 3.5 minutes here; it
was 2000, 8.6 minutes, once the suite had grown to 25 minutes); steps per example:
``WASMER_DFS_FUZZ_STEPS`` (default 20). A longer local run:

    WASMER_DFS_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/mount/posix/test_fuzz_differential.py
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.mount.conftest import Mounter, MountProc

from .conftest import PATCHED, shared_mount
from .posix_calls import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    fallocate,
    renameat2,
)

EXAMPLES = int(os.environ.get("WASMER_DFS_FUZZ_EXAMPLES", "800"))
STEPS = int(os.environ.get("WASMER_DFS_FUZZ_STEPS", "20"))
REMOUNT_EVERY = int(os.environ.get("WASMER_DFS_FUZZ_REMOUNT_EVERY", "100"))

NAMES = ["a", "b", "c", "d"]
PATHS = NAMES + [f"{p}/{n}" for p in NAMES for n in NAMES[:3]] + ["a/a/a", "a/b/c"]
paths = st.sampled_from(PATHS)
OFFSETS = [0, 1, 100, 4095, 32767, 32768, 32769, 65536, 70000, 200_000]
LENGTHS = [0, 1, 7, 100, 4096, 5000, 32768, 40000]
SIZES = [0, 1, 50, 4096, 32767, 32768, 32769, 100_000, 250_000]
MODES = [0o644, 0o600, 0o755, 0o000, 0o777, 0o4755, 0o2755, 0o6711, 0o1777, 0o2745, 0o444]
TIMES = [0, 1, 10**9, 1_234_567_890_123_456_789, 2**33 * 10**9 + 5]
XNAMES = ["user.a", "user.b", "trusted.t", "security.s", "user." + "n" * 40]
XVALUES = [b"", b"x", b"\0\1\2\xff", b"v" * 300]
SYMLINK_TARGETS = ["a", "b", "../a", "a/b", "/nonexistent", "c/../a", "x" * 200]
USERS = [0, 1000, 4242]
FALLOCATE_MODES = [
    0,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_ZERO_RANGE,
    FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
]


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("errno", errno.errorcode.get(exc.errno or 0, exc.errno))


def snapshot(root: Path, known_mtime: dict[str, int]) -> dict[str, Any]:
    """Everything about the tree below root that must be the same on both targets."""
    out: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}

    def walk(rel: str) -> None:
        here = root / rel if rel else root
        for name in sorted(os.listdir(here)):
            p = here / name
            r = f"{rel}/{name}" if rel else name
            st_ = os.lstat(p)
            kind = stat.S_IFMT(st_.st_mode)
            entry: dict[str, Any] = {
                "mode": st_.st_mode,
                "nlink": st_.st_nlink,
                "uid": st_.st_uid,
                "gid": st_.st_gid,
            }
            inodes.setdefault(st_.st_ino, []).append(r)
            if kind != stat.S_IFDIR:
                entry["size"] = st_.st_size
            if kind == stat.S_IFREG:
                with open(p, "rb") as f:
                    entry["data"] = f.read()
            elif kind == stat.S_IFLNK:
                entry["target"] = os.readlink(p)
            try:
                names = sorted(os.listxattr(p, follow_symlinks=False))
                entry["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False) for n in names}
            except OSError as exc:
                entry["xattrs"] = errno.errorcode.get(exc.errno or 0)
            if r in known_mtime:
                entry["mtime"] = st_.st_mtime_ns
            out[r] = entry
            if kind == stat.S_IFDIR:
                walk(r)

    walk("")
    out["<links>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


class FsDiff(RuleBasedStateMachine):
    """Both targets, driven alike. Class attributes are set by the test before the run."""

    plain: ClassVar[Path]
    mounter: ClassVar[Mounter]
    kind: ClassVar[str] = "mount"
    examples: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    succeeded: ClassVar[int] = 0
    remounts: ClassVar[int] = 0
    remount_seconds: ClassVar[float] = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.fds: list[tuple[int, int, str]] = []
        self.known_mtime: dict[str, int] = {}
        self.existing: list[str] = []
        self.dirs: list[str] = [""]
        self.changed = True
        FsDiff.examples += 1

    def path(self, data: st.DataObject, new: bool = False) -> str:
        """A name that exists (mostly, unless ``new``), or a name in a directory that exists
        (mostly), or any of ``PATHS``: so that most calls do something."""
        roll = data.draw(st.integers(0, 9))
        if self.existing and roll < (3 if new else 7):
            return data.draw(st.sampled_from(self.existing))
        if roll < 9:
            parent = data.draw(st.sampled_from(self.dirs))
            name = data.draw(st.sampled_from(NAMES))
            return f"{parent}/{name}" if parent else name
        return data.draw(paths)

    @property
    def mount(self) -> Path:
        return shared_mount(self.mounter, self.kind).mnt / "fuzz"

    # -- running one call on both ----------------------------------------------------------------
    def both(
        self, call: Callable[[Path], Any], *, compare: bool = True, changes: bool = True
    ) -> tuple[Any, Any]:
        """Run ``call`` on both roots; ``changes=False`` for calls that only look (the trees
        are compared after the next call that may change something)."""
        FsDiff.steps += 1
        self.changed |= changes
        a = _outcome(lambda: call(self.plain))
        b = _outcome(lambda: call(self.mount))
        if compare:
            assert a == b, f"plain directory: {a!r}\nwasmer-dfs mount: {b!r}"
        FsDiff.succeeded += a[0] == "ok"
        return a, b

    def forget_mtimes(self) -> None:
        self.known_mtime.clear()

    # -- a starting tree ---------------------------------------------------------------------------
    @initialize(seed=st.integers(0, 7))
    def start(self, seed: int) -> None:
        """Each example starts from a small tree (files with data, a directory, a hard link,
        a symlink, an attribute): most calls then meet something that exists."""

        def build(r: Path) -> None:
            os.mkdir(r / "d")
            for name, size in (("a", 5000 * seed), ("d/a", 40000 + seed), ("b", seed)):
                with open(r / name, "wb") as f:
                    f.write(_data(seed, size))
            if seed & 1:
                os.link(r / "a", r / "d/b")
            if seed & 2:
                os.symlink("a", r / "c")
            if seed & 4:
                os.setxattr(r / "b", "user.a", b"start")

        self.both(build)
        self.same_tree()

    # -- namespace -------------------------------------------------------------------------------
    @rule(data=st.data(), mode=st.sampled_from(MODES), excl=st.booleans())
    def create(self, data: st.DataObject, mode: int, excl: bool) -> None:
        p = self.path(data, new=True)
        flags = os.O_CREAT | os.O_WRONLY | os.O_NONBLOCK | (os.O_EXCL if excl else 0)
        self.both(lambda r: os.close(os.open(r / p, flags, mode)))
        self.forget_mtimes()

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def mkdir(self, data: st.DataObject, mode: int) -> None:
        p = self.path(data, new=True)
        self.both(lambda r: os.mkdir(r / p, mode))
        self.forget_mtimes()

    @rule(data=st.data())
    def mkfifo(self, data: st.DataObject) -> None:
        p = self.path(data, new=True)
        self.both(lambda r: os.mkfifo(r / p, 0o644))
        self.forget_mtimes()

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.unlink(r / p))
        self.forget_mtimes()

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.rmdir(r / p))
        self.forget_mtimes()

    @rule(
        data=st.data(),
        flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
    )
    def rename(self, data: st.DataObject, flags: int) -> None:
        src, dst = self.path(data), self.path(data, new=True)
        self.both(lambda r: renameat2(r / src, r / dst, flags))
        self.forget_mtimes()

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        src, dst = self.path(data), self.path(data, new=True)
        self.both(lambda r: os.link(r / src, r / dst, follow_symlinks=False))
        self.forget_mtimes()

    @rule(to=st.sampled_from(SYMLINK_TARGETS), data=st.data())
    def symlink(self, to: str, data: st.DataObject) -> None:
        p = self.path(data, new=True)
        self.both(lambda r: os.symlink(to, r / p))
        self.forget_mtimes()

    # -- contents --------------------------------------------------------------------------------
    @rule(
        data=st.data(),
        offset=st.sampled_from(OFFSETS),
        n=st.sampled_from(LENGTHS),
        seed=st.integers(0, 3),
        how=st.sampled_from([0, 0, os.O_APPEND, os.O_TRUNC, os.O_CREAT, os.O_CREAT | os.O_TRUNC]),
    )
    def write(self, data: st.DataObject, offset: int, n: int, seed: int, how: int) -> None:
        p = self.path(data, new=False)
        payload = _data(seed, n)
        flags = os.O_WRONLY | os.O_NONBLOCK | how  # (a FIFO without reader: ENXIO, no hang)

        def call(r: Path) -> int:
            fd = os.open(r / p, flags, 0o644)
            try:
                return os.pwrite(fd, payload, offset)
            finally:
                os.close(fd)

        self.both(call)
        self.forget_mtimes()

    @rule(
        data=st.data(),
        offset=st.sampled_from(OFFSETS),
        n=st.sampled_from([1, 100, 70000, 10**6]),
    )
    def read(self, data: st.DataObject, offset: int, n: int) -> None:
        p = self.path(data, new=False)

        def call(r: Path) -> bytes:
            fd = os.open(r / p, os.O_RDONLY | os.O_NONBLOCK)
            try:
                return os.pread(fd, n, offset)
            finally:
                os.close(fd)

        self.both(call, changes=False)

    @rule(data=st.data(), size=st.sampled_from(SIZES))
    def truncate(self, data: st.DataObject, size: int) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.truncate(r / p, size))
        self.forget_mtimes()

    @precondition(lambda self: PATCHED)
    @rule(
        data=st.data(),
        mode=st.sampled_from(FALLOCATE_MODES),
        offset=st.sampled_from([0, 4096, 32768, 65536, 100_000]),
        length=st.sampled_from([4096, 32768, 65536, 100_000]),
    )
    def fallocate(self, data: st.DataObject, mode: int, offset: int, length: int) -> None:
        p = self.path(data, new=False)

        def call(r: Path) -> None:
            fd = os.open(r / p, os.O_RDWR | os.O_NONBLOCK)
            try:
                fallocate(fd, mode, offset, length)
            finally:
                os.close(fd)

        self.both(call)
        self.forget_mtimes()

    # -- attributes ------------------------------------------------------------------------------
    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.chmod(r / p, mode))

    @rule(data=st.data(), uid=st.sampled_from(USERS), gid=st.sampled_from(USERS))
    def chown(self, data: st.DataObject, uid: int, gid: int) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.chown(r / p, uid, gid, follow_symlinks=False))

    @rule(data=st.data(), atime=st.sampled_from(TIMES), mtime=st.sampled_from(TIMES))
    def utime(self, data: st.DataObject, atime: int, mtime: int) -> None:
        p = self.path(data, new=False)
        a, _ = self.both(lambda r: os.utime(r / p, ns=(atime, mtime), follow_symlinks=False))
        if a[0] == "ok":  # (other names of the same inode change too: forget them)
            self.known_mtime = {p: mtime}

    @rule(
        data=st.data(),
        name=st.sampled_from(XNAMES),
        value=st.sampled_from(XVALUES),
        flags=st.sampled_from([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]),
    )
    def setxattr(self, data: st.DataObject, name: str, value: bytes, flags: int) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.setxattr(r / p, name, value, flags, follow_symlinks=False))

    @rule(data=st.data(), name=st.sampled_from(XNAMES))
    def removexattr(self, data: st.DataObject, name: str) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.removexattr(r / p, name, follow_symlinks=False))

    @rule(data=st.data(), name=st.sampled_from(XNAMES))
    def getxattr(self, data: st.DataObject, name: str) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: os.getxattr(r / p, name), changes=False)

    @rule(data=st.data())
    def stat_follow(self, data: st.DataObject) -> None:
        p = self.path(data, new=False)

        def call(r: Path) -> tuple[int, int, int]:
            s = os.stat(r / p)
            return (s.st_mode, s.st_nlink, s.st_size if not stat.S_ISDIR(s.st_mode) else -1)

        self.both(call, changes=False)

    @rule(data=st.data())
    def listdir(self, data: st.DataObject) -> None:
        p = self.path(data, new=False)
        self.both(lambda r: sorted(os.listdir(r / p)), changes=False)

    # -- open files ------------------------------------------------------------------------------
    @precondition(lambda self: len(self.fds) < 3)
    @rule(
        data=st.data(),
        how=st.sampled_from(
            [os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_TRUNC]
        ),
    )
    def open_fd(self, data: st.DataObject, how: int) -> None:
        p = self.path(data, new=False)
        a, b = self.both(lambda r: os.open(r / p, how | os.O_NONBLOCK), compare=False)
        assert (a[0], a[1] if a[0] == "errno" else 0) == (b[0], b[1] if b[0] == "errno" else 0)
        if a[0] == "ok":
            self.fds.append((a[1], b[1], p))
        if how & os.O_TRUNC:
            self.forget_mtimes()

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 2), offset=st.sampled_from(OFFSETS), n=st.sampled_from(LENGTHS))
    def fd_write(self, i: int, offset: int, n: int) -> None:
        fa, fb, _ = self.fds[i % len(self.fds)]
        data = _data(offset, n)
        self.both(lambda r: os.pwrite(fa if r == self.plain else fb, data, offset))
        self.forget_mtimes()

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 2), n=st.sampled_from(LENGTHS))
    def fd_append_write(self, i: int, n: int) -> None:
        fa, fb, _ = self.fds[i % len(self.fds)]
        data = _data(n, n)
        self.both(lambda r: os.write(fa if r == self.plain else fb, data))
        self.forget_mtimes()

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 2), offset=st.sampled_from(OFFSETS), n=st.sampled_from([1, 5000]))
    def fd_read(self, i: int, offset: int, n: int) -> None:
        fa, fb, _ = self.fds[i % len(self.fds)]
        self.both(lambda r: os.pread(fa if r == self.plain else fb, n, offset), changes=False)

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 2), size=st.sampled_from(SIZES))
    def fd_truncate(self, i: int, size: int) -> None:
        fa, fb, _ = self.fds[i % len(self.fds)]
        self.both(lambda r: os.ftruncate(fa if r == self.plain else fb, size))
        self.forget_mtimes()

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 2))
    def fd_stat(self, i: int) -> None:
        fa, fb, _ = self.fds[i % len(self.fds)]

        def call(r: Path) -> tuple[int, int, int]:
            s = os.fstat(fa if r == self.plain else fb)
            return (s.st_mode, s.st_nlink, -1 if stat.S_ISDIR(s.st_mode) else s.st_size)

        self.both(call, changes=False)

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 2))
    def fd_close(self, i: int) -> None:
        fa, fb, _ = self.fds.pop(i % len(self.fds))
        self.both(lambda r: os.close(fa if r == self.plain else fb))

    # -- after every step ------------------------------------------------------------------------
    @invariant()
    def same_tree(self) -> None:
        if not self.changed:
            return
        self.changed = False
        a = snapshot(self.plain, self.known_mtime)
        b = snapshot(self.mount, self.known_mtime)
        self.existing = sorted(k for k in a if not k.startswith("<"))
        self.dirs = [""] + [k for k in self.existing if stat.S_ISDIR(a[k]["mode"])]
        if a != b:
            keys = sorted(set(a) | set(b))
            diff = {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}
            raise AssertionError(f"the trees differ (plain, mount): {diff}")
        for p, mtime in self.known_mtime.items():
            if p in a:
                assert a[p]["mtime"] == mtime

    def teardown(self) -> None:
        for fa, fb, _ in self.fds:
            for fd in (fa, fb):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fds.clear()
        if REMOUNT_EVERY and FsDiff.examples % REMOUNT_EVERY == 0:
            before = snapshot(self.plain, {})
            t0 = time.monotonic()
            _remount(self.mounter, self.kind)
            FsDiff.remount_seconds += time.monotonic() - t0
            FsDiff.remounts += 1
            after = snapshot(self.mount, {})
            assert after == before, "the tree differs after a remount"
        for root in (self.plain, self.mount):
            _clear(root)


def _remount(mounter: Mounter, kind: str) -> MountProc:
    from .conftest import _SHARED

    mp = mounter.remount(_SHARED[kind])
    _SHARED[kind] = mp
    return mp


def _clear(root: Path) -> None:
    for name in os.listdir(root):
        p = root / name
        if p.is_dir() and not p.is_symlink():
            for dirpath, dirnames, _ in os.walk(p):
                for d in dirnames:  # a directory of mode 000 is no obstacle for root, but
                    with contextlib.suppress(OSError):  # keep rmtree's chmod-free path simple
                        os.chmod(os.path.join(dirpath, d), 0o755)
            shutil.rmtree(p)
        else:
            p.unlink()


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[mount tier] {text}")


@pytest.mark.timeout(max(900, EXAMPLES // 2))
@pytest.mark.parametrize("kind", ["mount", "writeback"])
def test_differential_fuzz(
    kind: str,
    session_mounter: Mounter,
    plain_base: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if kind == "writeback" and not os.environ.get("WASMER_DFS_FUZZ_WRITEBACK"):
        examples = max(EXAMPLES // 8, 1)  # the write-back mount gets an eighth of the budget
    else:
        examples = EXAMPLES
    mp = shared_mount(session_mounter, kind)
    plain = plain_base / f"fuzz-{kind}"
    plain.mkdir(exist_ok=True)
    (mp.mnt / "fuzz").mkdir(exist_ok=True)
    _clear(plain)
    _clear(mp.mnt / "fuzz")
    FsDiff.plain, FsDiff.mounter, FsDiff.kind = plain, session_mounter, kind
    FsDiff.examples = FsDiff.steps = FsDiff.succeeded = FsDiff.remounts = 0
    FsDiff.remount_seconds = 0.0
    old_umask = os.umask(0o022)
    start = time.monotonic()
    try:
        run_state_machine_as_test(
            FsDiff,
            settings=settings(
                max_examples=examples,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                print_blob=True,
            ),
        )
    finally:
        os.umask(old_umask)
    before = snapshot(plain, {})
    _remount(session_mounter, kind)
    assert snapshot(mp.mnt / "fuzz", {}) == before
    report(
        capsys,
        f"differential fuzz ({kind}): {FsDiff.examples} examples, {FsDiff.steps} calls on each"
        f" target ({FsDiff.succeeded} succeeded, the rest failed alike),"
        f" {FsDiff.remounts + 1} remounts ({FsDiff.remount_seconds:.0f} s), 0 divergences,"
        f" {time.monotonic() - start:.0f} s",
    )
