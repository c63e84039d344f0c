"""Two replicas creating files in one directory at the same time (docs/adr/0009, "Kernel
caches: never waited for"): both must finish, and both must end with the same listing.

This hung a mount: an applied remote transaction invalidated the directory's names in the
kernel, which takes the directory's inode lock; a create in flight in that directory holds it
while it waits for the server's confirmation, and the replication loop that would take that
confirmation in was waiting for the invalidation to return.

A hang must not hang the suite: the writers run as subprocesses with a bound; past it, both
mounts' FUSE connections are aborted (/sys/fs/fuse/connections/N/abort, fusectl mounted if
needed), which ends every request in flight, and the mounts are then torn down as usual.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, ServerProc
from tests.mount.test_replication import eventually, mount_remote

pytestmark = [pytest.mark.timeout(300)]

FILES = 200
#: both writers must be done within this (each create waits for one server confirmation)
BOUND = 120.0
FUSECTL = Path("/sys/fs/fuse/connections")

WRITER = """
import os, sys
where, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    fd = os.open(os.path.join(where, f"{tag}{i:03d}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, f"{tag}{i}".encode())
    os.close(fd)
"""


def _fuse_connection(mnt: Path) -> Path | None:
    """The fusectl directory of the mount at ``mnt``, found in /proc/self/mountinfo (never
    touching the mount itself, which may hang)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == str(mnt) and " - fuse" in line:
                major, minor = (int(x) for x in parts[2].split(":"))
                return FUSECTL / str((major << 20) | minor)
    return None


def _abort(connections: list[Path]) -> list[str]:
    """Abort FUSE connections (the requests in flight end with an error, and so does a hung
    mount's reverse invalidation). They are looked up while mounted: a mount that hangs may
    have left /proc/self/mountinfo already (detached) with its connection still alive."""
    if not any(FUSECTL.iterdir()):
        subprocess.run(
            ["mount", "-t", "fusectl", "none", str(FUSECTL)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False,
        )  # fmt: skip
    done = []
    for conn in connections:
        if (conn / "abort").exists():
            with contextlib.suppress(OSError):
                (conn / "abort").write_text("1")
                done.append(str(conn))
    return done


def _listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def test_two_replicas_create_in_one_directory_at_once(mounter: Mounter, server: ServerProc) -> None:
    a = mount_remote(mounter, "a", server.url())
    b = mount_remote(mounter, "b", server.url())
    (a.mnt / "shared").mkdir()
    eventually(lambda: (b.mnt / "shared").stat(), "the directory on B")
    # both kernels cache the directory's names (and negative entries) from here on
    assert _listing(a.mnt / "shared") == _listing(b.mnt / "shared") == []
    connections = [c for c in (_fuse_connection(a.mnt), _fuse_connection(b.mnt)) if c]
    assert len(connections) == 2, "the mounts' FUSE connections are not in mountinfo"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(mp.mnt / "shared"), tag, str(FILES)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for mp, tag in ((a, "a"), (b, "b"))
    ]
    deadline = time.monotonic() + BOUND
    try:
        for w in writers:
            w.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        aborted = _abort(connections)
        for w in writers:
            if w.poll() is None:
                w.kill()
            w.wait(timeout=30)
        pytest.fail(
            f"the writers did not finish within {BOUND} s (FUSE connections aborted: {aborted});"
            f"\nA:\n{a.stderr()[-3000:]}\nB:\n{b.stderr()[-3000:]}"
        )
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=30)
    for w in writers:
        _, err = w.communicate()
        assert w.returncode == 0, err.decode(errors="replace")
    want = sorted([f"a{i:03d}" for i in range(FILES)] + [f"b{i:03d}" for i in range(FILES)])
    eventually(lambda: _eq(_listing(a.mnt / "shared"), want), "A's listing")
    eventually(lambda: _eq(_listing(b.mnt / "shared"), want), "B's listing")
    for i in (0, FILES // 2, FILES - 1):
        for tag in "ab":
            for mp in (a, b):
                data = (mp.mnt / "shared" / f"{tag}{i:03d}").read_bytes()
                assert data == f"{tag}{i}".encode()


def _eq(got: object, want: object) -> None:
    assert got == want, (got, want)
