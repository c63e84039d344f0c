"""Tools of the lock tests (tests/kernel/test_fuse_locks.py, tests/mount/test_locks_two_mounts.py):

* run as a script, a *lock shell*: a process that takes lock commands on stdin and answers each
  with one line on stdout, i.e. a lock owner (a POSIX lock owner is a process) that a test
  drives step by step; ``Shell`` is its driver;
* ``ThreadServer``: a chain server (``WsChainServer``) on its own event loop in a thread, with
  the lock lease a test wants.

The lock shell's commands (FD is the number ``open`` answered; TYPE is r, w or u; LEN 0 = to
the end of the file):

    open PATH                 -> "fd N"
    dup FD                    -> "fd N"
    close FD                  -> "ok"
    lk FD TYPE START LEN [w]  -> fcntl F_SETLK (with w: F_SETLKW): "ok" or "err ERRNAME"
    ofd FD TYPE START LEN [w] -> the same with F_OFD_SETLK(W)
    getlk FD TYPE START LEN   -> "lk TYPE START LEN PID" (TYPE u: nothing conflicts)
    ofdgetlk FD TYPE START LEN
    flock FD sh|ex|un [nb]    -> "ok" or "err ERRNAME"
    write FD OFFSET TEXT      -> "ok"
    read FD OFFSET SIZE       -> "data TEXT"
    pid                       -> "pid N"

SIGUSR1 interrupts a blocking command: its answer is "err EINTR".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

FLOCK = struct.Struct("hhqqi4x")
TYPES = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}
NAMES = {v: k for k, v in TYPES.items()}
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)


class Interrupted(Exception):
    pass


def on_usr1(signum: int, frame: object) -> None:
    raise Interrupted()


def run(words: list[str], fds: list[int]) -> str:
    cmd = words[0]
    if cmd == "pid":
        return f"pid {os.getpid()}"
    if cmd == "open":
        fds.append(os.open(words[1], os.O_RDWR))
        return f"fd {len(fds) - 1}"
    fd = fds[int(words[1])]
    if cmd == "dup":
        fds.append(os.dup(fd))
        return f"fd {len(fds) - 1}"
    if cmd == "close":
        os.close(fd)
        return "ok"
    if cmd in ("lk", "ofd"):
        kind, start, length = TYPES[words[2]], int(words[3]), int(words[4])
        blocking = len(words) > 5 and words[5] == "w"
        if cmd == "lk":
            op = fcntl.F_SETLKW if blocking else fcntl.F_SETLK
        else:
            op = F_OFD_SETLKW if blocking else F_OFD_SETLK
        fcntl.fcntl(fd, op, FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
        return "ok"
    if cmd in ("getlk", "ofdgetlk"):
        kind, start, length = TYPES[words[2]], int(words[3]), int(words[4])
        op = fcntl.F_GETLK if cmd == "getlk" else F_OFD_GETLK
        t, _, s, n, pid = FLOCK.unpack(fcntl.fcntl(fd, op, FLOCK.pack(kind, 0, start, length, 0)))
        return f"lk {NAMES[t]} {s} {n} {pid}"
    if cmd == "flock":
        op = {"sh": fcntl.LOCK_SH, "ex": fcntl.LOCK_EX, "un": fcntl.LOCK_UN}[words[2]]
        if len(words) > 3 and words[3] == "nb":
            op |= fcntl.LOCK_NB
        fcntl.flock(fd, op)
        return "ok"
    if cmd == "write":
        os.pwrite(fd, words[3].encode(), int(words[2]))
        return "ok"
    if cmd == "read":
        return "data " + os.pread(fd, int(words[3]), int(words[2])).decode(errors="replace")
    return f"unknown command {cmd}"


def main() -> None:
    signal.signal(signal.SIGUSR1, on_usr1)
    fds: list[int] = []
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            answer = run(words, fds)
        except Interrupted:
            answer = "err EINTR"
        except OSError as exc:
            answer = f"err {errno.errorcode.get(exc.errno or 0, exc.errno)}"
        print(answer, flush=True)


# --- the driver (in the test process) -------------------------------------------------------------
class Shell:
    """A running lock shell. ``call`` sends a command and returns its answer; ``start`` sends
    one that is expected to block, ``blocked`` checks that it still has no answer, ``answer``
    waits for it."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        self._sel.register(proc.stdout, selectors.EVENT_READ)
        assert self._line(10.0) == "ready"
        self.pid = proc.pid

    @classmethod
    def spawn(cls) -> Shell:
        proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        return cls(proc)

    def _line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        if not self._sel.select(timeout):
            return None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(f"the lock shell died: {err}")
        return line.strip()

    def start(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 10.0) -> str:
        line = self._line(timeout)
        if line is None:
            raise AssertionError(f"no answer within {timeout} s")
        return line

    def blocked(self, seconds: float = 0.3) -> bool:
        """No answer within ``seconds`` (the last command still blocks)."""
        return self._line(seconds) is None

    def call(self, cmd: str, timeout: float = 10.0) -> str:
        self.start(cmd)
        return self.answer(timeout)

    def open(self, path: str) -> int:
        answer = self.call(f"open {path}")
        assert answer.startswith("fd "), answer
        return int(answer.split()[1])

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._sel.close()


class ThreadServer:
    """A chain server on 127.0.0.1 (a free port) served by a thread's event loop."""

    def __init__(self, data_dir: Path, *, lease: float = 1.5, grace: float = 0.0) -> None:
        from adapters.clock import SystemClock
        from adapters.redolog import FileRedoLogFactory
        from adapters.ws_server import WsChainServer
        from application.chain_server import ChainServer, ServerConfig
        from application.lock_server import LockConfig
        from tests.fakes import FastCrypto

        self.lease = lease
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = ServerConfig(locks=LockConfig(lease=lease, grace=grace))

        async def start() -> WsChainServer:
            app = ChainServer(FileRedoLogFactory(data_dir), FastCrypto(), SystemClock(), config)
            server = WsChainServer(app, "127.0.0.1", 0)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def url(self, chain: str = "fs") -> str:
        return f"{self.server.url}/db/{chain}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@contextlib.contextmanager
def shells(n: int) -> Iterator[list[Shell]]:
    """``n`` lock shells, killed on the way out."""
    out: list[Shell] = []
    try:
        for _ in range(n):
            out.append(Shell.spawn())
        yield out
    finally:
        for sh in out:
            sh.close()


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.02)


if __name__ == "__main__":
    main()
