"""A tiny pyfuse3 file system of the tests, mounted in a subprocess: the harness shared by the
tests of the pyfuse3 patch and of the lock handlers. Every mount it starts is unmounted in the
fixture's teardown, also on failure, and its process is stopped by its own pid."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

MOUNT_TIMEOUT = 20.0


@dataclass
class HelperFs:
    """A mounted helper file system that records every call it serves as JSON lines."""

    root: Path
    log: Path
    stderr: Path
    proc: subprocess.Popen[bytes]

    @property
    def file(self) -> str:
        return str(self.root / "file")

    @property
    def other(self) -> str:
        return str(self.root / "other")

    def records(self, op: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r for r in out if op is None or r["op"] == op]


F = TypeVar("F", bound=HelperFs)


def mounted(root: Path) -> bool:
    """Whether *root* is in /proc/mounts (os.path.ismount is False for a dead FUSE mount)."""
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    unescape = re.compile(r"\\([0-7]{3})")
    return str(root) in {unescape.sub(lambda g: chr(int(g.group(1), 8)), p) for p in points}


def stop(m: HelperFs) -> None:
    """Unmount, wait for the process, then SIGKILL its own pid; lazy unmount as a last resort."""
    if m.proc.poll() is None and mounted(m.root):
        subprocess.run(["fusermount3", "-u", str(m.root)], capture_output=True, timeout=30)
    try:
        m.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        m.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.proc.wait(timeout=10)
    if mounted(m.root):
        subprocess.run(["fusermount3", "-uz", str(m.root)], capture_output=True, timeout=30)


def helper_mounts(
    tmp_path: Path,
    kind: type[F],
    name: str,
    argv: Callable[[Path, Path], Sequence[str]],
    cwd: Path | None = None,
) -> Iterator[Callable[..., F]]:
    """Generator for a fixture: yields ``start(*flags) -> F`` (``argv(root, log)`` is the command
    before the flags); at teardown every mount started is stopped and must be gone."""
    started: list[F] = []

    def start(*flags: str) -> F:
        n = len(started)
        root = tmp_path / f"mnt{n}"
        root.mkdir()
        log, stderr = tmp_path / f"calls{n}.jsonl", tmp_path / f"lockfs{n}.stderr"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [*argv(root, log), *flags],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        m = kind(root, log, stderr, proc)
        started.append(m)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not (mounted(root) and os.path.ismount(root)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} did not mount (exit code {proc.poll()}):\n"
                    + stderr.read_text(errors="replace")
                )
            time.sleep(0.05)
        return m

    try:
        yield start
    finally:
        for m in reversed(started):
            stop(m)
        still = [str(m.root) for m in started if mounted(m.root)]
        assert not still, f"left mounted: {still}"
