"""The wasmer-dfs pyfuse3 patch (docs/adr/0006), tested through the kernel: each test mounts
tests/kernel/pyfuse3_lockfs.py (a tiny in-memory file system on the patched pyfuse3, run on
asyncio in a subprocess), drives it with real system calls, and reads back the JSON log in
which the file system records every call of a handler the patch adds.

Skipped, with a warning, where FUSE is unavailable or the installed pyfuse3 lacks the patch
(build it with ``bash scripts/build_pyfuse3.sh .venv``). Every mount is torn down on every way
out: ``fusermount3 -u``, then the helper is waited for, then killed by its pid, then a lazy
``fusermount3 -uz`` as a last resort.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helperfs import HelperFs, helper_mounts

HELPER = Path(__file__).with_name("pyfuse3_lockfs.py")
WAIT = 10.0
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
# struct flock on Linux x86-64/aarch64: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (+ padding).
FLOCK_STRUCT = struct.Struct("hhqqi4x")


def _why_skip() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not on PATH"
    try:
        import pyfuse3
    except ImportError as exc:
        return f"pyfuse3 does not import ({exc})"
    if getattr(pyfuse3, "WASMER_DFS_PATCH", 0) < 1:
        return (
            f"the installed pyfuse3 {pyfuse3.__version__} lacks the wasmer-dfs patch "
            "(pyfuse3.WASMER_DFS_PATCH): run `bash scripts/build_pyfuse3.sh .venv`"
        )
    return None


SKIP_REASON = _why_skip()
if SKIP_REASON is not None:
    message = f"tests/kernel/test_pyfuse3_patch.py is SKIPPED: {SKIP_REASON}"
    print(f"\n!!! {message}\n", file=sys.stderr)
    warnings.warn(message, stacklevel=1)

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)),
]


# --- the mount ------------------------------------------------------------------------------
class Mount(HelperFs):
    def last(self, op: str) -> dict[str, Any]:
        found = self.records(op)
        assert found, f"no {op!r} call was recorded; the log holds {self.records()}"
        return found[-1]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for rec in self.records():
                if pred(rec):
                    return rec
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; the log holds {self.records()}")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """mount(*flags) -> Mount: starts the helper file system with the given flags."""
    yield from helper_mounts(
        tmp_path,
        Mount,
        "pyfuse3_lockfs",
        lambda root, log: [sys.executable, str(HELPER), str(root), str(log)],
    )


@contextlib.contextmanager
def opened(path: str, count: int = 1) -> Iterator[list[int]]:
    """*count* separate open() calls on *path*: separate open file descriptions."""
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.open(path, os.O_RDWR))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


# --- child processes (a POSIX lock owner other than this process) --------------------------
CHILD = r"""
import fcntl, json, os, signal, struct, sys

class Interrupted(Exception):
    pass

def on_usr1(signum, frame):
    raise Interrupted()

signal.signal(signal.SIGUSR1, on_usr1)
FLOCK = struct.Struct("hhqqi4x")
path, action = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
try:
    if action in ("lockf_ex", "lockf_sh"):
        fcntl.lockf(fd, fcntl.LOCK_EX if action == "lockf_ex" else fcntl.LOCK_SH)
    elif action in ("flock_ex", "flock_sh"):
        fcntl.flock(fd, fcntl.LOCK_EX if action == "flock_ex" else fcntl.LOCK_SH)
    elif action == "probe":
        q = FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        t, w, start, length, pid = FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, q))
        conflicting = nonconflicting = "ok"
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 105)
        except OSError as exc:
            conflicting = exc.errno
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 50, 0)
        except OSError as exc:
            nonconflicting = exc.errno
        print(json.dumps({"getlk": [t, w, start, length, pid], "conflicting": conflicting,
                          "nonconflicting": nonconflicting, "pid": os.getpid()}))
    print("locked", flush=True)
except Interrupted:
    print("interrupted", flush=True)
    sys.exit(3)
except OSError as exc:
    print("error", exc.errno, flush=True)
    sys.exit(4)
"""


@contextlib.contextmanager
def child(path: str, action: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, action],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # by its pid
            proc.wait(timeout=WAIT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def waiting(op: str, pid: int) -> Callable[[dict[str, Any]], bool]:
    """A record that the *op* request of process *pid* is waiting for a lock."""
    return lambda r: r["op"] == op and r.get("phase") == "wait" and r["pid"] == pid


def cancelled(op: str, pid: int) -> Callable[[dict[str, Any]], bool]:
    """A record that the *op* request of process *pid* was cancelled (FUSE_INTERRUPT)."""
    return lambda r: r["op"] == op and r.get("result") == "cancelled" and r["pid"] == pid


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for a child; return its exit code and output (fail if it does not end)."""
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the child is still blocked: nothing ended its lock wait") from None
    assert proc.returncode in (0, 3, 4, -signal.SIGKILL), f"child failed:\n{err}"
    return proc.returncode, out


