"""Helpers every benchmark in bench/ shares (issue 13): one copy of each, imported by all.

* ``free_port``: a free TCP port on 127.0.0.1 for a server the benchmark starts;
* ``MachineInfo`` / ``machine_info`` / ``machine_dict``: the machine a run was made on (nproc,
  memory, kernel, CPU, date, Python), the line and the JSON section every report carries;
* ``read_status_kib`` / ``reset_peak_rss``: a process's RSS figures from /proc/PID/status, and
  resetting its peak (VmHWM) after the passcode KDF;
* ``terminate``: stop a server the benchmark started, by its pid (SIGTERM, then SIGKILL);
* ``Terminated`` / ``on_sigterm``: SIGTERM turned into an exception so that a benchmark's
  ``finally`` blocks tear every mount and server down.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class MachineInfo:
    nproc: int
    memory_gib: float
    kernel: str
    date: str
    cpu: str
    python: str

    def line(self) -> str:
        return (
            f"machine: nproc={self.nproc}, memory={self.memory_gib:.1f} GiB, "
            f"kernel={self.kernel}, cpu={self.cpu or '?'}, date={self.date}"
        )


def machine_info() -> MachineInfo:
    """The machine this process runs on: CPUs it may use, memory, kernel, CPU model, date."""
    mem_kib = 0
    cpu = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        nproc = os.cpu_count() or 1
    return MachineInfo(
        nproc=nproc,
        memory_gib=mem_kib / 1024 / 1024,
        kernel=platform.release(),
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu,
        python=platform.python_version(),
    )


def machine_dict() -> dict[str, Any]:
    """``machine_info()`` as the ``"machine"`` section of a benchmark's JSON."""
    return dict(vars(machine_info()))


def read_status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``, Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM ``proc`` (by its pid) and wait ``timeout`` s for it; SIGKILL it if it is still up."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that every mount is torn down."""


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """``signal.signal(signal.SIGTERM, on_sigterm)``: raise ``Terminated`` in the main thread."""
    raise Terminated
