"""Replication benchmark: one `wasmer-dfs serve` and replicated mounts of one chain, on loopback.

    .venv/bin/python -m bench.replication                 # 200 files, 100 appends, 1 GiB sync
    .venv/bin/python -m bench.replication --quick         # 50 files, 30 appends, 128 MiB sync
    .venv/bin/python -m bench.replication --json out.json

Figures:

* **propagation** (one server, mounts A and B of one chain, per ``--recovery-mode``): for each of
  ``--files`` small files, write+close it on A, then poll B (open+read, retrying on ENOENT or
  other contents, sleeping 0.2 ms) until it holds the contents. p50/p95/max in ms of the whole
  (write on A -> visible on B), split into the write+close on A (in readonly-async the create
  waits for the server's confirmation) and what follows the close. Then ``--appends`` appends of
  16 bytes to one file B has read and stat'ed (its kernel caches the attributes for 300 s): B is
  polled with stat (size) and pread (the new bytes), which measures the invalidation path.
* **initial sync**: A writes ``--sync-mib`` MiB (8 files of random bytes, each fsynced; a final
  mkdir returns once the server confirmed all of it, readonly-async) and is unmounted; then a
  new mount C with an empty log directory is started: the time to C being mounted (it mounts
  only once caught up) and to reading one file back with A's sha256. MB/s = bytes of the
  server's chain log (10^6 bytes) / elapsed.
* **peak RSS** (VmHWM of /proc/PID/status) of the server and of every mount process, per part:
  at mount (includes the passcode's Argon2id), then reset (``clear_refs``) and read again at the
  end of the part.

* **wire encryption** (``--wire-encryption none,256``): every part runs once per setting, the
  settings taking turns within each part (none, 256, none, 256 with ``--rounds 2``); with 256
  the server is started with ``serve --wire-encryption 256`` and every mount with
  ``wasmer-dfs --wire-encryption 256 mount`` (ADR 0013). The report compares propagation p50/p95
  and the initial sync of each setting with the first (``none``).

Every part uses a fresh server and fresh mounts under a temp directory (``/var/tmp/replbench-*``),
removed at the end; every mount is unmounted on every way out (``fusermount3 -u``, wait for the
pid, SIGTERM, SIGKILL by pid, ``fusermount3 -uz`` as a last resort).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import free_port, machine_dict, on_sigterm, read_status_kib, reset_peak_rss

MIB = 1024 * 1024
PASSCODE = "replbench-pass"
MOUNT_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0
VISIBLE_TIMEOUT_S = 30.0
POLL_SLEEP_S = 0.0002
SYNC_FILES = 8
APPEND_BYTES = 16
SEED = 20240601
MODES = ("async", "readonly-async")  # readonly-async is the default


class BenchError(RuntimeError):
    """A process did not start or a figure could not be measured."""


def note(message: str) -> None:
    print(f"replbench: {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------------
def wasmer_dfs_exe() -> str:
    beside = Path(sys.executable).parent / "wasmer-dfs"
    if beside.exists():
        return str(beside)
    found = shutil.which("wasmer-dfs")
    if found is None:
        raise BenchError("the wasmer-dfs console script is not installed")
    return found


def fuse_mounts_under(root: Path) -> list[str]:
    """FUSE mount points at or under ``root`` (from /proc/mounts; never touches a mount)."""
    root_s = str(root)
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or not parts[2].startswith("fuse"):
                continue
            point = parts[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if point == root_s or point.startswith(root_s + "/"):
                found.append(point)
    return found


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def _fusermount(*args: str) -> int:
    try:
        r = subprocess.run(
            ["fusermount3", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=EXIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return -1
    return r.returncode


def _stop_pid(proc: subprocess.Popen[bytes], wait_s: float) -> int | None:
    """Wait for ``proc``; then SIGTERM, then SIGKILL it, by its pid."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        return proc.wait(timeout=wait_s)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(timeout=wait)
    return proc.poll()


