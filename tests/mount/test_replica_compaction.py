"""Compaction of a replica's log through real mounts and a real `serve` (docs/adr/0007,
"Replicas"; issue 15 part A, step 3):

* a replica whose file was written 5 times over, with uploads pending (written while the server
  was stopped), shrinks with ``mount ws://... --compact-now`` to <= 1.3x the live data (the
  window is 0), and the pending uploads reach a second replica afterwards;
* a replica's compaction killed (SIGKILL, ``WASMER_DFS_COMPACT_CRASH_AT``) at each step loses
  nothing: every file written is there after the next mount, the log verifies, and the pending
  uploads still go up.

``WASMER_DFS_REPLICA_COMPACT_MIB`` sets the live size of the first test (32 by default).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.mount.test_replication import eventually, mount_remote, tree

if TYPE_CHECKING:
    from tests.mount.conftest import Mounter, MountProc, ServerProc

pytestmark = [pytest.mark.timeout(900)]

MiB = 1 << 20
CRASH_ENV = "WASMER_DFS_COMPACT_CRASH_AT"
LIVE_MIB = int(os.environ.get("WASMER_DFS_REPLICA_COMPACT_MIB", "32"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rewrite(path: Path, size: int, rounds: int, seed: int) -> str:
    """Write ``path`` ``rounds`` times over with ``size`` bytes; the digest of the last."""
    block = random.Random(seed).randbytes(MiB)
    data = b""
    for k in range(rounds):
        data = (block[k:] + block[:k]) * (size // MiB)
        with open(path, "wb") as f:
            f.write(data)
    return sha(data)


def offline_edits(mounter: Mounter, name: str, url: str) -> dict[str, str]:
    """Mount the replica ``name`` while the server is stopped (async: mounted disconnected),
    write files that wait for upload, unmount. Their digests."""
    mp = mount_remote(mounter, name, url, "--recovery-mode", "async", "--compact-mode", "never")
    want = {}
    for i in range(3):
        data = os.urandom(200_000 + i)
        (mp.mnt / f"pending{i}").write_bytes(data)
        want[f"pending{i}"] = sha(data)
    (mp.mnt / "dir").mkdir()
    (mp.mnt / "dir" / "inner").write_bytes(b"offline")
    want["dir/inner"] = sha(b"offline")
    assert mp.unmount() == 0, mp.stderr()
    assert "not yet on the chain server" in mp.stderr(), mp.stderr()
    return want


def check(mnt: Path, want: dict[str, str]) -> None:
    for rel, digest in want.items():
        assert sha((mnt / rel).read_bytes()) == digest, rel


def same_tree(x: Path, y: Path) -> None:
    assert tree(x) == tree(y)


def log_size(mp: MountProc | Path) -> int:
    logdir = mp if isinstance(mp, Path) else mp.logdir
    return (logdir / "local.log").stat().st_size


def test_compact_now_shrinks_a_replica_and_keeps_its_pending_uploads(
    mounter: Mounter, server: ServerProc, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url()
    size = LIVE_MIB * MiB
    a = mount_remote(
        mounter, "a", url, "--recovery-mode", "readonly-sync", "--compact-mode", "never"
    )
    want = {"big": rewrite(a.mnt / "big", size, 5, 3)}  # each close waits for the server
    assert a.unmount() == 0, a.stderr()
    server.stop()
    want |= offline_edits(mounter, "a", url)
    server.start()
    before = log_size(a.logdir)
    a = mount_remote(mounter, "a", url, "--recovery-mode", "async", "--compact-now")
    assert "compacted the log" in a.stderr(), a.stderr()
    after_compaction = int(
        a.stderr().split("compacted the log from ")[1].split(" to ")[1].split()[0]
    )
    check(a.mnt, want)
    b = mount_remote(mounter, "b", url, "--recovery-mode", "async")
    eventually(lambda: check(b.mnt, want), "B to have A's pending uploads", 120)
    eventually(lambda: same_tree(a.mnt, b.mnt), "A and B to have the same tree")
    for mp in (a, b):
        assert mp.unmount() == 0, mp.stderr()
        assert "Traceback" not in mp.stderr() and "refused" not in mp.stderr(), mp.stderr()
    assert after_compaction <= 1.3 * size, f"{after_compaction / size:.2f}x the live data"
    with capsys.disabled():
        print(
            f"\nreplica, {LIVE_MIB} MiB written 5 times + pending uploads: log {before / MiB:.1f}"
            f" MiB, after --compact-now {after_compaction / MiB:.1f} MiB"
            f" ({after_compaction / size:.3f}x the live data)"
        )


STEPS = ["planned", "copy:3", "built", "synced", "replacing", "replaced", "attested"]


def test_a_replicas_compaction_killed_at_each_step_loses_nothing(
    mounter: Mounter, server: ServerProc
) -> None:
    url = server.url()
    a = mount_remote(
        mounter, "src", url, "--recovery-mode", "readonly-sync", "--compact-mode", "never"
    )
    want = {"big": rewrite(a.mnt / "big", 4 * MiB, 4, 5)}
    (a.mnt / "small").write_bytes(b"confirmed")
    want["small"] = sha(b"confirmed")
    assert a.unmount() == 0, a.stderr()
    server.stop()
    want |= offline_edits(mounter, "src", url)
    template = a.logdir
    size = log_size(template)
    survivors = []
    for step in STEPS:
        name = f"k-{step.replace(':', '')}"
        mnt, logdir = mounter.dirs(name)
        shutil.rmtree(logdir)
        shutil.copytree(template, logdir)
        out = mounter.attempt(mnt, None, url, str(logdir), "--recovery-mode", "async",
                              "--compact-now", env={CRASH_ENV: step})  # fmt: skip
        assert out.returncode == -signal.SIGKILL, (step, out.stderr)
        mp = mount_remote(mounter, name, url, "--recovery-mode", "async", "--compact-mode", "never")
        check(mnt, want)
        assert mp.unmount() == 0, mp.stderr()
        compacted = log_size(logdir) < size / 2
        assert compacted is (step in ("replaced", "attested")), (step, size, log_size(logdir))
        assert not [p for p in logdir.iterdir() if p.name.endswith(".tmp")]
        r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": mp.passcode or ""})
        assert r.returncode == 0, (step, r.stdout + r.stderr)
        survivors.append(name)
    # the pending uploads still go up from a replica whose compaction was killed after the
    # rename, and a new replica gets all of it
    server.start()
    name = survivors[STEPS.index("replaced")]
    mp = mount_remote(mounter, name, url, "--recovery-mode", "async", "--compact-mode", "never")
    fresh = mount_remote(mounter, "fresh", url, "--recovery-mode", "async")
    eventually(lambda: check(fresh.mnt, want), "a new replica to have every file", 120)
    for m in (mp, fresh):
        assert m.unmount() == 0, m.stderr()
        assert "Traceback" not in m.stderr(), m.stderr()
