"""The views on real mounts (issue 18): `/.wasmer-dfs/status` is JSON for jq and json.tool, the
stats counters move under a workload, `tail -f accesslog` shows another process's operations
as they happen, the directory is reachable but not listed, writes are refused, and a view that
raises gives EIO while the rest of the mount keeps working."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import (
    MOUNT_TIMEOUT,
    Mounter,
    MountProc,
    ServerProc,
    fuse_mounts_under,
    wasmer_dfs_exe,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mounted(mounter: Mounter) -> MountProc:
    mnt, logdir = mounter.dirs()
    return mounter.mount(mnt, logdir)


def test_status_is_json_for_jq_and_json_tool(mounted: MountProc) -> None:
    status = mounted.mnt / ".wasmer-dfs" / "status"
    tool = subprocess.run(
        f"cat {status} | {sys.executable} -m json.tool",
        shell=True, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert tool.returncode == 0, tool.stderr
    doc = json.loads(tool.stdout)
    assert doc["chain"]["name"] == "local" and doc["server"] is None
    assert doc["log"]["size"] > 0 and doc["pending_uploads"] == 0
    if shutil.which("jq"):
        jq = subprocess.run(
            f"cat {status} | jq -r .chain.encrypted",
            shell=True, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert jq.returncode == 0 and jq.stdout.strip() == "true", jq.stderr
    # the size `ls -l` shows is the length a read gives
    assert status.stat().st_size == len(status.read_bytes())


def test_hidden_from_the_root_listing_but_reachable(mounted: MountProc) -> None:
    (mounted.mnt / "file.txt").write_text("x")
    ls = subprocess.run(
        ["ls", "-a", str(mounted.mnt)], capture_output=True, text=True, timeout=30, check=True
    )
    assert ls.stdout.split() == [".", "..", "file.txt"]
    found = subprocess.run(
        ["find", str(mounted.mnt)], capture_output=True, text=True, timeout=30, check=True
    )
    assert ".wasmer-dfs" not in found.stdout
    views = mounted.mnt / ".wasmer-dfs"
    assert views.is_dir()
    assert sorted(os.listdir(views)) == ["accesslog", "history", "locks", "stats", "status"]
    assert sorted(os.listdir(views / "history")) == ["file.txt"]  # the tree, to walk it


def test_writes_and_name_changes_are_refused(mounted: MountProc) -> None:
    views = mounted.mnt / ".wasmer-dfs"
    for attempt in (
        lambda: (views / "status").write_text("{}"),
        lambda: (views / "new").write_text("x"),
        lambda: (views / "stats").unlink(),
        lambda: (views / "sub").mkdir(),
        lambda: os.rename(views / "locks", views / "locks2"),
    ):
        with pytest.raises(PermissionError):
            attempt()
    with pytest.raises(OSError) as e:
        os.rename(mounted.mnt / ".wasmer-dfs", mounted.mnt / "elsewhere")
    assert e.value.errno in (errno.EACCES, errno.ENOENT)
    assert json.loads((views / "status").read_text())["chain"]["name"] == "local"


def test_stats_counters_move_under_a_workload(mounted: MountProc) -> None:
    stats = mounted.mnt / ".wasmer-dfs" / "stats"
    before = json.loads(stats.read_text())
    for i in range(20):
        (mounted.mnt / f"f{i}").write_bytes(b"y" * 1000)
    after = json.loads(stats.read_text())
    assert after["operations"] > before["operations"]
    assert (
        after["ops"]["create"]["calls"] >= before["ops"].get("create", {"calls": 0})["calls"] + 20
    )
    assert after["bytes_written"] >= before["bytes_written"] + 20_000


def test_tail_f_of_the_accesslog_follows_another_process(mounted: MountProc) -> None:
    log = mounted.mnt / ".wasmer-dfs" / "accesslog"
    assert log.stat().st_size == 0
    tail = subprocess.Popen(
        ["tail", "-f", str(log)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        os.set_blocking(tail.stdout.fileno(), False)  # type: ignore[union-attr]
        time.sleep(1.5)  # tail has read to the end once
        got = b""
        seen_at: dict[str, float] = {}
        for i in range(3):
            name = f"made-by-another-{i}"
            subprocess.run(["mkdir", str(mounted.mnt / name)], check=True, timeout=30)
            made = time.monotonic()
            while time.monotonic() < made + 10 and name.encode() not in got:
                time.sleep(0.1)
                with contextlib.suppress(BlockingIOError, TypeError):
                    got += tail.stdout.read() or b""  # type: ignore[union-attr]
            assert name.encode() in got, got.decode(errors="replace")
            seen_at[name] = time.monotonic() - made
        # as they happen: each within a few seconds, not at the end
        assert max(seen_at.values()) < 5, seen_at
        assert b"mkdir (1 made-by-another-0): OK" in got
        assert b"accesslog" not in got and b"9223372036854775" not in got  # not its own reads
    finally:
        os.kill(tail.pid, signal.SIGTERM)
        tail.wait(timeout=10)


# -- a view that raises --------------------------------------------------------------------------
@pytest.fixture
def views_fs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    mnt = tmp_path / "views-mnt"
    mnt.mkdir()
    err = tmp_path / "views.stderr"
    with open(err, "wb") as ef:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mount.views_fs", str(mnt)], cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=ef,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not fuse_mounts_under(mnt):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "views_fs did not mount"
            time.sleep(0.05)
        yield mnt, err
    finally:
        if fuse_mounts_under(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        if fuse_mounts_under(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)


def test_a_view_that_raises_gives_eio_and_the_mount_keeps_working(
    views_fs: tuple[Path, Path],
) -> None:
    mnt, err = views_fs
    table = mnt / ".wasmer-dfs" / "broken" / "table"
    for _ in range(2):
        with pytest.raises(OSError) as e:
            table.read_bytes()
        assert e.value.errno == errno.EIO
    deadline = time.monotonic() + 10
    while "the table is gone" not in err.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = [line for line in err.read_text().splitlines() if "the table is gone" in line]
    assert logged and "'broken'" in logged[0] and "table" in logged[0], err.read_text()
    # the rest of the mount: files, and the other views
    (mnt / "still.txt").write_text("works")
    assert (mnt / "still.txt").read_text() == "works"
    assert json.loads((mnt / ".wasmer-dfs" / "stats").read_text())["errors"] >= 2
    assert sorted(os.listdir(mnt / ".wasmer-dfs")) == [
        "accesslog", "broken", "history", "locks", "stats", "status",
    ]  # fmt: skip


# -- the commands on top ---------------------------------------------------------------------------
def test_status_command_human_and_json(mounter: Mounter, mounted: MountProc) -> None:
    r = mounter.cli("status", str(mounted.mnt))
    assert r.returncode == 0, r.stderr
    assert "chain" in r.stdout and "local (encrypted" in r.stdout
    assert "pending uploads  0" in r.stdout
    r = mounter.cli("status", "--json", str(mounted.mnt))
    assert r.returncode == 0 and json.loads(r.stdout)["chain"]["name"] == "local"
    bad = mounter.cli("status", str(mounter.tmp_path))
    assert bad.returncode == 2 and "is not a wasmer-dfs mount" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_stats_command_shows_counters_moving(mounter: Mounter, mounted: MountProc) -> None:
    proc = subprocess.Popen(
        [wasmer_dfs_exe(), "stats", str(mounted.mnt), "--interval", "0.5", "--count", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 2.5
        i = 0
        while time.monotonic() < deadline:  # a workload while stats runs
            (mounted.mnt / f"w{i}").write_bytes(b"z" * 4096)
            i += 1
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ops/s", "errors"] and len(lines) == 5
    rates = [float(line.split()[0]) for line in lines[1:]]
    assert max(rates) > 10, out
    assert any(line.split()[4] != "0" for line in lines[1:]), out  # written/s moved
    js = mounter.cli("stats", "--json", str(mounted.mnt))
    assert js.returncode == 0 and json.loads(js.stdout)["ops"]["create"]["calls"] >= i


def test_status_of_a_replica_names_its_server_and_connection(
    mounter: Mounter, server: ServerProc
) -> None:
    mnt, logdir = mounter.dirs("replica")
    mp = mounter.mount(mnt, None, server.url(), str(logdir))  # type: ignore[arg-type]
    (mp.mnt / "up.txt").write_text("to the server")
    status = mp.mnt / ".wasmer-dfs" / "status"
    deadline = time.monotonic() + 20
    doc = json.loads(status.read_text())
    while time.monotonic() < deadline and (
        doc["pending_uploads"] or not doc["connection"]["synced"]
    ):
        time.sleep(0.2)
        doc = json.loads(status.read_text())
    assert doc["server"] == server.url()
    assert doc["connection"]["connected"] and doc["connection"]["synced"], doc
    assert doc["recovery_mode"] and doc["pending_uploads"] == 0
    assert doc["positions"]["uploaded_upto"] > 0
    assert json.loads((mp.mnt / ".wasmer-dfs" / "locks").read_text())["distributed"] is True