class Server:
    """`wasmer-dfs serve` on a free loopback port; stopped by its pid."""

    def __init__(self, exe: str, base: Path, wire: int | None = None) -> None:
        self.data_dir = base / "server"
        self.data_dir.mkdir(parents=True)
        self.log = base / "server.out"
        self.port = free_port()
        extra = [] if wire is None else ["--wire-encryption", str(wire)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [exe, "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--data-dir", str(self.data_dir), *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"the server did not listen:\n{_tail(self.log)}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, chain: str) -> str:
        return f"ws://127.0.0.1:{self.port}/db/{chain}"

    def chain_bytes(self, chain: str) -> int:
        return (self.data_dir / f"{chain}.log").stat().st_size

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        _stop_pid(self.proc, 30.0)


@dataclass
class Mount:
    """One `wasmer-dfs -v mount MNT URL LOGDIR` process."""

    name: str
    mnt: Path
    logdir: Path
    out: Path
    proc: subprocess.Popen[bytes]
    started: float  # perf_counter() just before the process was started
    mounted_after_s: float | None = None
    unmount_exit: int | None = None
    unmount_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def in_proc_mounts(self) -> bool:
        return str(self.mnt) in fuse_mounts_under(self.mnt)

    def wait_mounted(self, timeout: float = MOUNT_TIMEOUT_S, progress: bool = False) -> float:
        """Seconds from the start of the process to the mount point being mounted."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 10
        while not self.in_proc_mounts():
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name}: mount exited with {self.proc.returncode}:\n{_tail(self.out)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: not mounted within {timeout:.0f} s")
            if progress and time.monotonic() > next_note:
                size = sum(p.stat().st_size for p in self.logdir.glob("*") if p.is_file())
                note(f"  {self.name}: not mounted yet, local log {size / MIB:.0f} MiB")
                next_note += 10
            time.sleep(0.01)
        self.mounted_after_s = time.perf_counter() - self.started
        return self.mounted_after_s

    def unmount(self) -> None:
        """fusermount3 -u, wait for the pid; SIGTERM, SIGKILL; fusermount3 -uz at last."""
        start = time.perf_counter()
        if self.proc.poll() is None and self.in_proc_mounts():
            for _ in range(20):
                if _fusermount("-u", str(self.mnt)) == 0 or not self.in_proc_mounts():
                    break
                time.sleep(0.5)  # busy: a poll of ours may still be in flight
        self.unmount_exit = _stop_pid(self.proc, EXIT_TIMEOUT_S)
        self.unmount_s = time.perf_counter() - start
        if self.in_proc_mounts():
            note(f"{self.name}: still mounted after its process ended: lazy unmount")
            _fusermount("-uz", str(self.mnt))


class Cluster:
    """The processes of one part; everything is stopped by ``close`` (mounts first)."""

    def __init__(self, exe: str, base: Path, wire: int | None = None) -> None:
        self.exe = exe
        self.wire = wire
        self.base = base
        self.base.mkdir(parents=True)
        self.server: Server | None = None
        self.mounts: list[Mount] = []

    def start_server(self) -> Server:
        self.server = Server(self.exe, self.base, self.wire)
        return self.server

    def spawn(self, name: str, chain: str, mode: str | None = None) -> Mount:
        assert self.server is not None
        mnt, logdir = self.base / f"{name}-mnt", self.base / f"{name}-log"
        mnt.mkdir()
        logdir.mkdir()
        out = self.base / f"{name}.out"
        wire = [] if self.wire is None else ["--wire-encryption", str(self.wire)]
        cmd = [self.exe, "-v", *wire, "mount", str(mnt), self.server.url(chain), str(logdir)]
        if mode is not None:
            cmd += ["--recovery-mode", mode]
        # the known_servers file of this run (a fresh server key per part: pinned on first use)
        env = {
            **os.environ,
            "WASMER_DFS_PASSCODE": PASSCODE,
            "XDG_CONFIG_HOME": str(self.base / "config"),
        }
        with open(out, "wb") as f:
            started = time.perf_counter()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                cwd=self.base, start_new_session=True,
            )  # fmt: skip
        m = Mount(name, mnt, logdir, out, proc, started)
        self.mounts.append(m)
        return m

    def mount(self, name: str, chain: str, mode: str | None = None) -> Mount:
        m = self.spawn(name, chain, mode)
        m.wait_mounted()
        return m

    def close(self) -> None:
        try:
            for m in reversed(self.mounts):
                try:
                    m.unmount()
                except Exception as exc:  # go on with the others, then the server
                    note(f"{m.name}: teardown: {exc!r}")
        finally:
            if self.server is not None:
                self.server.stop()


@contextlib.contextmanager
def cluster(exe: str, base: Path, wire: int | None = None) -> Iterator[Cluster]:
    c = Cluster(exe, base, wire)
    try:
        yield c
    finally:
        c.close()


# --- RSS ----------------------------------------------------------------------------------------
@dataclass
class Rss:
    """VmHWM (KiB) of the processes of a part: at mount, and the peak during the part."""

    at_start: dict[str, int | None] = field(default_factory=dict)
    peak: dict[str, int | None] = field(default_factory=dict)
    reset: bool = True

    def start(self, name: str, pid: int) -> None:
        self.at_start[name] = read_status_kib(pid, "VmHWM")
        self.reset = reset_peak_rss(pid) and self.reset

    def end(self, name: str, pid: int) -> None:
        self.peak[name] = read_status_kib(pid, "VmHWM")

    def as_json(self) -> dict[str, Any]:
        return {
            "at_mount_kib": self.at_start,
            "peak_kib": self.peak,
            "reset_after_mount": self.reset,
        }


# --- measurements -------------------------------------------------------------------------------
def stats_ms(samples: list[float]) -> dict[str, Any]:
    """p50/p95/max in ms of samples in seconds (p95: nearest rank)."""
    if not samples:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    ordered = sorted(samples)
    rank = max(0, math.ceil(0.95 * len(ordered)) - 1)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered) * 1e3, 3),
        "p95": round(ordered[rank] * 1e3, 3),
        "max": round(ordered[-1] * 1e3, 3),
        "mean": round(statistics.fmean(ordered) * 1e3, 3),
    }


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def poll_until(
    check: Callable[[], bool],
    what: str,
    timeout: float = VISIBLE_TIMEOUT_S,
    on_poll: Callable[[], None] | None = None,
    poll_sleep_s: float | None = None,
) -> float:
    """Call ``check`` (an OSError of ENOENT is "not yet") every 0.2 ms until it holds; returns
    the perf_counter() at which it did. ``on_poll`` runs before every try."""
    poll_sleep_s = POLL_SLEEP_S if poll_sleep_s is None else poll_sleep_s
    deadline = time.monotonic() + timeout
    while True:
        if on_poll is not None:
            on_poll()
        try:
            if check():
                return time.perf_counter()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESTALE):
                raise
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not visible within {timeout:.0f} s")
        time.sleep(poll_sleep_s)


class LogWatch:
    """Where the time after A's close goes: the last time, before B saw the change, that the
    server's chain log and B's local log grew (both are appended before B applies it). A poll
    that finds the growth already there at the first try counts as 0 (it happened during A's
    write+close, as the create of readonly-async does, which waits for the server)."""

    def __init__(self, logs: dict[str, Path]) -> None:
        self.logs = logs
        self.sizes: dict[str, int] = {}
        self.grew: dict[str, float | None] = {}
        self.first_poll: float | None = None

    def _size(self, name: str) -> int:
        try:
            return self.logs[name].stat().st_size
        except OSError:
            return -1

    def begin(self) -> None:
        self.sizes = {k: self._size(k) for k in self.logs}
        self.grew = dict.fromkeys(self.logs)
        self.first_poll = None

    def poll(self) -> None:
        now = time.perf_counter()
        if self.first_poll is None:
            self.first_poll = now
        for k in self.logs:
            size = self._size(k)
            if size != self.sizes[k]:
                self.sizes[k] = size
                self.grew[k] = now

    def after(self, closed: float) -> dict[str, float]:
        """Seconds after the close at which each log last grew (0: during the write+close)."""
        out = {}
        for k, t in self.grew.items():
            out[k] = 0.0 if t is None or t == self.first_poll else max(0.0, t - closed)
        return out


def timed_series(
    n: int,
    write: Callable[[int], Callable[[], bool]],
    what: str,
    watch: LogWatch,
) -> dict[str, Any]:
    """``n`` times: ``write(i)`` on A returns the check that B sees it; poll B until it does."""
    total: list[float] = []
    close: list[float] = []
    after: list[float] = []
    logs: dict[str, list[float]] = {k: [] for k in watch.logs}
    for i in range(n):
        watch.begin()
        t0 = time.perf_counter()
        check = write(i)
        t1 = time.perf_counter()
        t2 = poll_until(check, f"{what} {i}", on_poll=watch.poll)
        total.append(t2 - t0)
        close.append(t1 - t0)
        after.append(t2 - t1)
        for k, v in watch.after(t1).items():
            logs[k].append(v)
    return {
        "total_ms": stats_ms(total),
        "a_write_close_ms": stats_ms(close),
        "after_close_ms": stats_ms(after),
        **{f"close_to_{k}_log_grew_ms": stats_ms(v) for k, v in logs.items()},
    }


def has_contents(path: Path, data: bytes) -> Callable[[], bool]:
    def check() -> bool:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, len(data) + 1) == data
        finally:
            os.close(fd)

    return check


def has_appended(path: Path, size: int, chunk: bytes) -> Callable[[], bool]:
    def check() -> bool:
        if os.stat(path).st_size != size:
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, len(chunk) + 1, size - len(chunk)) == chunk
        finally:
            os.close(fd)

    return check


def propagation(
    exe: str, base: Path, mode: str, files: int, appends: int, wire: int | None = None
) -> dict[str, Any]:
    """New files and appends written on A, polled on B; one fresh server and chain."""
    res: dict[str, Any] = {"mode": mode, "wire_encryption": wire}
    rss = Rss()
    with cluster(exe, base, wire) as c:
        server = c.start_server()
        a = c.mount("A", "prop", mode)
        b = c.mount("B", "prop", mode)
        res["mount_s"] = {
            "A": round(a.mounted_after_s or 0, 3),
            "B": round(b.mounted_after_s or 0, 3),
        }
        for name, pid in (("server", server.pid), ("A", a.pid), ("B", b.pid)):
            rss.start(name, pid)
        rng = random.Random(SEED)
        (a.mnt / "p").mkdir()
        poll_until(lambda: (b.mnt / "p").is_dir(), "the directory")
        for i in range(5):  # warm-up: connections, caches, the first batches
            data = rng.randbytes(200)
            write_file(a.mnt / "p" / f"warm{i}", data)
            poll_until(has_contents(b.mnt / "p" / f"warm{i}", data), "warm-up")

        watch = LogWatch({"server": server.data_dir / "prop.log", "B": b.logdir / "local.log"})

        def new_file(i: int) -> Callable[[], bool]:
            data = f"file {i} ".encode() + rng.randbytes(200)
            write_file(a.mnt / "p" / f"f{i:04d}", data)
            return has_contents(b.mnt / "p" / f"f{i:04d}", data)

        res["create"] = timed_series(files, new_file, "file", watch)
        note(f"  {mode}: new file p50 {res['create']['total_ms']['p50']} ms")

        # an append to a file B has read and whose attributes its kernel caches (300 s)
        src, dst = a.mnt / "p" / "appended", b.mnt / "p" / "appended"
        head = rng.randbytes(100)
        write_file(src, head)
        poll_until(has_contents(dst, head), "the file to append to")
        dst.read_bytes()
        size = os.stat(dst).st_size

        def append(i: int) -> Callable[[], bool]:
            nonlocal size
            chunk = f"{i:06d}".encode() + rng.randbytes(APPEND_BYTES - 6)
            size += len(chunk)
            fd = os.open(src, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, chunk)
            finally:
                os.close(fd)
            return has_appended(dst, size, chunk)

        res["append"] = timed_series(appends, append, "append", watch)
        note(f"  {mode}: append p50 {res['append']['total_ms']['p50']} ms")
        for name, pid in (("server", server.pid), ("A", a.pid), ("B", b.pid)):
            rss.end(name, pid)
        res["chain_bytes"] = server.chain_bytes("prop")
    res["rss"] = rss.as_json()
    res["unmount"] = {
        m.name: {"exit": m.unmount_exit, "s": round(m.unmount_s or 0, 2)} for m in c.mounts
    }
    return res


def initial_sync(exe: str, base: Path, total_mib: int, wire: int | None = None) -> dict[str, Any]:
    """A uploads ``total_mib`` MiB; a new mount C from an empty log catches up."""
    res: dict[str, Any] = {"mib_written": total_mib, "files": SYNC_FILES, "wire_encryption": wire}
    upload_rss, sync_rss = Rss(), Rss()
    per_file = total_mib * MIB // SYNC_FILES
    digests: list[str] = []
    with cluster(exe, base, wire) as c:
        server = c.start_server()
        a = c.mount("A", "sync")
        upload_rss.start("server", server.pid)
        upload_rss.start("A", a.pid)
        rng = random.Random(SEED + 7)
        t0 = time.perf_counter()
        for i in range(SYNC_FILES):
            h = hashlib.sha256()
            fd = os.open(a.mnt / f"big{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                left = per_file
                while left:
                    block = rng.randbytes(min(MIB, left))
                    h.update(block)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view) :]
                    left -= len(block)
                os.fsync(fd)
            finally:
                os.close(fd)
            digests.append(h.hexdigest())
            note(f"  A: wrote big{i}.bin ({per_file / MIB:.0f} MiB)")
        t1 = time.perf_counter()
        # readonly-async: a mkdir returns once the server confirmed every local transaction,
        # the data before it included
        (a.mnt / "done").mkdir()
        t2 = time.perf_counter()
        chain = server.chain_bytes("sync")
        res["chain_bytes"] = chain
        res["a_write_fsync_s"] = round(t1 - t0, 3)
        res["a_write_until_confirmed_s"] = round(t2 - t0, 3)
        res["a_upload_mb_s"] = round(chain / 1e6 / (t2 - t0), 1)
        note(f"  A: {chain / 1e6:.0f} MB on the server after {t2 - t0:.1f} s; unmounting A")
        upload_rss.end("server", server.pid)
        upload_rss.end("A", a.pid)
        a.unmount()
        res["a_unmount"] = {"exit": a.unmount_exit, "s": round(a.unmount_s or 0, 2)}

        reset_peak_rss(server.pid)
        note("  C: mounting from an empty log ...")
        cm = c.spawn("C", "sync")
        rss_peak_c = 0
        mounted_s = cm.wait_mounted(timeout=3600, progress=True)
        sync_rss.start("C", cm.pid)  # the catch-up happens before the mount: at_mount is its peak
        target = len(digests) - 1
        h = hashlib.sha256()
        with open(cm.mnt / f"big{target}.bin", "rb", buffering=0) as f:
            buf = bytearray(MIB)
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
        t_read = time.perf_counter() - cm.started
        if h.hexdigest() != digests[target]:
            raise BenchError(f"C read big{target}.bin with another sha256 than A wrote")
        sync_rss.end("server", server.pid)
        sync_rss.end("C", cm.pid)
        rss_peak_c = max(sync_rss.at_start["C"] or 0, sync_rss.peak["C"] or 0)
        c_log = sum(p.stat().st_size for p in cm.logdir.glob("*") if p.is_file())
        res.update(
            {
                "c_mounted_s": round(mounted_s, 3),
                "c_mounted_mb_s": round(chain / 1e6 / mounted_s, 1),
                "c_read_one_file_s": round(t_read, 3),
                "c_read_one_file_mb_s": round(chain / 1e6 / t_read, 1),
                "c_sha256_ok": True,
                "c_log_bytes": c_log,
                "c_peak_rss_kib": rss_peak_c,
            }
        )
        note(f"  C: mounted after {mounted_s:.1f} s, read back after {t_read:.1f} s")
    res["rss_upload"] = upload_rss.as_json()
    res["rss_sync"] = sync_rss.as_json()
    res["c_unmount"] = {"exit": cm.unmount_exit, "s": round(cm.unmount_s or 0, 2)}
    return res


# --- wire encryption ----------------------------------------------------------------------------
def parse_wires(text: str) -> list[int | None]:
    out: list[int | None] = []
    for item in (x.strip() for x in text.split(",")):
        if item in ("none", "off", "0"):
            out.append(None)
        elif item in ("128", "192", "256"):
            out.append(int(item))
        else:
            raise ValueError(f"--wire-encryption: {item!r} is not none, 128, 192 or 256")
    if not out or len(set(out)) != len(out):
        raise ValueError("--wire-encryption: give each setting once")
    return out


def wire_label(wire: int | None) -> str:
    return "none" if wire is None else str(wire)


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def compare_wires(runs: dict[str, dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Per setting: the median over rounds of propagation p50/p95 (per mode, new file and
    append) and of the initial sync's times; each as a ratio to the first setting."""
    table: dict[str, Any] = {}
    for label, run in runs.items():
        row: dict[str, Any] = {}
        for mode in modes:
            parts = run["propagation"].get(mode) or []
            for kind in ("create", "append"):
                for q in ("p50", "p95"):
                    row[f"{kind}_{mode}_{q}_ms"] = _median([p[kind]["total_ms"][q] for p in parts])
        syncs = run["initial_sync"]
        row["sync_mounted_s"] = _median([x["c_mounted_s"] for x in syncs])
        row["sync_read_one_file_s"] = _median([x["c_read_one_file_s"] for x in syncs])
        row["sync_upload_confirmed_s"] = _median([x["a_write_until_confirmed_s"] for x in syncs])
        table[label] = row
    base_label = next(iter(runs))
    base = table[base_label]
    for row in table.values():
        row["ratio_to_" + base_label] = {
            k: (round(v / base[k], 3) if v is not None and base.get(k) else None)
            for k, v in list(row.items())
            if not k.startswith("ratio_")
        }
    return table


def render_wires(cmp: dict[str, Any]) -> list[str]:
    labels = list(cmp)
    keys = [k for k in cmp[labels[0]] if not k.startswith("ratio_")]
    base = labels[0]
    rows = [["figure (median over rounds)", *labels, *(f"{x}/{base}" for x in labels[1:])]]
    for k in keys:
        unit = "s" if k.endswith("_s") else "ms"
        vals = [cmp[x][k] for x in labels]
        ratios = [cmp[x]["ratio_to_" + base][k] for x in labels[1:]]
        rows.append(
            [
                f"{k} ({unit})",
                *("-" if v is None else f"{v:g}" for v in vals),
                *("-" if r is None else f"{r:.3f}" for r in ratios),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["wire encryption compared:"]
    for i, r in enumerate(rows):
        out.append(
            "  ".join(
                [
                    r[0].ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)),
                ]
            )
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return [*out, ""]


# --- report -------------------------------------------------------------------------------------
def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def render(res: dict[str, Any]) -> str:
    rows: list[list[str]] = [["figure", "unit", "p50", "p95", "max", "n"]]
    for mode, part in res.get("propagation", {}).items():
        for kind, label in (("create", "new file"), ("append", "append, B cached")):
            for key, what in (
                ("total_ms", "A write -> B sees"),
                ("a_write_close_ms", "  of which A write+close"),
                ("after_close_ms", "  of which after the close"),
                ("close_to_server_log_grew_ms", "    close -> server log grew (last)"),
                ("close_to_B_log_grew_ms", "    close -> B's log grew (last)"),
            ):
                s = part[kind][key]
                name = f"{label}, {mode}: {what}" if key == "total_ms" else what
                rows.append([name, "ms", _ms(s["p50"]), _ms(s["p95"]), _ms(s["max"]), str(s["n"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(r: list[str]) -> str:
        return "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        ).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:]), ""]
    sync = res.get("initial_sync")
    if sync:
        chain = sync["chain_bytes"] / 1e6
        out += [
            f"initial sync of a {sync['mib_written']} MiB chain ({chain:.0f} MB on the server):",
            f"  A write+fsync {sync['a_write_fsync_s']:.1f} s, until the server confirmed "
            f"{sync['a_write_until_confirmed_s']:.1f} s ({sync['a_upload_mb_s']:.0f} MB/s up)",
            f"  C mounted after {sync['c_mounted_s']:.1f} s: {sync['c_mounted_mb_s']:.1f} MB/s",
            f"  C read big{SYNC_FILES - 1}.bin (sha256 = A's) after "
            f"{sync['c_read_one_file_s']:.1f} s: {sync['c_read_one_file_mb_s']:.1f} MB/s",
            "",
        ]
    rrows = [["peak RSS (VmHWM), MiB", "server", "A", "B / C"]]

    def rss_row(label: str, kib: dict[str, int | None], third: str = "B") -> list[str]:
        return [label, _mib(kib.get("server")), _mib(kib.get("A")), _mib(kib.get(third))]

    for mode, part in res.get("propagation", {}).items():
        rrows.append(rss_row(f"at mount, {mode}", part["rss"]["at_mount_kib"]))
        rrows.append(rss_row(f"during propagation, {mode}", part["rss"]["peak_kib"]))
    if sync:
        rrows.append(rss_row("during A's upload", sync["rss_upload"]["peak_kib"]))
        peak_c = {**sync["rss_sync"]["peak_kib"], "C": sync["c_peak_rss_kib"]}
        rrows.append(rss_row("during C's initial sync + read", peak_c, "C"))
    w2 = [max(len(r[i]) for r in rrows) for i in range(4)]
    for i, r in enumerate(rrows):
        out.append(
            "  ".join(
                [r[0].ljust(w2[0]), *(c.rjust(w) for c, w in zip(r[1:], w2[1:], strict=True))]
            ).rstrip()
        )
        if i == 0:
            out.append("  ".join("-" * w for w in w2))
    if "wire_comparison" in res:
        out += ["", *render_wires(res["wire_comparison"])]
    m = res["machine"]
    out += [
        "",
        'peak RSS: reset after the mount (clear_refs), so "during" excludes the passcode KDF'
        + ("" if res.get("rss_reset_ok", True) else " (reset NOT permitted: cumulative)"),
        f"machine: nproc={m['nproc']}, memory={m['memory_gib']:.1f} GiB, kernel={m['kernel']}, "
        f"cpu={m['cpu'] or '?'}, date={m['date']}",
    ]
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.replication", description=__doc__.split("\n")[0]
    )
    p.add_argument("--files", type=int, help="new files to propagate per mode (200; quick 50)")
    p.add_argument("--appends", type=int, help="appends to propagate per mode (100; quick 30)")
    p.add_argument("--sync-mib", type=int, help="chain size for the initial sync (1024; quick 128)")
    p.add_argument("--modes", default=",".join(MODES), help=f"recovery modes ({','.join(MODES)})")
    p.add_argument("--parts", default="propagation,sync", help="propagation,sync (default both)")
    p.add_argument(
        "--poll-ms", type=float, default=0.2, help="sleep between two polls of B (0.2 ms)"
    )
    p.add_argument(
        "--wire-encryption",
        default="none",
        help="settings to compare, taking turns: none, 128, 192, 256 (e.g. none,256)",
    )
    p.add_argument("--rounds", type=int, default=1, help="runs of every part per setting (1)")
    p.add_argument("--quick", action="store_true", help="50 files, 30 appends, 128 MiB")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="parent of the run dir")
    p.add_argument("--keep-workdir", action="store_true", help="keep the run dir (process logs)")
    args = p.parse_args(argv)
    global POLL_SLEEP_S
    POLL_SLEEP_S = args.poll_ms / 1000
    files = args.files or (50 if args.quick else 200)
    appends = args.appends or (30 if args.quick else 100)
    sync_mib = args.sync_mib or (128 if args.quick else 1024)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if sync_mib % SYNC_FILES or sync_mib < SYNC_FILES:
        p.error(f"--sync-mib must be a multiple of {SYNC_FILES}")
    try:
        wires = parse_wires(args.wire_encryption)
    except ValueError as exc:
        p.error(str(exc))
    if args.rounds < 1:
        p.error("--rounds must be at least 1")

    exe = wasmer_dfs_exe()
    args.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="replbench-", dir=args.workdir)).resolve()
    previous: Any = None
    with contextlib.suppress(ValueError):
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    res: dict[str, Any] = {"schema": "wasmer-dfs-replbench/1", "propagation": {}}
    runs: dict[str, dict[str, Any]] = {
        wire_label(w): {"propagation": {m: [] for m in modes}, "initial_sync": []} for w in wires
    }
    code = 0
    try:
        if "propagation" in parts:
            for mode in modes:
                for r in range(args.rounds):
                    for w in wires:
                        label = wire_label(w)
                        note(
                            f"propagation, --recovery-mode {mode}, wire encryption {label}"
                            f" (round {r + 1}): {files} files, {appends} appends"
                        )
                        runs[label]["propagation"][mode].append(
                            propagation(
                                exe, run_dir / f"prop-{mode}-{label}-{r}", mode, files, appends, w
                            )
                        )
        if "sync" in parts:
            for r in range(args.rounds):
                for w in wires:
                    label = wire_label(w)
                    note(
                        f"initial sync, wire encryption {label} (round {r + 1}): A writes"
                        f" {sync_mib} MiB, then C mounts from an empty log"
                    )
                    runs[label]["initial_sync"].append(
                        initial_sync(exe, run_dir / f"sync-{label}-{r}", sync_mib, w)
                    )
    except KeyboardInterrupt:
        note("interrupted; mounts were torn down")
        code = 130
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        note(f"failed: {exc}")
        code = 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        left = fuse_mounts_under(run_dir)
        for point in left:
            note(f"left mounted: {point}: lazy unmount")
            _fusermount("-uz", point)
        if args.keep_workdir:
            note(f"work directory kept: {run_dir}")
        elif not fuse_mounts_under(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
    first = runs[wire_label(wires[0])]
    res["propagation"] = {m: first["propagation"][m][0] for m in modes if first["propagation"][m]}
    if first["initial_sync"]:
        res["initial_sync"] = first["initial_sync"][0]
    if len(wires) > 1 or args.rounds > 1:
        res["wire"] = runs
        res["wire_comparison"] = compare_wires(runs, modes)
    res["machine"] = machine_dict()
    res["rss_reset_ok"] = all(
        part["rss"]["reset_after_mount"] for part in res["propagation"].values()
    )
    res["config"] = {
        "files": files,
        "appends": appends,
        "append_bytes": APPEND_BYTES,
        "sync_mib": sync_mib,
        "sync_files": SYNC_FILES,
        "modes": modes,
        "parts": sorted(parts),
        "poll_sleep_s": POLL_SLEEP_S,
        "quick": args.quick,
        "wire_encryption": [wire_label(w) for w in wires],
        "rounds": args.rounds,
        "wasmer_dfs": exe,
        "workdir": str(run_dir),
    }
    if res["propagation"] or "initial_sync" in res:
        print(render(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        note(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
