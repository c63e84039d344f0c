"""`wasmer-dfs mount --background`: the command returns once the file system is mounted and
usable, or exits with the mount's own error and exit code.

How: the command (the *parent*) gets the secret first (a prompt, --passfile, --extpass, so an
askpass program still has the terminal), then starts the same command line again as a *daemon*
in a new session, stdin from /dev/null, and relays what the daemon writes to the terminal until
the daemon says it is mounted. Three things pass from the parent to the daemon, by environment
variables naming inherited file descriptors:

* ``WASMER_DFS_DAEMON_READY_FD``: a pipe on which the daemon writes one byte once the file
  system is mounted (from the runner's ``on_mounted``); closed without it = it failed, and the
  parent exits with the daemon's exit code after relaying its message.
* ``WASMER_DFS_DAEMON_SECRET_FD``: a pipe with the passcode (never the environment or argv).
* the daemon's stdout and stderr: a pipe the parent relays until ready.

Once mounted, the daemon's messages and Python logging go to ``--log FILE``, else to syslog /
the journal through /dev/log when that socket exists, else to ``LOGS_DIR/daemon.out`` (the
parent says which); its file descriptors 1 and 2 go to the log file or /dev/null. It writes a
record, ``LOGS_DIR/.wasmer-dfs-daemon.json`` (pid, mount point; at exit the warnings and errors
of its unmount) that `wasmer-dfs umount` reads (entrypoints/unmounting.py).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import logging.handlers
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from entrypoints.console import STOPPED, say

READY_FD_ENV = "WASMER_DFS_DAEMON_READY_FD"
SECRET_FD_ENV = "WASMER_DFS_DAEMON_SECRET_FD"
RECORD_NAME = ".wasmer-dfs-daemon.json"
DEFAULT_LOG_NAME = "daemon.out"
SYSLOG_SOCKET = "/dev/log"
#: seconds the parent waits, once the daemon is mounted, for the last lines it wrote to arrive
DRAIN_SECONDS = 5.0
CONSOLE_LOGGER = "wasmer_dfs.console"

_log = logging.getLogger("wasmer_dfs.daemon")


def record_path(logs_dir: Path) -> Path:
    return logs_dir / RECORD_NAME


def log_target(log_file: Path | None, logs_dir: Path) -> str:
    """Where a daemon's logs go, in words."""
    if log_file is not None:
        return str(log_file)
    if os.path.exists(SYSLOG_SOCKET):
        return f"syslog / the journal ({SYSLOG_SOCKET}, identifier wasmer-dfs)"
    return f"{logs_dir / DEFAULT_LOG_NAME} (no {SYSLOG_SOCKET} on this machine)"


def is_daemon() -> bool:
    """Whether this process is the daemon a `mount --background` started."""
    return READY_FD_ENV in os.environ


# --- the parent ----------------------------------------------------------------------------------
def _own_command() -> list[str]:
    """This command line again, run by this interpreter (the console script, else the one
    installed beside the interpreter)."""
    script = Path(sys.argv[0])
    if not script.is_file():
        script = Path(sys.executable).parent / "wasmer-dfs"
    return [sys.executable, str(script), *sys.argv[1:]]


def start(secret: bytes | None, log_file: Path | None, logs_dir: Path) -> NoReturn:
    """Start the daemon and relay its messages until it is mounted (exit 0) or has failed (exit
    with its code). A stop (Ctrl-C, SIGTERM) meanwhile stops the daemon too."""
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k not in (READY_FD_ENV, SECRET_FD_ENV)}
    env[READY_FD_ENV] = str(ready_w)
    fds = [ready_w]
    if secret is not None:  # written before the daemon starts: a pipe holds a passcode
        secret_r, secret_w = os.pipe()
        with open(secret_w, "wb") as w:
            w.write(secret)
        env[SECRET_FD_ENV] = str(secret_r)
        fds.append(secret_r)
    try:
        proc = subprocess.Popen(
            _own_command(),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=out_w,
            env=env,
            pass_fds=fds,
            start_new_session=True,  # no terminal: a hang-up or Ctrl-C there does not reach it
        )
    finally:
        for fd in [*fds[1:], ready_w, out_w]:
            os.close(fd)
    try:
        ready = _relay_until_ready(proc, ready_r, out_r)
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait()
        say(f"stopped: the daemon (pid {proc.pid}) exited with {code}")
        raise SystemExit(STOPPED) from None
    if ready:
        say(f"running in the background (pid {proc.pid}); logs: {log_target(log_file, logs_dir)}")
        raise SystemExit(0)
    code = proc.wait()
    if code == 0:
        say("the daemon exited before the file system was mounted")
        code = 1
    raise SystemExit(code)


def _relay_until_ready(proc: subprocess.Popen[bytes], ready_r: int, out_r: int) -> bool:
    """Copy the daemon's output to stderr until it reports ready (True) or both pipes close
    without it (False). Once ready, what it wrote before switching its output is drained."""
    ready = False
    open_fds = {ready_r, out_r}
    deadline: float | None = None
    try:
        while open_fds:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select(list(open_fds), [], [], timeout)
            if not readable:
                break  # ready, and the output did not close in time: stop relaying
            for fd in readable:
                data = os.read(fd, 65536)
                if fd == out_r and data:
                    os.write(2, data)
                    continue
                if fd == ready_r and data:
                    ready = True
                    deadline = time.monotonic() + DRAIN_SECONDS
                if not data:
                    open_fds.discard(fd)
    finally:
        os.close(ready_r)
        os.close(out_r)
    return ready


