"""Fixtures for the mount tier: a real `wasmer-dfs mount` in a subprocess, on a real FUSE mount.

Every mount started here is torn down on every way out of a test (pass, fail or error):
``fusermount3 -u``, then waiting for the process, then SIGTERM and SIGKILL to *its pid*, and
as a last resort a lazy ``fusermount3 -uz``. An autouse fixture then checks that no FUSE mount
under the test's ``tmp_path`` is left in /proc/mounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.net import free_port

HERE = Path(__file__).resolve().parent
PASSCODE_ENV = "WASMER_DFS_PASSCODE"
MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0
DEFAULT_PASSCODE = "correct horse battery staple"


def _fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not on PATH"
    return None


def wasmer_dfs_exe() -> str:
    beside = Path(sys.executable).parent / "wasmer-dfs"
    if beside.exists():
        return str(beside)
    found = shutil.which("wasmer-dfs")
    if found is None:
        pytest.skip("the wasmer-dfs console script is not installed")
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mount: mounts a real FUSE file system in a subprocess (needs /dev/fuse)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _fuse_unavailable()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.mount)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"mount tier needs FUSE: {reason}"))


# --- /proc/mounts ---------------------------------------------------------------------------------
def _unescape(field_: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def fuse_mounts_under(root: Path) -> list[str]:
    root_s = str(root)
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or not parts[2].startswith("fuse"):
                continue
            point = _unescape(parts[1])
            if point == root_s or point.startswith(root_s + "/"):
                found.append(point)
    return found


def _fusermount(*args: str) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["fusermount3", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=EXIT_TIMEOUT,
            check=False,
        )


# --- the mount process ----------------------------------------------------------------------------
@dataclass
class MountProc:
    """One `wasmer-dfs mount` process and the paths it was given."""

    proc: subprocess.Popen[bytes]
    mnt: Path
    logdir: Path
    args: tuple[str, ...]
    global_args: tuple[str, ...]
    passcode: str | None
    passcode_env: str | None
    env: dict[str, str] | None
    stderr_path: Path
    stdout_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_file(self) -> Path:
        return self.logdir / "local.log"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def is_mounted(self) -> bool:
        return os.path.ismount(self.mnt)

    def in_proc_mounts(self) -> bool:
        """Like is_mounted, but never touches the mount (safe when its server hangs)."""
        where = Path(os.path.abspath(self.mnt))
        where = where.parent.resolve() / where.name  # resolve() would stat the mount itself
        return str(where) in fuse_mounts_under(where)

    def peak_rss_kib(self) -> int | None:
        """VmHWM of the mount process (None once it has exited)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"wasmer-dfs (pid {self.pid}) did not exit within {timeout} s; stderr:\n"
                f"{self.stderr()}"
            )

    def unmount(self, timeout: float = EXIT_TIMEOUT) -> int:
        """`fusermount3 -u` and wait for the process; returns its exit code."""
        if self.proc.poll() is None and self.is_mounted():
            r = subprocess.run(
                ["fusermount3", "-u", str(self.mnt)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=EXIT_TIMEOUT,
                check=False,
            )
            if r.returncode != 0 and self.is_mounted():
                pytest.fail(
                    f"fusermount3 -u {self.mnt} failed: {r.stderr.decode(errors='replace')}"
                )
        return self.wait(timeout)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def teardown(self) -> None:
        """Bring the process down and the mount off, whatever state either is in."""
        if self.proc.poll() is None and self.in_proc_mounts():
            _fusermount("-u", str(self.mnt))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=EXIT_TIMEOUT)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.in_proc_mounts():
            _fusermount("-uz", str(self.mnt))


@dataclass
class Outcome:
    """How a mount attempt that was expected to fail ended."""

    returncode: int | None
    stderr: str
    mounted: bool


