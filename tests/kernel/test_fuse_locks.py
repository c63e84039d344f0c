"""The production lock handlers through the kernel: tests/kernel/lockops_fs.py (a tiny in-memory
file system with the ``LockOps`` mixin over ``LockService``) mounted in a subprocess and driven
by lock shells (tests/locktools.py: one process = one POSIX lock owner) with real system calls.

* one mount, local-only (``MemoryLockHub``): flock and fcntl behave as on a local disk: shared
  and exclusive, ranges split and merged, F_GETLK with the holder's pid, F_SETLKW woken or
  interrupted by a signal with nothing left behind, close() and OFD semantics, EDEADLK;
* two mounts of one chain through a chain server on loopback (``WsLockCoordinator``): `flock -n`
  fails on B while A holds; fcntl ranges conflict and coexist; F_SETLKW on B waits for A; killing
  A's file-system process frees its locks within the lease.

Skipped, with the reason, without FUSE or the patched pyfuse3 (docs/adr/0006).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helperfs import HelperFs, helper_mounts
from tests.kernel.test_pyfuse3_patch import SKIP_REASON
from tests.locktools import Shell, ThreadServer, shells, wait_until

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)),
]


class LockFS(HelperFs):
    def waiting(self, op: str, pid: int) -> Callable[[], bool]:
        """A request of process ``pid`` reached the handler (and may now wait)."""
        return lambda: any(
            r.get("phase") == "wait" and r.get("pid") == pid for r in self.records(op)
        )


@pytest.fixture
def lockfs(tmp_path: Path) -> Iterator[Callable[..., LockFS]]:
    """lockfs(*flags) -> a mounted lockops_fs with the given flags."""
    yield from helper_mounts(
        tmp_path,
        LockFS,
        "lockops_fs",
        lambda root, log: [sys.executable, "-m", "tests.kernel.lockops_fs", str(root), str(log)],
        cwd=REPO,
    )


def pid_of(sh: Shell) -> int:
    return int(sh.call("pid").split()[1])


# --- one mount: as on a local disk ----------------------------------------------------------------
def test_flock_shared_exclusive_and_conversion(lockfs) -> None:
    m = lockfs()
    with shells(2) as (a, b):
        fa, fb = a.open(m.file), b.open(m.file)
        assert a.call(f"flock {fa} ex nb") == "ok"
        assert b.call(f"flock {fb} sh nb") == "err EAGAIN"
        dup = int(a.call(f"dup {fa}").split()[1])
        assert a.call(f"flock {dup} sh nb") == "ok", "dup() shares the open file description"
        assert b.call(f"flock {fb} sh nb") == "ok"
        # like Linux: a failed conversion has dropped the old lock
        assert a.call(f"flock {fa} ex nb") == "err EAGAIN"
        assert b.call(f"flock {fb} ex nb") == "ok"
        b.start(f"flock {fb} un")
        assert b.answer() == "ok"
        second = a.open(m.file)  # a second open() is another flock owner
        assert a.call(f"flock {second} ex nb") == "ok"
        assert a.call(f"flock {fa} sh nb") == "err EAGAIN"
        assert a.call(f"close {second}") == "ok"  # its last close drops its lock
        wait_until(lambda: a.call(f"flock {fa} sh nb") == "ok", what="the lock to go at close")


def test_fcntl_ranges_split_merge_and_getlk(lockfs) -> None:
    m = lockfs()
    with shells(2) as (a, b):
        fa, fb = a.open(m.file), b.open(m.file)
        apid = pid_of(a)
        assert a.call(f"lk {fa} w 100 10") == "ok"
        assert b.call(f"getlk {fb} r 0 0") == f"lk w 100 10 {apid}"
        assert a.call(f"getlk {fa} w 0 0") == "lk u 0 0 0", "own locks never conflict"
        assert a.call(f"lk {fa} u 103 2") == "ok"  # split in two
        assert b.call(f"lk {fb} w 103 2") == "ok"
        assert b.call(f"lk {fb} w 102 1") == "err EAGAIN"
        assert b.call(f"lk {fb} w 105 1") == "err EAGAIN"
        assert b.call(f"lk {fb} u 0 0") == "ok"
        assert a.call(f"lk {fa} w 103 2") == "ok"  # merged back into one
        assert b.call(f"getlk {fb} r 0 0") == f"lk w 100 10 {apid}"
        assert a.call(f"lk {fa} r 100 10") == "ok"  # downgrade: readers may share
        assert b.call(f"lk {fb} r 105 1") == "ok"
        assert b.call(f"lk {fb} w 200 0") == "ok"  # to EOF, beyond a's range
        assert a.call(f"getlk {fa} w 150 1") == "lk u 150 1 0"
        assert a.call(f"getlk {fa} w 300 5") == f"lk w 200 0 {pid_of(b)}"
        assert a.call(f"lk {fa} w 100 10") == "err EAGAIN", "b's read lock at 105 conflicts"


def test_setlkw_waits_and_a_signal_interrupts_leaving_nothing(lockfs) -> None:
    m = lockfs()
    with shells(3) as (a, b, c):
        fa, fb, fc = a.open(m.file), b.open(m.file), c.open(m.file)
        assert a.call(f"lk {fa} w 0 0") == "ok"
        b.start(f"lk {fb} w 0 1 w")
        wait_until(m.waiting("setlk", b.pid), what="b's F_SETLKW to reach the file system")
        assert b.blocked()
        b.signal(signal.SIGUSR1)
        assert b.answer() == "err EINTR"
        assert a.call(f"lk {fa} u 0 0") == "ok"
        assert c.call(f"lk {fc} w 0 0") == "ok", "the interrupted request left nothing"
        b.start(f"lk {fb} w 0 1 w")
        assert b.blocked()
        assert c.call(f"lk {fc} u 0 0") == "ok"
        assert b.answer() == "ok", "woken by the unlock"
        # a waiter killed outright leaves nothing either
        c.start(f"lk {fc} r 0 0 w")
        wait_until(m.waiting("setlk", c.pid), what="c's F_SETLKW")
        assert c.blocked()
        c.signal(signal.SIGKILL)
        c.proc.wait(timeout=10)
        assert b.call(f"lk {fb} u 0 0") == "ok"
        assert a.call(f"lk {fa} w 0 0") == "ok"


def test_close_of_any_descriptor_drops_the_process_locks(lockfs) -> None:
    m = lockfs()
    with shells(2) as (a, b):
        f0, f1 = a.open(m.file), a.open(m.file)
        fb = b.open(m.file)
        assert a.call(f"lk {f0} w 0 10") == "ok"
        assert b.call(f"lk {fb} w 0 1") == "err EAGAIN"
        assert a.call(f"close {f1}") == "ok"  # POSIX: any close drops them all
        assert b.call(f"lk {fb} w 0 1") == "ok"


def test_ofd_locks_belong_to_the_open_file_and_go_at_its_last_close(lockfs) -> None:
    m = lockfs()
    with shells(2) as (a, b):
        f0, f1 = a.open(m.file), a.open(m.file)
        fb = b.open(m.file)
        assert a.call(f"ofd {f0} w 0 10") == "ok"
        assert a.call(f"ofd {f1} w 5 1") == "err EAGAIN", "two open files of one process"
        assert a.call(f"ofdgetlk {f1} r 0 0") == "lk w 0 10 -1"
        copy = int(a.call(f"dup {f0}").split()[1])
        assert a.call(f"close {f0}") == "ok"  # the description lives on in the copy
        assert b.call(f"lk {fb} r 0 1") == "err EAGAIN"
        assert a.call(f"close {copy}") == "ok"  # its last close: RELEASE drops the lock
        wait_until(lambda: b.call(f"lk {fb} r 0 1") == "ok", what="the OFD lock to go")


def test_deadlock_between_two_processes_is_refused(lockfs) -> None:
    m = lockfs()
    with shells(2) as (a, b):
        fa, fb = a.open(m.file), b.open(m.file)
        assert a.call(f"lk {fa} w 0 1") == "ok"
        assert b.call(f"lk {fb} w 1 1") == "ok"
        a.start(f"lk {fa} w 1 1 w")
        wait_until(m.waiting("setlk", a.pid), what="a's F_SETLKW")
        assert a.blocked()
        assert b.call(f"lk {fb} w 0 1 w") in ("err EDEADLK", "err EDEADLOCK")  # one errno
        assert b.call(f"lk {fb} u 0 0") == "ok"
        assert a.answer() == "ok"


# --- two mounts of one chain through a chain server -----------------------------------------------
@pytest.fixture
def lock_server(tmp_path: Path) -> Iterator[ThreadServer]:
    server = ThreadServer(tmp_path / "server", lease=1.5)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def two_mounts(lockfs, lock_server) -> tuple[LockFS, LockFS]:
    from tests.server.conftest import LocalChain

    header = LocalChain().header.hex()
    flags = ("--server", lock_server.url(), "--header", header)
    return lockfs(*flags), lockfs(*flags)


def test_flock_n_on_b_fails_while_a_holds(two_mounts) -> None:
    tool = shutil.which("flock")
    if tool is None:
        pytest.skip("the flock(1) tool is not installed")
    a_mnt, b_mnt = two_mounts
    with shells(1) as (a,):
        fa = a.open(a_mnt.file)
        assert a.call(f"flock {fa} ex nb") == "ok"
        r = subprocess.run([tool, "-n", b_mnt.file, "true"], capture_output=True, timeout=30)
        assert r.returncode == 1, r
        assert subprocess.run([tool, "-n", b_mnt.other, "true"], timeout=30).returncode == 0
        assert a.call(f"flock {fa} un") == "ok"
        assert subprocess.run([tool, "-n", b_mnt.file, "true"], timeout=30).returncode == 0


def test_fcntl_ranges_conflict_and_coexist_across_mounts(two_mounts) -> None:
    a_mnt, b_mnt = two_mounts
    with shells(2) as (a, b):
        fa, fb = a.open(a_mnt.file), b.open(b_mnt.file)
        assert a.call(f"lk {fa} w 0 100") == "ok"
        assert b.call(f"lk {fb} w 100 100") == "ok"  # adjacent ranges coexist
        assert b.call(f"lk {fb} r 99 1") == "err EAGAIN"
        assert b.call(f"getlk {fb} r 0 0") == "lk w 0 100 0", "another mount's holder: pid 0"
        assert a.call(f"lk {fa} r 0 100") == "ok"
        assert b.call(f"lk {fb} r 50 10") == "ok"  # shared across mounts
        assert a.call(f"lk {fa} w 0 100") == "err EAGAIN"


def test_setlkw_on_b_blocks_until_a_unlocks(two_mounts) -> None:
    a_mnt, b_mnt = two_mounts
    with shells(2) as (a, b):
        fa, fb = a.open(a_mnt.file), b.open(b_mnt.file)
        assert a.call(f"lk {fa} w 0 0") == "ok"
        b.start(f"lk {fb} w 0 0 w")
        wait_until(b_mnt.waiting("setlk", b.pid), what="b's F_SETLKW")
        assert b.blocked(1.0)
        assert a.call(f"lk {fa} u 0 0") == "ok"
        assert b.answer() == "ok"
        assert a.call(f"lk {fa} r 0 1") == "err EAGAIN"


def test_killing_a_mount_frees_its_locks_within_the_lease(two_mounts, lock_server) -> None:
    a_mnt, b_mnt = two_mounts
    with shells(2) as (a, b):
        fa, fb = a.open(a_mnt.file), b.open(b_mnt.file)
        assert a.call(f"lk {fa} w 0 0") == "ok"
        assert a.call(f"flock {fa} ex nb") == "ok"
        b.start(f"lk {fb} w 0 0 w")
        wait_until(b_mnt.waiting("setlk", b.pid), what="b's F_SETLKW")
        assert b.blocked(0.5)
        killed = time.monotonic()
        a_mnt.proc.send_signal(signal.SIGKILL)  # the file-system process of mount A dies
        assert b.answer(timeout=10 * lock_server.lease) == "ok"
        freed_after = time.monotonic() - killed
        assert freed_after <= 3 * lock_server.lease, freed_after
        assert b.call(f"flock {fb} ex nb") == "ok"
        a.close()  # its descriptors are on a dead mount