# --- the daemon ----------------------------------------------------------------------------------
class _ConsoleLines(io.TextIOBase):
    """``sys.stderr`` of a daemon: each line written (the CLI's messages, tracebacks) becomes a
    log record, at the level its ``wasmer-dfs: error:`` / ``warning:`` prefix says."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._partial = ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        lines = (self._partial + s).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line:
                self._logger.log(_level_of(line), "%s", line)
        return len(s)

    def flush(self) -> None:
        pass


def _level_of(line: str) -> int:
    if "error:" in line.split(" ", 2)[:2] or line.startswith("Traceback"):
        return logging.ERROR
    if "warning:" in line.split(" ", 2)[:2]:
        return logging.WARNING
    return logging.INFO


class _Plain(logging.Formatter):
    """The CLI's own lines as they are, other records as the foreground shows them."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == CONSOLE_LOGGER:
            return record.getMessage()
        return super().format(record)


@dataclass
class _Daemon:
    ready_fd: int
    logs_dir: Path
    log_file: Path | None
    secret: bytes | None
    to_parent: logging.Handler
    target: logging.Handler
    #: warnings and errors logged after the mount (what `umount` reports)
    problems: list[dict[str, str]] = field(default_factory=list)
    mountpoint: str | None = None


class _Problems(logging.Handler):
    def __init__(self, into: list[dict[str, str]]) -> None:
        super().__init__(logging.WARNING)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._into) < 100:
            self._into.append({"level": record.levelname, "message": record.getMessage()})


_daemon: _Daemon | None = None  # this process's daemon state (one per process, like its fds)


def _inherited_fd(name: str) -> int | None:
    value = os.environ.pop(name, None)
    if value is None or not value.isdigit():
        return None
    return int(value)


def _target_handler(log_file: Path | None, logs_dir: Path) -> logging.Handler:
    if log_file is None and os.path.exists(SYSLOG_SOCKET):
        handler: logging.Handler = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.setFormatter(
            _Plain(f"wasmer-dfs[{os.getpid()}]: %(levelname)s: %(name)s: %(message)s")
        )
        return handler
    path = log_file if log_file is not None else logs_dir / DEFAULT_LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s wasmer-dfs[{os.getpid()}]: %(levelname)s: %(name)s: %(message)s"
        )
    )
    return handler


def begin(log_file: Path | None, logs_dir: Path) -> None:
    """In the daemon: take the secret and the ready pipe over, and log to the target as well as
    to the parent. In a foreground mount with ``--log FILE``: log to that file as well."""
    global _daemon
    ready_fd = _inherited_fd(READY_FD_ENV)
    root = logging.getLogger()
    if ready_fd is None:
        if log_file is not None:
            root.addHandler(_target_handler(log_file, logs_dir))
        return
    os.set_inheritable(ready_fd, False)
    secret = None
    secret_fd = _inherited_fd(SECRET_FD_ENV)
    if secret_fd is not None:
        with open(secret_fd, "rb") as r:
            secret = r.read()
    for h in list(root.handlers):
        root.removeHandler(h)
    to_parent = logging.StreamHandler(os.fdopen(os.dup(2), "w", buffering=1))
    to_parent.setFormatter(_Plain("wasmer-dfs: %(levelname)s: %(name)s: %(message)s"))
    target = _target_handler(log_file, logs_dir)
    root.addHandler(to_parent)
    root.addHandler(target)
    console = logging.getLogger(CONSOLE_LOGGER)
    console.setLevel(logging.INFO)
    sys.stderr = _ConsoleLines(console)
    _daemon = _Daemon(ready_fd, logs_dir, log_file, secret, to_parent, target)
    atexit.register(_write_exit_record)


def inherited_secret() -> bytes | None:
    """The passcode the parent of this daemon handed over (None: not a daemon, or no secret)."""
    return None if _daemon is None else _daemon.secret


def mounted(mountpoint: str) -> None:
    """The file system is mounted: tell systemd (Type=notify) and, in a daemon, the parent;
    from now on the daemon's output goes only to its log."""
    from adapters.sd_notify import notify

    notify(f"READY=1\nSTATUS=mounted at {mountpoint}")
    d = _daemon
    if d is None:
        return
    d.mountpoint = mountpoint
    root = logging.getLogger()
    root.removeHandler(d.to_parent)
    d.to_parent.close()
    root.addHandler(_Problems(d.problems))
    if isinstance(d.target, logging.FileHandler):
        out = os.open(d.target.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    else:
        out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdout = _ConsoleLines(logging.getLogger(CONSOLE_LOGGER))
    _write_record({"pid": os.getpid(), "mountpoint": mountpoint, "running": True}, d.logs_dir)
    with contextlib.suppress(OSError):
        os.write(d.ready_fd, b"1")
    with contextlib.suppress(OSError):
        os.close(d.ready_fd)


def _write_record(record: dict[str, object], logs_dir: Path) -> None:
    path = record_path(logs_dir)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError as exc:
        _log.warning("cannot write %s: %s", path, exc)


def _write_exit_record() -> None:
    d = _daemon
    if d is None or d.mountpoint is None:
        return
    record = {
        "pid": os.getpid(),
        "mountpoint": d.mountpoint,
        "running": False,
        "problems": d.problems,
    }
    _write_record(record, d.logs_dir)


def read_record(logs_dir: Path) -> dict[str, object] | None:
    """The daemon record of a log directory (None: none, or unreadable)."""
    try:
        value = json.loads(record_path(logs_dir).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
