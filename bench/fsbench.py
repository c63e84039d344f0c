"""File system benchmark harness: wasmer-dfs against plain, gocryptfs, cryfs and sshfs.

Every target is a context manager that builds a fresh mount inside the run's work
directory and always tears it down (unmount in a ``finally``, daemons stopped by
their pid).  All targets are mounted at once and each repeat of each workload runs on one
target after another, so that the noise of a shared machine falls on all of them alike.
The same workloads run ``--repeat`` times on each mount; the result is
a table of ``median (min-max)`` cells with a ratio-to-gocryptfs column per target
(``> 1.0`` always means faster than gocryptfs) and the peak RSS of the daemon.

Run ``python -m bench.fsbench --help`` (or ``wasmer-dfs bench --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    MachineInfo,
    free_port,
    machine_info,
    on_sigterm,
    read_status_kib,
    reset_peak_rss,
)

MIB = 1024 * 1024
BLOCK_SIZE = MIB
SMALL_FILE_SIZE = 4096
FILES_PER_DIR = 100
IO_SIZE = 4096
SEED = 20240601
PASSWORD = "benchpass"
MOUNT_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0
BASELINE = "gocryptfs"
ALL_TARGETS: tuple[str, ...] = ("plain", "gocryptfs", "cryfs", "sshfs", "wasmer-dfs")
EN_DASH = "\u2013"
QUICK_TAR_MEMBERS: tuple[str, ...] = ("json", "email", "logging", "http", "urllib", "os.py")


class BenchError(RuntimeError):
    """A target could not be set up, or a workload failed."""


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class WorkloadConfig:
    seq_bytes: int = 512 * MIB
    files: int = 5000
    random_bytes: int = 256 * MIB
    random_ops: int = 4096
    seed: int = SEED
    tarball: Path | None = None
    drop_caches: Callable[[], None] = lambda: None


WorkloadFn = Callable[[Path, int, WorkloadConfig], dict[str, float]]


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    figures: tuple[Figure, ...]
    run: WorkloadFn


# --------------------------------------------------------------------------- workloads


def _payload(size: int, seed: int) -> bytes:
    """Incompressible, reproducible bytes."""
    return random.Random(seed).randbytes(size)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_file(path: Path, size: int, block: bytes) -> None:
    """Write ``size`` bytes in ``len(block)`` chunks, fsync and close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        remaining = size
        while remaining > 0:
            chunk = block if remaining >= len(block) else block[:remaining]
            _write_all(fd, chunk)
            remaining -= len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _rate(amount: float, seconds: float) -> float:
    return amount / max(seconds, 1e-9)


def workload_seq(root: Path, index: int, cfg: WorkloadConfig) -> dict[str, float]:
    """Sequential write (1 MiB blocks, fsync at the end), then cold sequential read."""
    path = root / f"seq-{index}.bin"
    block = _payload(BLOCK_SIZE, cfg.seed)
    start = time.perf_counter()
    _write_file(path, cfg.seq_bytes, block)
    write_s = time.perf_counter() - start

    cfg.drop_caches()
    buf = bytearray(BLOCK_SIZE)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    read_s = time.perf_counter() - start
    os.unlink(path)
    if total != cfg.seq_bytes:
        raise BenchError(f"seq read returned {total} bytes, expected {cfg.seq_bytes}")
    return {
        "seq_write": _rate(cfg.seq_bytes / 1e6, write_s),
        "seq_read": _rate(cfg.seq_bytes / 1e6, read_s),
    }


