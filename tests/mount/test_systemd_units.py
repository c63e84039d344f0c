"""wasmer-dfs@.service's readiness (issue 19): the template runs the fstab helper in the
foreground as Type=notify, so the mount must say READY=1 on $NOTIFY_SOCKET once it is mounted.
Tested here with a socket the test binds, the way systemd would; the live unit (systemctl start
wasmer-dfs@NAME) only where systemd runs as init."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entrypoints.helpers import install

from .conftest import EXIT_TIMEOUT, MOUNT_TIMEOUT, Mounter


def test_the_units_command_line_says_ready_once_mounted(tmp_path: Path, mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    passfile = tmp_path / "p"
    passfile.write_text("unit secret\n")
    os.chmod(passfile, 0o600)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(MOUNT_TIMEOUT)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
        env.pop("WASMER_DFS_PASSCODE", None)
        # what ExecStart= of wasmer-dfs@.service runs, with OPTIONS=passfile=...
        cmd = [sys.executable, "-m", "entrypoints.fstab", str(logdir), str(mnt),
               "-o", "foreground", "-o", f"passfile={passfile}"]  # fmt: skip
        with open(tmp_path / "unit.out", "wb") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True,
            )  # fmt: skip
        try:
            try:
                message = sock.recv(4096).decode()
            except TimeoutError:
                pytest.fail(f"no READY=1: {(tmp_path / 'unit.out').read_text()}")
            assert message.startswith("READY=1\n") and f"mounted at {mnt}" in message
            assert os.path.ismount(mnt)  # ready means mounted
            assert proc.poll() is None  # in the foreground: the unit's main process
            (mnt / "x").write_text("y")
            proc.send_signal(signal.SIGTERM)  # what systemctl stop sends
            assert proc.wait(timeout=EXIT_TIMEOUT) == 0
            assert not os.path.ismount(mnt)
        finally:
            if proc.poll() is None:
                subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=EXIT_TIMEOUT)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=EXIT_TIMEOUT)


def _systemd_is_init() -> bool:
    return os.path.isdir("/run/systemd/system")  # sd_booted(3)


@pytest.mark.skipif(
    not _systemd_is_init(),
    reason="systemd is not PID 1 here (no /run/systemd/system): the live unit cannot be started",
)
def test_the_template_unit_starts_and_is_ready(tmp_path: Path, mounter: Mounter) -> None:
    if os.geteuid() != 0:
        pytest.skip("systemctl start of a system unit needs root")
    name = f"pytest-{os.getpid()}"
    mnt, logdir = mounter.dirs()
    passfile = tmp_path / "p"
    passfile.write_text("unit secret\n")
    os.chmod(passfile, 0o600)
    units = Path("/run/systemd/system")  # runtime units: gone at reboot
    conf = Path("/etc/wasmer-dfs") / f"{name}.conf"
    conf.parent.mkdir(exist_ok=True)
    conf.write_text(f"SOURCE={logdir}\nMOUNTPOINT={mnt}\nOPTIONS=passfile={passfile}\n")
    install(tmp_path / "sbin", units)
    unit = f"wasmer-dfs@{name}.service"
    try:
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
        r = subprocess.run(["systemctl", "start", unit], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr  # Type=notify: start returns after READY=1
        assert os.path.ismount(mnt)
        state = subprocess.run(
            ["systemctl", "is-active", unit], capture_output=True, text=True, timeout=30
        )
        assert state.stdout.strip() == "active"
    finally:
        subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=180)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        conf.unlink(missing_ok=True)
        for f in ("wasmer-dfs@.service", "wasmer-dfs-serve.service"):
            (units / f).unlink(missing_ok=True)
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, timeout=60)