@dataclass
class Mounter:
    """Starts `wasmer-dfs mount` processes under ``tmp_path`` and always cleans them up."""

    tmp_path: Path
    procs: list[MountProc] = field(default_factory=list)
    _n: int = 0

    def dirs(self, name: str = "fs") -> tuple[Path, Path]:
        mnt, logdir = self.tmp_path / f"{name}-mnt", self.tmp_path / f"{name}-log"
        mnt.mkdir(exist_ok=True)
        logdir.mkdir(exist_ok=True)
        return mnt, logdir

    def _env(self, passcode_env: str | None, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != PASSCODE_ENV}
        if passcode_env is not None:
            env[PASSCODE_ENV] = passcode_env
        if extra:
            env.update(extra)
        return env

    def spawn(
        self,
        mnt: Path,
        logdir: Path | str | None,
        *args: str,
        passcode: str | None = DEFAULT_PASSCODE,
        global_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        passcode_env: str | None = None,
    ) -> MountProc:
        """Start a mount process without waiting for anything."""
        self._n += 1
        err = self.tmp_path / f"mount-{self._n}.stderr"
        out = self.tmp_path / f"mount-{self._n}.stdout"
        cmd = [wasmer_dfs_exe(), *global_args, "mount", str(mnt)]
        if logdir is not None:
            cmd.append(str(logdir))
        cmd += list(args)
        if passcode is not None:
            cmd += ["--passcode", passcode]
        with open(err, "wb") as ef, open(out, "wb") as of:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=of,
                stderr=ef,
                env=self._env(passcode_env, env),
                cwd=self.tmp_path,
                start_new_session=True,
            )
        mp = MountProc(
            proc=proc,
            mnt=Path(mnt),
            logdir=Path(logdir) if logdir is not None else Path(),
            args=tuple(args),
            global_args=tuple(global_args),
            passcode=passcode,
            passcode_env=passcode_env,
            env=env,
            stderr_path=err,
            stdout_path=out,
        )
        self.procs.append(mp)
        return mp

    def mount(
        self,
        mnt: Path,
        logdir: Path,
        *args: str,
        passcode: str | None = DEFAULT_PASSCODE,
        global_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        passcode_env: str | None = None,
    ) -> MountProc:
        """Start a mount and wait until it is mounted (fails with its stderr otherwise)."""
        mp = self.spawn(
            mnt,
            logdir,
            *args,
            passcode=passcode,
            global_args=global_args,
            env=env,
            passcode_env=passcode_env,
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not mp.is_mounted():
            rc = mp.proc.poll()
            if rc is not None:
                pytest.fail(
                    f"wasmer-dfs mount exited with {rc} before mounting; stderr:\n{mp.stderr()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{mnt} not mounted within {MOUNT_TIMEOUT} s; stderr:\n{mp.stderr()}")
            time.sleep(0.02)
        return mp

    def attempt(
        self,
        mnt: Path,
        logdir: Path | str | None,
        *args: str,
        passcode: str | None = DEFAULT_PASSCODE,
        global_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        passcode_env: str | None = None,
        timeout: float = MOUNT_TIMEOUT,
    ) -> Outcome:
        """A mount expected to fail: wait until the process exits or (wrongly) mounts."""
        mp = self.spawn(
            mnt,
            logdir,
            *args,
            passcode=passcode,
            global_args=global_args,
            env=env,
            passcode_env=passcode_env,
        )
        deadline = time.monotonic() + timeout
        while True:
            rc = mp.proc.poll()
            if rc is not None:
                return Outcome(rc, mp.stderr(), mounted=False)
            if mp.is_mounted():
                return Outcome(None, mp.stderr(), mounted=True)
            if time.monotonic() > deadline:
                return Outcome(None, mp.stderr(), mounted=False)
            time.sleep(0.02)

    def remount(self, mp: MountProc, *args: str, passcode: str | None = None) -> MountProc:
        """Unmount (asserting exit code 0), then mount the same paths again."""
        rc = mp.unmount()
        assert rc == 0, f"wasmer-dfs exited with {rc} at unmount; stderr:\n{mp.stderr()}"
        assert not mp.is_mounted()
        return self.mount(
            mp.mnt,
            mp.logdir,
            *(args or mp.args),
            passcode=passcode if passcode is not None else mp.passcode,
            global_args=mp.global_args,
            env=mp.env,
            passcode_env=mp.passcode_env,
        )

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a `wasmer-dfs` command that is not expected to mount, capturing its output."""
        return subprocess.run(
            [wasmer_dfs_exe(), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self._env(None, env),
            cwd=self.tmp_path,
            timeout=timeout,
            check=False,
        )

    @staticmethod
    def log_digests(logdir: Path) -> dict[str, str]:
        """sha256 of every file in the log directory, by relative name."""
        return {
            str(p.relative_to(logdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(logdir.rglob("*"))
            if p.is_file()
        }

    def cleanup(self) -> None:
        for mp in reversed(self.procs):
            mp.teardown()


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_mount_left_behind(tmp_path: Path) -> Iterator[None]:
    yield
    left = fuse_mounts_under(tmp_path)
    for point in left:  # leave the machine clean even when this check fails
        _fusermount("-uz", point)
    assert not left, f"FUSE mounts left behind under {tmp_path}: {left}"


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture(scope="module")
def module_mounter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounter]:
    """A Mounter for module-scoped fixtures (e.g. one chain built once, copied by tests)."""
    m = Mounter(tmp_path_factory.mktemp("module-mounts"))
    try:
        yield m
    finally:
        m.cleanup()
        left = fuse_mounts_under(m.tmp_path)
        for point in left:
            _fusermount("-uz", point)
        assert not left, f"FUSE mounts left behind under {m.tmp_path}: {left}"


# --- a chain server ------------------------------------------------------------------------------
class ServerProc:
    """`wasmer-dfs serve` in a subprocess on a fixed port (so it can be killed and restarted on
    the same address and data directory); stopped by its pid."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        global_args: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log = log
        self.global_args = global_args
        #: more options of `serve` (e.g. --metrics HOST:PORT)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, chain: str = "fs") -> str:
        return f"ws://127.0.0.1:{self.port}/db/{chain}"

    def start(self) -> None:
        assert self.proc is None
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [wasmer_dfs_exe(), *self.global_args, "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--data-dir", str(self.data_dir), "--lock-lease", "2", *self.args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not listen: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def data_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.glob("*.log"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    (tmp_path / "server").mkdir()
    srv = ServerProc(tmp_path / "server", tmp_path / "server.out")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
