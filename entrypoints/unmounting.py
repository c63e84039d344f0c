"""`wasmer-dfs umount MNT`: unmount a wasmer-dfs file system and wait for its mount process.

At unmount the mount process writes out what is buffered, gives what is not yet on the chain
server a bounded time to upload (application/maintenance.upload_before_unmount, which logs how
many transactions are left otherwise) and closes its log. A daemon started by ``mount
--background`` records its pid and, when it exits, the warnings and errors of that unmount in
``LOGS_DIR/.wasmer-dfs-daemon.json`` (entrypoints/daemon.py); the log directory is the mount's
source in /proc/mounts (its fsname). This command unmounts with ``fusermount3 -u``, waits for
that pid to exit and reports what the record says.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from entrypoints import daemon
from entrypoints.console import UNSAVED, USAGE, fail, say, warn

FS_TYPE = "fuse.wasmer-dfs"


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(mountpoint: Path) -> tuple[str, str] | None:
    """(source, type) of the last mount at ``mountpoint`` in /proc/mounts (None: not mounted)."""
    found = None
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and _unescape(parts[1]) == str(mountpoint):
                found = (_unescape(parts[0]), parts[2])
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _daemon_pid(logs_dir: Path, mountpoint: Path) -> int | None:
    record = daemon.read_record(logs_dir)
    if record is None or record.get("mountpoint") != str(mountpoint) or not record.get("running"):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or not running(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"wasmer-dfs" not in f.read():
                return None  # the pid was reused
    except OSError:
        return None
    return pid


def unmount(path: Path, timeout: float) -> None:
    mnt = path.expanduser().absolute()
    mnt = mnt.parent.resolve() / mnt.name  # resolve() would stat the mount itself
    entry = mount_entry(mnt)
    if entry is None:
        fail(f"{mnt} is not mounted", USAGE)
    source, fstype = entry
    if fstype != FS_TYPE:
        fail(f"{mnt} is a {fstype} mount, not a wasmer-dfs one", USAGE)
    logs_dir = Path(source)
    pid = _daemon_pid(logs_dir, mnt)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        fail("fusermount3 is not on PATH (install fuse3)", 1)
    done = subprocess.run(
        [tool, "-u", str(mnt)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        fail(f"cannot unmount {mnt}: {done.stderr.strip() or done.returncode}", 1)
    if pid is None:
        say(
            f"unmounted {mnt}; its mount process was not started with --background here, it"
            " writes out and uploads what is pending and reports in its own output"
        )
        return
    say(f"unmounted {mnt}; waiting for the mount process (pid {pid}) to write out and upload")
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            fail(f"the mount process (pid {pid}) is still running after {timeout:.0f} s", 1)
        time.sleep(0.05)
    _report(logs_dir, mnt, pid)


def _report(logs_dir: Path, mnt: Path, pid: int) -> None:
    record = daemon.read_record(logs_dir)
    if record is None or record.get("pid") != pid or record.get("running"):
        warn(f"the mount process (pid {pid}) exited without its final record (killed?)")
        raise SystemExit(UNSAVED)
    problems = record.get("problems")
    errors = 0
    for p in problems if isinstance(problems, list) else []:
        if not isinstance(p, dict):
            continue
        message = str(p.get("message", "")).removeprefix("wasmer-dfs: ")
        message = message.removeprefix("error: ").removeprefix("warning: ")
        if p.get("level") in ("ERROR", "CRITICAL"):
            errors += 1
            say(f"error: {message}")
        else:
            warn(message)
    if errors:
        raise SystemExit(UNSAVED)
    if problems:
        say(f"the mount process (pid {pid}) finished, with the warnings above")
    else:
        say(f"the mount process (pid {pid}) finished: everything written out")