def small_file_paths(base: Path, files: int) -> tuple[list[Path], list[Path]]:
    """``files`` paths spread over ``ceil(files / 100)`` subdirectories of 100 files."""
    ndirs = max(1, -(-files // FILES_PER_DIR))
    dirs = [base / f"d{d:03d}" for d in range(ndirs)]
    paths = [dirs[i // FILES_PER_DIR] / f"f{i:05d}" for i in range(files)]
    return dirs, paths


def workload_small(root: Path, index: int, cfg: WorkloadConfig) -> dict[str, float]:
    """Create+write, stat (cold), read and unlink ``cfg.files`` files of 4 KiB."""
    base = root / f"small-{index}"
    dirs, paths = small_file_paths(base, cfg.files)
    base.mkdir()
    for d in dirs:
        d.mkdir()
    data = _payload(SMALL_FILE_SIZE, cfg.seed)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    start = time.perf_counter()
    for p in paths:
        fd = os.open(p, flags, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    create_s = time.perf_counter() - start

    cfg.drop_caches()
    start = time.perf_counter()
    for p in paths:
        os.stat(p)
    stat_s = time.perf_counter() - start

    start = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            got = os.read(fd, SMALL_FILE_SIZE + 1)
        finally:
            os.close(fd)
        if len(got) != SMALL_FILE_SIZE:
            raise BenchError(f"{p}: read {len(got)} bytes, expected {SMALL_FILE_SIZE}")
    read_s = time.perf_counter() - start

    start = time.perf_counter()
    for p in paths:
        os.unlink(p)
    unlink_s = time.perf_counter() - start

    for d in dirs:
        d.rmdir()
    base.rmdir()
    n = len(paths)
    return {
        "small_create": _rate(n, create_s),
        "small_stat": _rate(n, stat_s),
        "small_read": _rate(n, read_s),
        "small_unlink": _rate(n, unlink_s),
    }


def _run_checked(argv: Sequence[str], what: str, timeout: float | None = None) -> None:
    proc = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def workload_untar(root: Path, index: int, cfg: WorkloadConfig) -> dict[str, float]:
    """``tar xf`` of the standard library tarball into the mount, then ``rm -rf`` of it."""
    if cfg.tarball is None:
        raise BenchError("untar workload needs a tarball")
    # Warm the tarball (it lives on the work disk, not on the mount) so that only
    # the target's write path is timed.
    with open(cfg.tarball, "rb") as f:
        while f.read(BLOCK_SIZE):
            pass
    dest = root / f"untar-{index}"
    dest.mkdir()
    start = time.perf_counter()
    _run_checked(["tar", "-xf", str(cfg.tarball), "-C", str(dest)], "tar xf")
    untar_s = time.perf_counter() - start

    cfg.drop_caches()
    start = time.perf_counter()
    _run_checked(["rm", "-rf", "--", str(dest)], "rm -rf")
    rm_s = time.perf_counter() - start
    return {"untar": untar_s, "rm_rf": rm_s}


def random_offsets(file_bytes: int, ops: int, seed: int) -> list[int]:
    """``ops`` random IO_SIZE-aligned offsets inside a file of ``file_bytes``."""
    nblocks = file_bytes // IO_SIZE
    if nblocks < 1:
        raise BenchError("random I/O file is smaller than one block")
    rng = random.Random(seed)
    return [rng.randrange(nblocks) * IO_SIZE for _ in range(ops)]


def workload_random(root: Path, index: int, cfg: WorkloadConfig) -> dict[str, float]:
    """Random aligned 4 KiB preads (cold), then pwrites followed by one fsync."""
    path = root / f"rand-{index}.bin"
    _write_file(path, cfg.random_bytes, _payload(BLOCK_SIZE, cfg.seed + 1))
    read_offsets = random_offsets(cfg.random_bytes, cfg.random_ops, cfg.seed)
    write_offsets = random_offsets(cfg.random_bytes, cfg.random_ops, cfg.seed + 1)
    data = _payload(IO_SIZE, cfg.seed + 2)

    cfg.drop_caches()
    fd = os.open(path, os.O_RDWR)
    try:
        start = time.perf_counter()
        for off in read_offsets:
            got = os.pread(fd, IO_SIZE, off)
            if len(got) != IO_SIZE:
                raise BenchError(f"short pread at {off}: {len(got)} bytes")
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        for off in write_offsets:
            if os.pwrite(fd, data, off) != IO_SIZE:
                raise BenchError(f"short pwrite at {off}")
        os.fsync(fd)
        write_s = time.perf_counter() - start
    finally:
        os.close(fd)
    os.unlink(path)
    return {
        "rand_read": _rate(cfg.random_ops, read_s),
        "rand_write": _rate(cfg.random_ops, write_s),
    }


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "seq",
        "sequential",
        (
            Figure("seq_write", "seq write 1 MiB blocks + fsync", "MB/s", True),
            Figure("seq_read", "seq read 1 MiB blocks (cold)", "MB/s", True),
        ),
        workload_seq,
    ),
    Workload(
        "small",
        "small files",
        (
            Figure("small_create", "small files create+write 4 KiB", "files/s", True),
            Figure("small_stat", "small files stat (cold)", "stats/s", True),
            Figure("small_read", "small files read", "files/s", True),
            Figure("small_unlink", "small files unlink", "files/s", True),
        ),
        workload_small,
    ),
    Workload(
        "untar",
        "untar + rm -rf",
        (
            Figure("untar", "tar xf stdlib tree", "s", False),
            Figure("rm_rf", "rm -rf stdlib tree (cold)", "s", False),
        ),
        workload_untar,
    ),
    Workload(
        "random",
        "random 4 KiB I/O",
        (
            Figure("rand_read", "random 4 KiB pread (cold)", "ops/s", True),
            Figure("rand_write", "random 4 KiB pwrite + fsync", "ops/s", True),
        ),
        workload_random,
    ),
)
FIGURES: tuple[Figure, ...] = tuple(f for w in WORKLOADS for f in w.figures)


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def stdlib_dir() -> Path:
    return Path(os.__file__).resolve().parent


def make_tarball(dest: Path, source: Path | None = None, members: Sequence[str] = ()) -> Path:
    """Tar ``source`` (default: the standard library) without caches and site-packages.

    With ``members`` only those entries of ``source`` are archived (``--quick``).
    """
    src = (source or stdlib_dir()).resolve()
    names = [m for m in members if (src / m).exists()] if members else ["."]
    if not names:
        raise BenchError(f"none of {list(members)} exist under {src}")
    argv = [
        "tar",
        "-cf",
        str(dest),
        "--exclude=__pycache__",
        "--exclude=site-packages",
        "-C",
        str(src),
        *names,
    ]
    _run_checked(argv, "tar cf", timeout=600)
    return dest


# --------------------------------------------------------------------------- processes, mounts


def _unescape_mount_field(value: str) -> str:
    """Decode the octal escapes (``\\040`` for a space, ...) of /proc/mounts fields."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), value)


def mounted_paths(mounts_file: str = "/proc/self/mounts") -> list[str]:
    try:
        with open(mounts_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [_unescape_mount_field(line.split()[1]) for line in lines if len(line.split()) > 1]


def is_mounted(path: Path) -> bool:
    """True while ``path`` is a mount point, also when its FUSE daemon died (ENOTCONN)."""
    return os.path.realpath(path) in mounted_paths()


def mounts_under(path: Path) -> list[str]:
    root = os.path.realpath(path).rstrip("/") + "/"
    return [m for m in mounted_paths() if m.startswith(root)]


def _log_tail(path: Path, limit: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _proc_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The comm field may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (a /proc look-up)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _proc_ppid(int(e)) == pid]


def _wait_children_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while child_pids(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _is_descendant(pid: int, ancestor: int) -> bool:
    seen = 0
    current: int | None = pid
    while current and current > 1 and seen < 64:
        if current == ancestor:
            return True
        current = _proc_ppid(current)
        seen += 1
    return False


def find_daemon_pid(mountpoint: Path, hint: int | None = None) -> int | None:
    """The pid of the process serving ``mountpoint``, found by its command line.

    A look-up only (never used to signal anything).  ``hint`` is the process we
    started: a descendant of it that names the mount point with a different command
    line wins (a wrapper script that runs the daemon), then ``hint`` itself, then
    any process naming the mount point (a daemon that forked and detached).
    """
    wanted = {str(mountpoint), os.path.realpath(mountpoint)}

    def serves(pid: int) -> bool:
        args = _proc_cmdline(pid)
        if not args or "fusermount" in os.path.basename(args[0]):
            return False
        return any(a.rstrip("/") in wanted for a in args[1:])

    candidates = [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and int(e) != os.getpid() and serves(int(e))
    ]
    if hint is not None:
        hint_args = _proc_cmdline(hint)
        execs = [
            p
            for p in candidates
            if p != hint and _is_descendant(p, hint) and _proc_cmdline(p) != hint_args
        ]
        if execs:
            return min(execs)
        if hint in candidates:
            return hint
    return min(candidates) if candidates else None


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for a process we did not start (so cannot reap) to disappear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if state[state.rfind(")") + 2 :].startswith("Z"):
            return True
        time.sleep(0.05)
    return False


def _which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    sbin = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"])
    return shutil.which(tool, path=sbin)


def _start_daemon(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session (a terminal ^C reaches only us: we tear down)."""
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    if stdin is not None and proc.stdin is not None:
        try:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        except OSError:
            pass
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = EXIT_TIMEOUT_S) -> int | None:
    """Wait for ``proc`` to exit; SIGTERM then SIGKILL it, by pid, if it does not."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def unmount(mountpoint: Path, notes: Callable[[str], None] | None = None) -> None:
    """``fusermount3 -u`` (retried while busy), ``fusermount3 -uz`` as a last resort."""
    if not is_mounted(mountpoint):
        return
    fusermount = _which("fusermount3") or "fusermount3"
    last = ""
    for _ in range(10):
        proc = subprocess.run(
            [fusermount, "-u", str(mountpoint)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if not is_mounted(mountpoint):
            return
        last = proc.stderr.strip()
        time.sleep(0.5)
    if notes:
        notes(f"unmount of {mountpoint} failed ({last}); lazy unmount")
    subprocess.run(
        [fusermount, "-uz", str(mountpoint)], stdin=subprocess.DEVNULL, capture_output=True
    )
    if is_mounted(mountpoint) and os.geteuid() == 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def wait_mounted(
    mountpoint: Path,
    proc: subprocess.Popen[bytes],
    log: Path,
    what: str = "daemon",
    timeout: float = MOUNT_TIMEOUT_S,
) -> None:
    """Wait until ``mountpoint`` is mounted; fail early if ``proc`` dies.

    A daemon that forks and whose parent exits with 0 is given the full timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint) and is_mounted(mountpoint):
            return
        rc = proc.poll()
        if rc is not None and rc != 0:
            raise BenchError(f"{what} exited with {rc} before mounting:\n{_log_tail(log)}")
        time.sleep(0.05)
    raise BenchError(f"{mountpoint} not mounted after {timeout:.0f} s:\n{_log_tail(log)}")


@dataclass(frozen=True)
class Daemon:
    proc: subprocess.Popen[bytes]
    """The process we started."""
    pid: int | None
    """The process serving the mount (``proc.pid``, or what it forked)."""


@contextlib.contextmanager
def fuse_daemon(
    argv: Sequence[str],
    mountpoint: Path,
    log: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    notes: Callable[[str], None] | None = None,
) -> Iterator[Daemon]:
    """Run a FUSE daemon; always unmount it and stop the process we started by its pid."""
    proc: subprocess.Popen[bytes] | None = None
    daemon_pid: int | None = None
    try:
        proc = _start_daemon(argv, log, env=env, stdin=stdin)
        wait_mounted(mountpoint, proc, log, what=shlex.join(argv))
        daemon_pid = find_daemon_pid(mountpoint, proc.pid)
        yield Daemon(proc, daemon_pid)
    finally:
        try:
            unmount(mountpoint, notes)
        finally:
            if proc is not None:
                stop_process(proc)
            # A daemon forked by the process we started exits once unmounted.  It was
            # found by a look-up, so it is waited for, not signalled.
            forked = daemon_pid if proc is not None and daemon_pid != proc.pid else None
            lingering = forked is not None and not wait_pid_gone(forked, EXIT_TIMEOUT_S)
            if lingering and notes:
                notes(f"daemon pid {forked} of {mountpoint} still running")


def _remove_tree(path: Path, notes: Callable[[str], None] | None = None) -> None:
    leftover = mounts_under(path) + ([str(path)] if is_mounted(path) else [])
    if leftover:
        if notes:
            notes(f"not removing {path}: still mounted: {', '.join(leftover)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"sshd exited with {proc.returncode}:\n{_log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"sshd not listening on 127.0.0.1:{port}:\n{_log_tail(log)}")


def _tool_version(argv: Sequence[str], pattern: str = "") -> str:
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "CRYFS_NO_UPDATE_CHECK": "true"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    for line in lines:
        if not pattern or re.search(pattern, line, re.IGNORECASE):
            return line
    return ""


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class MountedTarget:
    path: Path
    """Directory the workloads run in."""
    pid: int | None = None
    """Pid of the file system daemon (None for the plain directory)."""


Notes = Callable[[str], None]


class Target(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """None when the target can run, else why it is skipped."""
        ...

    def version(self) -> str: ...

    def mount(
        self, workdir: Path, notes: Notes
    ) -> contextlib.AbstractContextManager[MountedTarget]: ...


def _missing(*tools: str) -> str | None:
    missing = [t for t in tools if _which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (run bench/setup_peers.sh)"
    if not os.path.exists("/dev/fuse") and "fusermount3" in tools:
        return "/dev/fuse is missing"
    return None


class PlainTarget:
    name = "plain"

    def unavailable(self) -> str | None:
        return None

    def version(self) -> str:
        return "directory on the work disk"

    @contextlib.contextmanager
    def mount(self, workdir: Path, notes: Notes) -> Iterator[MountedTarget]:
        root = workdir / "plain"
        root.mkdir(parents=True)
        try:
            yield MountedTarget(root)
        finally:
            _remove_tree(root, notes)


class GocryptfsTarget:
    name = "gocryptfs"

    def unavailable(self) -> str | None:
        return _missing("gocryptfs", "fusermount3")

    def version(self) -> str:
        return _tool_version(["gocryptfs", "-version"], "gocryptfs")

    @contextlib.contextmanager
    def mount(self, workdir: Path, notes: Notes) -> Iterator[MountedTarget]:
        base = workdir / "gocryptfs"
        cipher, mnt, passfile = base / "cipher", base / "mnt", base / "passfile"
        try:
            cipher.mkdir(parents=True)
            mnt.mkdir()
            passfile.write_text(PASSWORD + "\n")
            init = ["gocryptfs", "-init", "-q", "-scryptn", "10", "-passfile", str(passfile)]
            _run_checked([*init, str(cipher)], "gocryptfs -init", timeout=60)
            argv = ["gocryptfs", "-fg", "-passfile", str(passfile), str(cipher), str(mnt)]
            with fuse_daemon(argv, mnt, base / "daemon.log", notes=notes) as daemon:
                yield MountedTarget(mnt, daemon.pid)
        finally:
            _remove_tree(base, notes)


class CryfsTarget:
    name = "cryfs"

    def unavailable(self) -> str | None:
        return _missing("cryfs", "fusermount3")

    def version(self) -> str:
        return _tool_version(["cryfs", "--version"], "cryfs")

    @contextlib.contextmanager
    def mount(self, workdir: Path, notes: Notes) -> Iterator[MountedTarget]:
        base = workdir / "cryfs"
        basedir, mnt, state = base / "basedir", base / "mnt", base / "state"
        env = {
            **os.environ,
            "CRYFS_FRONTEND": "noninteractive",
            "CRYFS_NO_UPDATE_CHECK": "true",
            # cryfs remembers every file system it saw under $XDG_DATA_HOME/cryfs;
            # keep that in the work directory instead of the user's home.
            "XDG_DATA_HOME": str(state),
        }
        try:
            for d in (basedir, mnt, state):
                d.mkdir(parents=True)
            argv = ["cryfs", "-f", str(basedir), str(mnt)]
            log = base / "daemon.log"
            # Non-interactive frontend: the password is read once from stdin, the
            # cipher (xchacha20-poly1305) and block size (16 KiB) are the defaults.
            with fuse_daemon(argv, mnt, log, env=env, stdin=PASSWORD + "\n", notes=notes) as dm:
                yield MountedTarget(mnt, dm.pid)
        finally:
            _remove_tree(base, notes)


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
LogLevel ERROR
Subsystem sftp {sftp_server}
"""


class SshfsTarget:
    name = "sshfs"

    def unavailable(self) -> str | None:
        return _missing("sshfs", "sshd", "ssh", "ssh-keygen", "fusermount3")

    def version(self) -> str:
        return _tool_version(["sshfs", "--version"], "sshfs version")

    @contextlib.contextmanager
    def mount(self, workdir: Path, notes: Notes) -> Iterator[MountedTarget]:
        base = workdir / "sshfs"
        sshdir, remote, mnt = base / "ssh", base / "remote", base / "mnt"
        sshd: subprocess.Popen[bytes] | None = None
        try:
            for d in (sshdir, remote, mnt):
                d.mkdir(parents=True)
            host_key, client_key = sshdir / "host_ed25519", sshdir / "client_ed25519"
            for key in (host_key, client_key):
                keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)]
                _run_checked(keygen, "ssh-keygen", timeout=30)
            authorized = sshdir / "authorized_keys"
            authorized.write_text(client_key.with_suffix(".pub").read_text())
            authorized.chmod(0o600)
            sftp = "/usr/lib/openssh/sftp-server"
            port = free_port()
            config = sshdir / "sshd_config"
            config.write_text(
                SSHD_CONFIG.format(
                    port=port,
                    host_key=host_key,
                    pid_file=sshdir / "sshd.pid",
                    authorized_keys=authorized,
                    sftp_server=sftp if os.path.exists(sftp) else "internal-sftp",
                )
            )
            if os.geteuid() == 0:
                # sshd's privilege separation directory (tmpfs, gone after a reboot).
                os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            sshd_bin = _which("sshd") or "/usr/sbin/sshd"  # sshd needs an absolute path
            log = base / "sshd.log"
            sshd = _start_daemon([sshd_bin, "-D", "-e", "-f", str(config)], log)
            _wait_port(port, sshd, log)
            ssh_opts = ",".join(
                [
                    "StrictHostKeyChecking=no",
                    "UserKnownHostsFile=/dev/null",
                    f"IdentityFile={client_key}",
                    "IdentitiesOnly=yes",
                    "BatchMode=yes",
                    "LogLevel=ERROR",
                ]
            )
            argv = [
                "sshfs",
                "-f",
                f"{getpass.getuser()}@127.0.0.1:{remote}",
                str(mnt),
                "-p",
                str(port),
                "-F",
                "/dev/null",
                "-o",
                ssh_opts,
            ]
            with fuse_daemon(argv, mnt, base / "sshfs.log", notes=notes) as daemon:
                yield MountedTarget(mnt, daemon.pid)
        finally:
            try:
                if sshd is not None:
                    # The per-connection sshd exits once sshfs has disconnected; give it a
                    # moment so that the listener (stopped by its pid) leaves no orphan.
                    _wait_children_gone(sshd.pid, timeout=5)
                    stop_process(sshd, timeout=0)
            finally:
                _remove_tree(base, notes)


class WasmerDfsTarget:
    name = "wasmer-dfs"

    def __init__(self, cmd: str = "wasmer-dfs") -> None:
        self.argv = shlex.split(cmd)

    def _resolved(self) -> list[str] | None:
        if not self.argv:
            return None
        exe = self.argv[0]
        found = _which(exe)
        if found is None and os.sep not in exe:
            # `python -m bench.fsbench` from a venv that is not on PATH.
            sibling = Path(sys.executable).parent / exe
            if os.access(sibling, os.X_OK):
                found = str(sibling)
        return [found, *self.argv[1:]] if found else None

    def unavailable(self) -> str | None:
        if self._resolved() is None:
            return f"command not found: {shlex.join(self.argv) or '(empty)'} (--wasmer-dfs-cmd)"
        return _missing("fusermount3")

    def version(self) -> str:
        argv = self._resolved()
        return _tool_version([*argv, "--version"]) if argv else ""

    @contextlib.contextmanager
    def mount(self, workdir: Path, notes: Notes) -> Iterator[MountedTarget]:
        base = workdir / "wasmer-dfs"
        mnt, logdir = base / "mnt", base / "log"
        argv = self._resolved()
        if argv is None:
            raise BenchError(self.unavailable() or "wasmer-dfs command not found")
        env = {**os.environ, "WASMER_DFS_PASSCODE": PASSWORD}
        try:
            mnt.mkdir(parents=True)
            logdir.mkdir()
            cmd = [*argv, "mount", str(mnt), str(logdir)]
            with fuse_daemon(cmd, mnt, base / "daemon.log", env=env, notes=notes) as daemon:
                yield MountedTarget(mnt, daemon.pid)
        finally:
            _remove_tree(base, notes)


def make_target(name: str, wasmer_dfs_cmd: str = "wasmer-dfs") -> Target:
    if name == "plain":
        return PlainTarget()
    if name == "gocryptfs":
        return GocryptfsTarget()
    if name == "cryfs":
        return CryfsTarget()
    if name == "sshfs":
        return SshfsTarget()
    if name == "wasmer-dfs":
        return WasmerDfsTarget(wasmer_dfs_cmd)
    raise ValueError(f"unknown target {name!r}; choose among {', '.join(ALL_TARGETS)}")


# --------------------------------------------------------------------------- results and math


@dataclass(frozen=True)
class Summary:
    min: float
    median: float
    max: float


def summarize(samples: Sequence[float]) -> Summary | None:
    if not samples:
        return None
    return Summary(min(samples), float(statistics.median(samples)), max(samples))


def ratio_to_baseline(value: float, baseline: float, higher_is_better: bool) -> float | None:
    """``> 1.0`` means faster than the baseline (inverted for durations)."""
    if higher_is_better:
        return value / baseline if baseline > 0 else None
    return baseline / value if value > 0 else None


@dataclass
class TargetResult:
    name: str
    status: str = "pending"  # ok | failed | skipped | interrupted
    note: str = ""
    version: str = ""
    pid: int | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    rss_kib: dict[str, list[int]] = field(default_factory=dict)
    startup_hwm_kib: int | None = None
    rss_reset: bool = False

    @property
    def ran(self) -> bool:
        return bool(self.samples) or self.status in ("ok", "failed", "interrupted")

    def summary(self, key: str) -> Summary | None:
        return summarize(self.samples.get(key, []))

    def peak_rss_kib(self, workload: str | None = None) -> int | None:
        if workload is not None:
            values = self.rss_kib.get(workload, [])
        else:
            values = [v for vs in self.rss_kib.values() for v in vs]
        return max(values) if values else None


def ratio_for(
    results: Sequence[TargetResult], target: TargetResult, fig: Figure, baseline: str = BASELINE
) -> float | None:
    base = next((r for r in results if r.name == baseline), None)
    if base is None or target.name == baseline:
        return None
    s, b = target.summary(fig.key), base.summary(fig.key)
    if s is None or b is None:
        return None
    return ratio_to_baseline(s.median, b.median, fig.higher_is_better)


def fmt_num(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_cell(summary: Summary | None) -> str:
    if summary is None:
        return "-"
    return f"{fmt_num(summary.median)} ({fmt_num(summary.min)}{EN_DASH}{fmt_num(summary.max)})"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def render_table(
    results: Sequence[TargetResult],
    machine: MachineInfo | None = None,
    workloads: Sequence[Workload] = WORKLOADS,
    baseline: str = BASELINE,
    notes: Sequence[str] = (),
) -> str:
    """The result table: ``median (min-max)`` per target, ratios to ``baseline``."""
    shown = [r for r in results if r.ran]
    has_baseline = any(r.name == baseline for r in shown)
    header = ["figure", "unit"]
    columns: list[tuple[TargetResult, bool]] = []  # (target, is_ratio_column)
    for r in shown:
        header.append(r.name)
        columns.append((r, False))
        if has_baseline and r.name != baseline:
            header.append(f"{r.name}/{baseline}")
            columns.append((r, True))

    rows: list[list[str]] = []
    for wl in workloads:
        for fig in wl.figures:
            row = [fig.label, fig.unit]
            for r, is_ratio in columns:
                if is_ratio:
                    row.append(fmt_ratio(ratio_for(shown, r, fig, baseline)))
                else:
                    row.append(fmt_cell(r.summary(fig.key)))
            rows.append(row)
    rss_rows: list[list[str]] = []
    for wl in workloads:
        rss_rows.append([f"peak RSS during {wl.label}", "MiB"])
    rss_rows.append(["peak RSS (all workloads)", "MiB"])
    rss_rows.append(["peak RSS at mount (incl. KDF)", "MiB"])
    for r, is_ratio in columns:
        for i, wl in enumerate(workloads):
            rss_rows[i].append("" if is_ratio else _fmt_mib(r.peak_rss_kib(wl.name)))
        rss_rows[-2].append("" if is_ratio else _fmt_mib(r.peak_rss_kib()))
        rss_rows[-1].append("" if is_ratio else _fmt_mib(r.startup_hwm_kib))

    all_rows = [header, *rows, *rss_rows]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *(line(r) for r in rows), rule, *(line(r) for r in rss_rows)]
    out.append("")
    if has_baseline and len(shown) > 1:
        out.append(
            f"ratio columns: median / {baseline} median (inverted for seconds), "
            f"> 1.0 = faster than {baseline}"
        )
    out.append(
        "peak RSS: VmHWM of the file system daemon, reset before each workload "
        "(cumulative where the reset is not permitted)"
    )
    out.extend(notes)
    for r in results:
        if r.status != "ok" or r.note:
            out.append(f"{r.name}: {r.status}{': ' + r.note if r.note else ''}")
    if machine is not None:
        out.append(machine.line())
    return "\n".join(out)


def results_to_json(
    results: Sequence[TargetResult],
    machine: MachineInfo,
    config: dict[str, Any],
    workloads: Sequence[Workload] = WORKLOADS,
    baseline: str = BASELINE,
) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for r in results:
        figures: dict[str, Any] = {}
        for wl in workloads:
            for fig in wl.figures:
                s = r.summary(fig.key)
                figures[fig.key] = {
                    "label": fig.label,
                    "unit": fig.unit,
                    "higher_is_better": fig.higher_is_better,
                    "workload": wl.name,
                    "samples": list(r.samples.get(fig.key, [])),
                    "min": s.min if s else None,
                    "median": s.median if s else None,
                    "max": s.max if s else None,
                    f"ratio_to_{baseline}": ratio_for(results, r, fig, baseline),
                }
        targets[r.name] = {
            "status": r.status,
            "note": r.note,
            "version": r.version,
            "figures": figures,
            "rss_kib": {
                "daemon_pid": r.pid,
                "reset_per_workload": r.rss_reset,
                "startup_peak": r.startup_hwm_kib,
                "per_workload_samples": {k: list(v) for k, v in r.rss_kib.items()},
                "per_workload_peak": {wl.name: r.peak_rss_kib(wl.name) for wl in workloads},
                "peak": r.peak_rss_kib(),
            },
        }
    return {
        "schema": "wasmer-dfs-fsbench/1",
        "baseline": baseline,
        "machine": vars(machine),
        "config": config,
        "figure_order": [f.key for wl in workloads for f in wl.figures],
        "targets": targets,
    }


# --------------------------------------------------------------------------- progress


class Reporter:
    """Progress to stderr: a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, fancy: bool | None = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._progress: Any = None
        self._task: Any = None
        if fancy is None:
            fancy = sys.stderr.isatty()
        if fancy:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )
            except ImportError:
                return
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("fsbench", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(f"fsbench: {message}", file=sys.stderr, flush=True)

    def start(self, description: str, counted: bool = True) -> None:
        """Announce the next step (``counted``: a workload run, numbered in plain mode)."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)
        elif counted:
            print(f"fsbench: [{self.done + 1}/{self.total}] {description}", file=sys.stderr)
        else:
            print(f"fsbench: {description}", file=sys.stderr)

    def advance(self, steps: int = 1) -> None:
        self.done = min(self.total, self.done + steps)
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)


# --------------------------------------------------------------------------- runner


def read_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def settle(pid: int | None, quiet: float = 2.5, limit: float = 60.0) -> None:
    """Waits until the daemon that just ran a workload has stopped working (under 2 % of a CPU
    for ``quiet`` seconds; at most ``limit`` seconds), so that work it deferred to an idle
    moment (a compaction, a flush) does not run while the next target is measured. ``quiet``
    outlasts the wait of wasmer-dfs' compaction for an idle moment (a second without requests,
    checked every second)."""
    if pid is None:
        return
    deadline = time.monotonic() + limit
    last = read_cpu_seconds(pid)
    while last is not None and time.monotonic() < deadline:
        time.sleep(quiet)
        now = read_cpu_seconds(pid)
        if now is None or now - last < 0.02 * quiet:
            return
        last = now


def run_targets(
    targets: Sequence[Target],
    workdir: Path,
    workloads: Sequence[Workload],
    cfg: WorkloadConfig,
    repeat: int,
    reporter: Reporter,
) -> list[TargetResult]:
    """Mounts every available target, then runs each repeat of each workload on one target
    after another (interleaved), so that a slow minute of a noisy machine falls on all of them
    alike rather than on whichever target ran then. After each step the daemon is left to
    settle. A target that fails is reported and left out of the remaining steps."""
    results = [TargetResult(t.name) for t in targets]
    steps = len(workloads) * repeat
    live: list[tuple[Target, TargetResult, MountedTarget]] = []
    done: dict[str, int] = {}

    def fail(result: TargetResult, exc: BaseException) -> None:
        result.status, result.note = "failed", f"{type(exc).__name__}: {exc}"
        reporter.note(f"{result.name}: failed: {result.note}")

    def unmount(target: Target, result: TargetResult, cm: Any) -> None:
        reporter.start(f"{target.name}: unmounting", counted=False)
        try:
            cm.__exit__(None, None, None)
        except (OSError, subprocess.SubprocessError, BenchError) as exc:
            fail(result, exc)

    with contextlib.ExitStack() as stack:
        for target, result in zip(targets, results, strict=True):
            reason = target.unavailable()
            if reason:
                result.status, result.note = "skipped", reason
                reporter.note(f"{target.name}: skipped: {reason}")
                reporter.advance(steps)
                continue
            result.version = target.version()
            reporter.start(f"{target.name}: mounting", counted=False)
            cm = target.mount(workdir, reporter.note)
            try:
                mounted = cm.__enter__()
            except (OSError, subprocess.SubprocessError, BenchError) as exc:
                fail(result, exc)
                reporter.advance(steps)
                continue
            stack.callback(unmount, target, result, cm)
            result.pid = mounted.pid
            if mounted.pid is not None:
                result.startup_hwm_kib = read_status_kib(mounted.pid, "VmHWM")
            live.append((target, result, mounted))
            done[target.name] = 0
        try:
            for wl in workloads:
                for i in range(repeat):
                    for target, result, mounted in live:
                        if result.status == "failed":
                            continue
                        reporter.start(f"{target.name}: {wl.label} #{i + 1}/{repeat}")
                        if mounted.pid is not None:
                            result.rss_reset = reset_peak_rss(mounted.pid)
                        try:
                            figures = wl.run(mounted.path, i, cfg)
                        except (OSError, subprocess.SubprocessError, BenchError) as exc:
                            fail(result, exc)
                            reporter.advance(steps - done[target.name])
                            continue
                        for key, value in figures.items():
                            result.samples.setdefault(key, []).append(value)
                        if mounted.pid is not None:
                            hwm = read_status_kib(mounted.pid, "VmHWM")
                            if hwm is not None:
                                result.rss_kib.setdefault(wl.name, []).append(hwm)
                        done[target.name] += 1
                        reporter.advance()
                        settle(mounted.pid)
        except KeyboardInterrupt:
            for _, result, _ in live:
                if result.status != "failed":
                    result.status, result.note = "interrupted", "interrupted by the user"
            raise
        for _, result, _ in live:
            if result.status == "pending":
                result.status = "ok"
    return results


def _parse_targets(value: str | None, parser: argparse.ArgumentParser) -> list[str]:
    if not value or value == "all":
        return list(ALL_TARGETS)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_TARGETS]
    if unknown:
        parser.error(
            f"unknown target(s) {', '.join(unknown)}; choose among {','.join(ALL_TARGETS)}"
        )
    return list(dict.fromkeys(names))


def _parse_workloads(value: str | None, parser: argparse.ArgumentParser) -> list[Workload]:
    if not value or value == "all":
        return list(WORKLOADS)
    by_name = {w.name: w for w in WORKLOADS}
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose among {','.join(by_name)}")
    return [by_name[n] for n in dict.fromkeys(names)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmer-dfs bench",
        description="Benchmark wasmer-dfs against plain, gocryptfs, cryfs and sshfs mounts.",
    )
    parser.add_argument(
        "--targets",
        help=f"comma list among {','.join(ALL_TARGETS)} (default: all; missing tools are skipped)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (default 3)")
    parser.add_argument("--size-mib", type=int, help="sequential file size in MiB (default 512)")
    parser.add_argument("--files", type=int, help="number of 4 KiB small files (default 5000)")
    parser.add_argument("--random-mib", type=int, help="random-I/O file size in MiB (default 256)")
    parser.add_argument("--random-ops", type=int, help="random reads and writes (default 4096)")
    parser.add_argument(
        "--workloads", help="comma list among seq,small,untar,random (default: all)"
    )
    parser.add_argument("--json", type=Path, help="write raw samples and summaries to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke runs")
    parser.add_argument(
        "--workdir", type=Path, help="parent of the run's temp directory (default /var/tmp)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="do not delete the run dir")
    parser.add_argument(
        "--wasmer-dfs-cmd",
        default="wasmer-dfs",
        help="command that provides `mount MOUNTPOINT LOGDIR` (default: wasmer-dfs)",
    )
    parser.add_argument(
        "--no-drop-caches",
        action="store_true",
        help="do not drop the page cache before the cold reads (needs root otherwise)",
    )
    return parser


def _positive(value: int | None, default: int, quick: int, is_quick: bool) -> int:
    if value is not None:
        return value
    return quick if is_quick else default


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = _parse_targets(args.targets, parser)
    workloads = _parse_workloads(args.workloads, parser)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    quick: bool = args.quick
    seq_mib = _positive(args.size_mib, 512, 8, quick)
    files = _positive(args.files, 5000, 200, quick)
    random_mib = _positive(args.random_mib, 256, 8, quick)
    random_ops = _positive(args.random_ops, 4096, 256, quick)
    if min(seq_mib, files, random_mib, random_ops) < 1:
        parser.error("sizes and counts must be >= 1")

    parent = args.workdir or Path("/var/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="fsbench-", dir=parent)).resolve()

    previous_handler: Any = None
    with contextlib.suppress(ValueError):  # not in the main thread
        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

    machine = machine_info()
    results: list[TargetResult] = []
    cache_note: list[str] = []
    exit_code = 0
    config: dict[str, Any] = {}
    reporter = Reporter(len(names) * len(workloads) * args.repeat)
    try:
        with reporter:
            drop_ok = True

            def dropper() -> None:
                nonlocal drop_ok
                if args.no_drop_caches:
                    return
                if not drop_caches() and drop_ok:
                    drop_ok = False
                    cache_note.append("cannot write /proc/sys/vm/drop_caches: reads are warm")
                    reporter.note(cache_note[-1])

            tarball: Path | None = None
            if any(w.name == "untar" for w in workloads):
                reporter.note(f"tarring {stdlib_dir()} into {run_dir}")
                members = QUICK_TAR_MEMBERS if quick else ()
                tarball = make_tarball(run_dir / "stdlib.tar", members=members)
            cfg = WorkloadConfig(
                seq_bytes=seq_mib * MIB,
                files=files,
                random_bytes=random_mib * MIB,
                random_ops=random_ops,
                tarball=tarball,
                drop_caches=dropper,
            )
            config = {
                "targets": names,
                "workloads": [w.name for w in workloads],
                "repeat": args.repeat,
                "quick": quick,
                "seq_mib": seq_mib,
                "block_size": BLOCK_SIZE,
                "files": files,
                "small_file_size": SMALL_FILE_SIZE,
                "files_per_dir": FILES_PER_DIR,
                "random_mib": random_mib,
                "random_ops": random_ops,
                "io_size": IO_SIZE,
                "seed": cfg.seed,
                "tarball": str(tarball) if tarball else None,
                "tarball_bytes": tarball.stat().st_size if tarball else None,
                "drop_caches": not args.no_drop_caches,
                "workdir": str(run_dir),
                "wasmer_dfs_cmd": args.wasmer_dfs_cmd,
            }
            targets = [make_target(name, args.wasmer_dfs_cmd) for name in names]
            results.extend(run_targets(targets, run_dir, workloads, cfg, args.repeat, reporter))
    except KeyboardInterrupt:
        print("fsbench: interrupted; mounts were torn down", file=sys.stderr)
        exit_code = 130
    except BenchError as exc:
        print(f"fsbench: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if args.keep_workdir:
            print(f"fsbench: work directory kept: {run_dir}", file=sys.stderr)
        else:
            _remove_tree(run_dir, lambda m: print(f"fsbench: {m}", file=sys.stderr))

    config["drop_caches_effective"] = not args.no_drop_caches and not cache_note
    if args.no_drop_caches:
        cache_note.append("page cache NOT dropped (--no-drop-caches): cold reads are warm")
    config["notes"] = list(cache_note)
    if results:
        print(render_table(results, machine, workloads, notes=cache_note))
    if args.json:
        doc = results_to_json(results, machine, config, workloads)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"fsbench: wrote {args.json}", file=sys.stderr)
    if exit_code == 0 and any(r.status == "failed" for r in results):
        exit_code = 1
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