# --- flock(2) -------------------------------------------------------------------------------
def test_flock_reaches_the_handler_and_conflicts_between_open_file_descriptions(mount):
    m = mount("--locks")
    with opened(m.file, 2) as (fd1, fd2):
        fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first = m.last("flock")
        assert first["lock_op"] == fcntl.LOCK_EX | fcntl.LOCK_NB
        assert first["result"] == "ok"
        assert first["pid"] == os.getpid()

        with pytest.raises(BlockingIOError) as exc:
            fcntl.flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert exc.value.errno == errno.EWOULDBLOCK
        refused = m.last("flock")
        assert refused["result"] == "EWOULDBLOCK"
        assert refused["lock_op"] == fcntl.LOCK_SH | fcntl.LOCK_NB
        assert refused["owner"] != first["owner"], "two open() calls must be two flock owners"

        dup = os.dup(fd1)  # same open file description: same owner, converts the lock
        try:
            fcntl.flock(dup, fcntl.LOCK_SH | fcntl.LOCK_NB)
            assert m.last("flock")["owner"] == first["owner"]
        finally:
            os.close(dup)

        fcntl.flock(fd1, fcntl.LOCK_UN)
        unlock = m.last("flock")
        assert (unlock["lock_op"], unlock["owner"]) == (fcntl.LOCK_UN, first["owner"])
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = m.last("flock")
        assert second["result"] == "ok"
        assert second["owner"] == refused["owner"]

    # The last close of each open file description asks to drop its flock locks.
    released = m.wait_for(
        lambda r: r["op"] == "release_locks" and r["flock"] and r["owner"] == second["owner"],
        "release_locks(flock=True) for the second open file description",
    )
    assert released["dropped"] == 1


def test_blocking_flock_waits_in_the_handler_and_is_woken_or_killed(mount):
    m = mount("--locks")
    with opened(m.file) as (fd,):
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert m.last("flock")["lock_op"] == fcntl.LOCK_EX  # no LOCK_NB: may sleep

        with child(m.file, "flock_ex") as victim:
            m.wait_for(waiting("flock", victim.pid), "the child's flock() to wait")
            victim.send_signal(signal.SIGKILL)
            code, _ = finish(victim)
            assert code == -signal.SIGKILL
        m.wait_for(cancelled("flock", victim.pid), "the killed child's flock() to be cancelled")

        with child(m.file, "flock_ex") as waiter:
            m.wait_for(waiting("flock", waiter.pid), "the second child's flock() to wait")
            fcntl.flock(fd, fcntl.LOCK_UN)
            code, out = finish(waiter)
            assert (code, out.strip()) == (0, "locked")


# --- POSIX locks ----------------------------------------------------------------------------
def test_fcntl_locks_reach_setlk_and_getlk_with_range_and_type(mount):
    m = mount("--locks")
    with opened(m.file) as (fd,):
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 100)  # F_SETLK F_WRLCK [100, 110)
        held = m.last("setlk")
        assert (held["type"], held["start"], held["len"], held["whence"]) == (
            fcntl.F_WRLCK,
            100,
            10,
            os.SEEK_SET,
        )
        assert held["sleep"] is False
        assert held["result"] == "ok"
        assert held["lock_pid"] == held["pid"] == os.getpid()

        # Our own lock never conflicts with us: F_GETLK answers F_UNLCK.
        query = FLOCK_STRUCT.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, *_ = FLOCK_STRUCT.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
        assert l_type == fcntl.F_UNLCK
        own = m.last("getlk")
        assert (own["type"], own["start"], own["len"]) == (fcntl.F_WRLCK, 0, 0)
        assert own["owner"] == held["owner"]

        # Another process is another owner: it sees our lock, range and pid.
        with child(m.file, "probe") as probe:
            code, out = finish(probe)
        assert code == 0, out
        seen = json.loads(out.splitlines()[0])
        assert seen["getlk"] == [fcntl.F_WRLCK, os.SEEK_SET, 100, 10, os.getpid()]
        assert seen["conflicting"] in (errno.EAGAIN, errno.EACCES)
        assert seen["nonconflicting"] == "ok"
        asked = [r for r in m.records("getlk") if r["pid"] == seen["pid"]][-1]
        assert (asked["type"], asked["start"], asked["len"]) == (fcntl.F_RDLCK, 0, 0)
        assert asked["answer"]["type"] == fcntl.F_WRLCK
        assert asked["owner"] != held["owner"]
        refused = [r for r in m.records("setlk") if r["pid"] == seen["pid"]]
        assert [(r["type"], r["start"], r["len"], r["result"]) for r in refused] == [
            (fcntl.F_RDLCK, 105, 1, "EAGAIN"),
            (fcntl.F_WRLCK, 0, 50, "ok"),
        ]

        fcntl.lockf(fd, fcntl.LOCK_UN, 10, 100)
        unlock = m.last("setlk")
        assert (unlock["type"], unlock["start"], unlock["len"]) == (fcntl.F_UNLCK, 100, 10)

        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # whole file: len 0
        whole = m.last("setlk")
        assert (whole["type"], whole["start"], whole["len"]) == (fcntl.F_RDLCK, 0, 0)

    # close() (FLUSH) drops the POSIX locks of the closing process.
    released = m.wait_for(
        lambda r: r["op"] == "release_locks" and not r["flock"] and r["owner"] == held["owner"],
        "release_locks(flock=False) on close",
    )
    assert released["dropped"] == 1


