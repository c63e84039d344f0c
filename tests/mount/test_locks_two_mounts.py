"""Locks across two real `wasmer-dfs mount`s of one chain on a chain server (docs/adr/0010): the
replicated mount, end to end. A chain server with a short lock lease runs in this process
(tests/locktools.py ``ThreadServer``); lock shells (one process = one POSIX lock owner) drive
flock and fcntl on both mounts.

* `flock -n` from B fails while A holds the lock;
* fcntl byte ranges conflict and coexist across the mounts;
* F_SETLKW on B blocks until A unlocks;
* killing A's mount process frees its locks within the lease;
* coherence: what A wrote before unlocking, B reads after locking;
* two processes on two mounts insert into one SQLite database (rollback journal): every row is
  there and ``PRAGMA integrity_check`` is ok.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.locktools import ThreadServer, shells, wait_until
from tests.mount.conftest import MOUNT_TIMEOUT

if TYPE_CHECKING:
    from tests.mount.conftest import Mounter, MountProc

LEASE = 2.0
pytestmark = [pytest.mark.timeout(300)]


@pytest.fixture
def lock_server(tmp_path: Path) -> Iterator[ThreadServer]:
    server = ThreadServer(tmp_path / "server", lease=LEASE)
    try:
        yield server
    finally:
        server.stop()


def mount_remote(mounter: Mounter, name: str, url: str) -> MountProc:
    mnt, logdir = mounter.dirs(name)
    mp = mounter.spawn(mnt, None, url, str(logdir))
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mp.is_mounted():
        if mp.proc.poll() is not None:
            pytest.fail(
                f"{name}: wasmer-dfs mount exited with {mp.proc.returncode}:\n{mp.stderr()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: not mounted within {MOUNT_TIMEOUT} s:\n{mp.stderr()}")
        time.sleep(0.02)
    return mp


@pytest.fixture
def two(mounter: Mounter, lock_server: ThreadServer) -> tuple[MountProc, MountProc]:
    """Mounts A and B of one chain; a file ``shared`` that both see."""
    a = mount_remote(mounter, "a", lock_server.url())
    (a.mnt / "shared").write_bytes(b"")
    (a.mnt / "other").write_bytes(b"")
    b = mount_remote(mounter, "b", lock_server.url())
    wait_until(lambda: (b.mnt / "shared").exists(), 30, "B to see A's files")
    return a, b


# --- locks ----------------------------------------------------------------------------------------
def test_flock_n_on_b_fails_while_a_holds(two) -> None:
    tool = shutil.which("flock")
    if tool is None:
        pytest.skip("the flock(1) tool is not installed")
    a, b = two
    with shells(1) as (sa,):
        fa = sa.open(str(a.mnt / "shared"))
        assert sa.call(f"flock {fa} ex nb") == "ok"
        r = subprocess.run([tool, "-n", str(b.mnt / "shared"), "true"], timeout=60)
        assert r.returncode == 1
        assert (
            subprocess.run([tool, "-n", str(b.mnt / "other"), "true"], timeout=60).returncode == 0
        )
        assert sa.call(f"flock {fa} un") == "ok"
        assert (
            subprocess.run([tool, "-n", str(b.mnt / "shared"), "true"], timeout=60).returncode == 0
        )


def test_fcntl_ranges_conflict_and_coexist(two) -> None:
    a, b = two
    with shells(2) as (sa, sb):
        fa, fb = sa.open(str(a.mnt / "shared")), sb.open(str(b.mnt / "shared"))
        assert sa.call(f"lk {fa} w 0 100") == "ok"
        assert sb.call(f"lk {fb} w 100 100") == "ok"
        assert sb.call(f"lk {fb} r 99 1") == "err EAGAIN"
        assert sb.call(f"getlk {fb} r 0 0") == "lk w 0 100 0"
        assert sa.call(f"lk {fa} r 0 100") == "ok"
        assert sb.call(f"lk {fb} r 0 100") == "ok"
        assert sa.call(f"lk {fa} w 0 1") == "err EAGAIN"


def test_setlkw_on_b_blocks_until_a_unlocks(two) -> None:
    a, b = two
    with shells(2) as (sa, sb):
        fa, fb = sa.open(str(a.mnt / "shared")), sb.open(str(b.mnt / "shared"))
        assert sa.call(f"lk {fa} w 0 0") == "ok"
        sb.start(f"lk {fb} w 0 0 w")
        assert sb.blocked(1.5)
        assert sa.call(f"lk {fa} u 0 0") == "ok"
        assert sb.answer(30) == "ok"


def test_killing_a_mount_frees_its_locks_within_the_lease(two) -> None:
    a, b = two
    with shells(2) as (sa, sb):
        fa, fb = sa.open(str(a.mnt / "shared")), sb.open(str(b.mnt / "shared"))
        assert sa.call(f"lk {fa} w 0 0") == "ok"
        sb.start(f"lk {fb} w 0 0 w")
        assert sb.blocked(1.0)
        killed = time.monotonic()
        a.signal(signal.SIGKILL)
        assert sb.answer(10 * LEASE) == "ok"
        assert time.monotonic() - killed <= 3 * LEASE
        sa.close()


def test_b_reads_what_a_wrote_before_unlocking(two) -> None:
    a, b = two
    with shells(2) as (sa, sb):
        fa, fb = sa.open(str(a.mnt / "shared")), sb.open(str(b.mnt / "shared"))
        for i in range(5):
            text = f"round-{i}-" + "x" * i
            assert sa.call(f"lk {fa} w 0 0 w") == "ok"
            assert sa.call(f"write {fa} 0 {text}") == "ok"
            assert sa.call(f"lk {fa} u 0 0") == "ok"
            assert sb.call(f"lk {fb} r 0 0 w", timeout=30) == "ok"
            assert sb.call(f"read {fb} 0 {len(text)}") == f"data {text}"
            assert sb.call(f"lk {fb} u 0 0") == "ok"


# --- SQLite ---------------------------------------------------------------------------------------
WORKER = textwrap.dedent(
    """
    import sqlite3, sys
    path, who, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = sqlite3.connect(path, timeout=120, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    for i in range(rows):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (who, n) VALUES (?, ?)", (who, i))
        db.execute("COMMIT")
    db.close()
    print("done", flush=True)
    """
)


def test_two_mounts_insert_into_one_sqlite_database(two) -> None:
    import sqlite3

    a, b = two
    rows = 200
    path_a, path_b = a.mnt / "db.sqlite", b.mnt / "db.sqlite"
    db = sqlite3.connect(path_a, isolation_level=None)
    assert db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, n INTEGER)")
    db.close()
    wait_until(lambda: path_b.exists() and path_b.stat().st_size > 0, 30, "B to see the database")
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(p), who, str(rows)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p, who in ((path_a, "a"), (path_b, "b"))
    ]  # fmt: skip
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0 and out.strip() == "done", err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
    for path in (path_a, path_b):
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        db.execute("BEGIN")  # a shared lock: the view after the last writer's release
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counts = dict(db.execute("SELECT who, count(*) FROM t GROUP BY who").fetchall())
        assert counts == {"a": rows, "b": rows}, (path, counts)
        assert db.execute("SELECT count(DISTINCT id) FROM t").fetchone()[0] == 2 * rows
        db.execute("COMMIT")
        db.close()
    assert os.path.exists(path_a)