def test_blocked_setlkw_is_woken_by_unlock_and_cancelled_by_fuse_interrupt(mount):
    m = mount("--locks")

    with opened(m.file) as (fd,):
        fcntl.lockf(fd, fcntl.LOCK_EX)  # F_SETLKW on the whole file, granted at once

        # A signal whose handler raises: the kernel sends FUSE_INTERRUPT, pyfuse3 cancels
        # the handler and answers EINTR, the child's handler runs.
        with child(m.file, "lockf_ex") as signalled:
            rec = m.wait_for(waiting("setlk", signalled.pid), "the child's F_SETLKW to wait")
            assert rec["sleep"] is True
            signalled.send_signal(signal.SIGUSR1)
            code, out = finish(signalled)
            assert (code, out.strip()) == (3, "interrupted")
        m.wait_for(cancelled("setlk", signalled.pid), "the interrupted F_SETLKW to be cancelled")

        # SIGKILL: without the interrupt the child would hang until the lock is free.
        with child(m.file, "lockf_ex") as killed:
            m.wait_for(waiting("setlk", killed.pid), "the second child's F_SETLKW to wait")
            killed.send_signal(signal.SIGKILL)
            code, _ = finish(killed)
            assert code == -signal.SIGKILL
        m.wait_for(cancelled("setlk", killed.pid), "the killed child's F_SETLKW to be cancelled")

        with child(m.file, "lockf_ex") as woken:
            m.wait_for(waiting("setlk", woken.pid), "the third child's F_SETLKW to wait")
            fcntl.lockf(fd, fcntl.LOCK_UN)
            code, out = finish(woken)
            assert (code, out.strip()) == (0, "locked")


def test_lock_waiters_beyond_max_tasks_do_not_starve_the_file_system(mount):
    m = mount("--locks")  # the helper runs pyfuse3.main(max_tasks=16)
    with opened(m.file) as (fd,), contextlib.ExitStack() as stack:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        kids = [
            stack.enter_context(child(m.file, "flock_sh" if i % 3 == 0 else "lockf_sh"))
            for i in range(20)
        ]
        for kid in kids:
            op = "flock" if kid.args[-1] == "flock_sh" else "setlk"
            m.wait_for(waiting(op, kid.pid), f"child {kid.pid} to wait")
        # 20 sleeping lock requests > max_tasks: the unlocks must still be read and served.
        fcntl.flock(fd, fcntl.LOCK_UN)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        assert [finish(kid) for kid in kids] == [(0, "locked\n")] * len(kids)


def test_terminate_ends_lock_waits_so_that_the_file_system_can_exit(mount):
    m = mount("--locks")
    fd = os.open(m.file, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        with child(m.file, "lockf_ex") as waiter:
            m.wait_for(waiting("setlk", waiter.pid), "the child's F_SETLKW to wait")
            m.proc.send_signal(signal.SIGTERM)  # the helper calls pyfuse3.terminate()
            assert m.proc.wait(timeout=WAIT) == 0, m.stderr.read_text(errors="replace")
            assert finish(waiter) == (4, f"error {errno.EIO}\n")
        assert m.records("setlk")[-1]["result"] == "cancelled"
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: the file system is gone
            os.close(fd)


# --- the asyncio main loop (ADR 0012) ------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_requests_beyond_the_old_worker_pool_run_at_once(mount):
    # Each GETATTR of `other` waits until 40 are in flight; pyfuse3's worker pool (max_tasks=16
    # in the helper) would hold the 17th back until the gate times out after 5 s.
    from concurrent.futures import ThreadPoolExecutor

    m = mount("--gate")
    count = 40
    start = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        sizes = list(pool.map(lambda _: os.stat(m.other).st_size, range(count)))
    elapsed = time.monotonic() - start
    assert sizes == [0] * count
    gates = m.records("gate")
    assert len(gates) == count
    assert all(g["opened"] for g in gates), "the lookups did not all run at the same time"
    assert elapsed < 4.0


def test_an_idle_file_system_spends_no_cpu_after_a_burst_of_requests(mount):
    m = mount()
    for _ in range(2000):
        os.stat(m.file)
        with contextlib.suppress(FileNotFoundError):
            os.stat(m.root / "missing")
    time.sleep(0.2)
    before = _cpu_seconds(m.proc.pid)
    time.sleep(1.0)
    assert _cpu_seconds(m.proc.pid) - before < 0.1, "the main loop kept spinning while idle"


# --- fallocate, lseek, copy_file_range ------------------------------------------------------
def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_fallocate_reaches_the_handler_with_mode_and_range(mount):
    m = mount("--locks")
    with opened(m.file) as (fd,):
        os.posix_fallocate(fd, 0, 8192)
        rec = m.last("fallocate")
        assert (rec["mode"], rec["offset"], rec["length"]) == (0, 0, 8192)
        assert os.fstat(fd).st_size == 8192

        os.pwrite(fd, b"x" * 8192, 0)
        _fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 4096, 1000)
        rec = m.last("fallocate")
        assert (rec["mode"], rec["offset"], rec["length"]) == (
            FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
            4096,
            1000,
        )
        assert os.fstat(fd).st_size == 8192
        assert os.pread(fd, 1002, 4095) == b"x" + bytes(1000) + b"x"

        os.posix_fallocate(fd, 8192, 4096)
        assert (m.last("fallocate")["offset"], m.last("fallocate")["length"]) == (8192, 4096)
        assert os.fstat(fd).st_size == 12288


def test_lseek_data_and_hole_reach_the_handler(mount):
    m = mount()
    with opened(m.file) as (fd,):
        os.pwrite(fd, b"y" * 100, 0)
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        rec = m.last("lseek")
        assert (rec["offset"], rec["whence"]) == (0, os.SEEK_DATA)
        assert os.lseek(fd, 10, os.SEEK_HOLE) == 100
        rec = m.last("lseek")
        assert (rec["offset"], rec["whence"]) == (10, os.SEEK_HOLE)
        with pytest.raises(OSError) as exc:
            os.lseek(fd, 200, os.SEEK_DATA)
        assert exc.value.errno == errno.ENXIO


def test_copy_file_range_reaches_the_handler(mount):
    m = mount()
    with opened(m.file) as (src,), opened(m.other) as (dst,):
        os.pwrite(src, b"0123456789", 0)
        assert os.copy_file_range(src, dst, 4, 3, 1) == 4
        rec = m.last("copy_file_range")
        assert (rec["off_in"], rec["off_out"], rec["length"], rec["flags"]) == (3, 1, 4, 0)
        assert rec["fh_in"] != rec["fh_out"]
        assert os.pread(dst, 10, 0) == b"\x003456"


# --- without the opt-in, behaviour is unpatched pyfuse3's ----------------------------------
def test_locks_stay_in_the_kernel_unless_the_file_system_opts_in(mount):
    m = mount()  # LockFS implements the handlers, but enable_flock/enable_posix_locks are off
    with opened(m.file, 2) as (fd1, fd2):
        fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused by the kernel itself
        fcntl.lockf(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 100)
        query = FLOCK_STRUCT.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        assert FLOCK_STRUCT.unpack(fcntl.fcntl(fd1, fcntl.F_GETLK, query))[0] == fcntl.F_UNLCK
        os.posix_fallocate(fd1, 0, 100)  # not a lock: still the file system's
    ops = {r["op"] for r in m.records()}
    assert ops.isdisjoint({"flock", "getlk", "setlk", "release_locks"}), ops
    assert "fallocate" in ops


def test_operations_without_the_new_methods_mount_and_work_as_before(mount):
    m = mount("--plain")
    with opened(m.file, 2) as (fd1, fd2):
        assert os.pwrite(fd1, b"plain", 0) == 5
        assert os.pread(fd2, 5, 0) == b"plain"
        fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OSError) as exc:
            _fallocate(fd1, 0, 0, 4096)  # default handler: ENOSYS -> kernel says EOPNOTSUPP
        assert exc.value.errno == errno.EOPNOTSUPP
        assert os.lseek(fd1, 0, os.SEEK_DATA) == 0  # kernel fallback: all data
        assert os.lseek(fd1, 0, os.SEEK_HOLE) == 5
    assert [r["op"] for r in m.records()] == ["init"]
