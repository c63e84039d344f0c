"""`mount --metrics` and `serve --metrics` (issue 19): a scrape parses as Prometheus text and
its counters move under a workload, for a real mount and a real chain server."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.mount.conftest import MOUNT_TIMEOUT, Mounter, MountProc, ServerProc
from tests.net import free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, by (name, labels); the text must parse as Prometheus'."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_scrape(port: int, mp: MountProc | None = None) -> dict:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while True:
        try:
            return scrape(port)
        except OSError:
            if mp is not None and mp.proc.poll() is not None:
                pytest.fail(f"mount exited with {mp.proc.returncode}:\n{mp.stderr()}")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def workload(mnt: Path, n: int = 5, size: int = 100_000) -> None:
    for i in range(n):
        p = mnt / f"f{i}"
        p.write_bytes(os.urandom(size))
        assert len(p.read_bytes()) == size
    os.listdir(mnt)


def test_mount_metrics_move_under_a_workload(mounter: Mounter) -> None:
    port = free_port()
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--metrics", f"127.0.0.1:{port}")
    before = wait_scrape(port, mp)
    assert value(before, "wasmer_dfs_mounted") == 1
    assert value(before, "wasmer_dfs_operations_total", op="write") == 0
    workload(mnt)
    after = scrape(port)
    writes = value(after, "wasmer_dfs_operations_total", op="write")
    assert writes >= 5
    assert value(after, "wasmer_dfs_operation_seconds_count", op="write") == writes
    assert value(after, "wasmer_dfs_operation_seconds_bucket", op="write", le="+Inf") == writes
    assert value(after, "wasmer_dfs_operation_seconds_sum", op="write") > 0
    assert value(after, "wasmer_dfs_operations_total", op="create") >= 5
    assert value(after, "wasmer_dfs_written_bytes_total") >= 5 * 100_000
    assert value(after, "wasmer_dfs_operations_total", op="lookup") > value(
        before, "wasmer_dfs_operations_total", op="lookup"
    )
    # an error is counted as one (the file system answers ENOTEMPTY)
    (mnt / "d").mkdir()
    (mnt / "d" / "x").write_bytes(b"x")
    with pytest.raises(OSError, match="not empty"):
        os.rmdir(mnt / "d")
    errors = scrape(port)
    assert value(errors, "wasmer_dfs_operation_errors_total", op="rmdir") == 1
    assert value(errors, "wasmer_dfs_operations_total", op="rmdir") == 1
    assert value(errors, "process_resident_memory_bytes") > 0
    assert mp.unmount() == 0


@pytest.mark.parametrize(
    "address", ["nonsense", "127.0.0.1:99999", ":80", "127.0.0.1:"], ids=lambda a: a or "empty"
)
def test_a_bad_metrics_address_is_refused_before_mounting(mounter: Mounter, address: str) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.spawn(mnt, logdir, "--metrics", address)
    assert mp.wait() == 2
    assert "--metrics must be HOST:PORT" in mp.stderr()
    assert "Traceback" not in mp.stderr()
    assert not mp.is_mounted()
    assert not (logdir / "local.log").exists()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_metrics_port_in_use_is_refused_before_mounting(mounter: Mounter, busy_port: int) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.spawn(mnt, logdir, "--metrics", f"127.0.0.1:{busy_port}")
    assert mp.wait() == 2
    assert f"--metrics: cannot listen on 127.0.0.1:{busy_port}" in mp.stderr()
    assert "Traceback" not in mp.stderr()
    assert not (logdir / "local.log").exists()


@pytest.fixture
def metered_server(tmp_path: Path) -> Iterator[tuple[ServerProc, int]]:
    (tmp_path / "server").mkdir()
    port = free_port()
    srv = ServerProc(
        tmp_path / "server", tmp_path / "server.out", args=("--metrics", f"127.0.0.1:{port}")
    )
    srv.start()
    try:
        yield srv, port
    finally:
        srv.stop()


def test_serve_and_replica_metrics_move_under_a_workload(
    mounter: Mounter, metered_server: tuple[ServerProc, int]
) -> None:
    server, server_port = metered_server
    before = wait_scrape(server_port)
    assert value(before, "wasmer_dfs_server_connections") == 0
    assert value(before, "wasmer_dfs_server_commits_total") == 0

    mount_port = free_port()
    mnt, logdir = mounter.dirs("a")
    mp = mounter.spawn(mnt, None, server.url(), str(logdir), "--metrics", f"127.0.0.1:{mount_port}")
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mp.is_mounted():
        assert mp.proc.poll() is None, mp.stderr()
        assert time.monotonic() < deadline, mp.stderr()
        time.sleep(0.02)
    workload(mnt)
    fd = os.open(mnt / "f0", os.O_RDWR)
    try:
        os.fsync(fd)  # uploads confirmed by the server
    finally:
        os.close(fd)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while True:
        mine = scrape(mount_port)
        if value(mine, "wasmer_dfs_uploads_pending") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert value(mine, "wasmer_dfs_connected") == 1
    assert value(mine, "wasmer_dfs_uploads_pending") == 0
    assert value(mine, "wasmer_dfs_replication_uploaded_total") >= 1
    assert value(mine, "wasmer_dfs_operations_total", op="write") >= 5

    after = scrape(server_port)
    assert value(after, "wasmer_dfs_server_connections") >= 1  # replication and locks
    assert value(after, "wasmer_dfs_server_connections_opened_total") >= 1
    assert value(after, "wasmer_dfs_server_chains_created_total") == 1
    assert value(after, "wasmer_dfs_server_chains_open") == 1
    assert value(after, "wasmer_dfs_server_commits_total") >= 2
    assert value(after, "wasmer_dfs_server_events_total") > value(
        after, "wasmer_dfs_server_commits_total"
    )
    assert value(after, "wasmer_dfs_server_committed_bytes_total") >= 5 * 100_000
    assert value(after, "wasmer_dfs_server_commits_refused_total") == 0

    assert mp.unmount() == 0
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while value(scrape(server_port), "wasmer_dfs_server_connections") != 0:
        assert time.monotonic() < deadline, "the server still counts the mount's connections"
        time.sleep(0.1)
    gone = scrape(server_port)
    assert value(gone, "wasmer_dfs_server_connections_opened_total") == value(
        after, "wasmer_dfs_server_connections_opened_total"
    )


def test_serve_refuses_a_bad_metrics_address(tmp_path: Path) -> None:
    srv = ServerProc(tmp_path, tmp_path / "server.out", args=("--metrics", "no-port"))
    with pytest.raises(AssertionError, match="--metrics must be HOST:PORT"):
        srv.start()
    srv.stop()


def test_a_compaction_is_counted(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    first = mounter.mount(mnt, logdir)
    for _ in range(3):
        (mnt / "f").write_bytes(os.urandom(50_000))  # versions that compaction drops
    assert first.unmount() == 0
    port = free_port()
    mp = mounter.mount(mnt, logdir, "--compact-now", "--metrics", f"127.0.0.1:{port}")
    s = wait_scrape(port, mp)
    assert value(s, "wasmer_dfs_compactions_total") == 1
    assert value(s, "wasmer_dfs_compaction_failures_total") == 0
    before = value(s, "wasmer_dfs_compaction_last_before_bytes")
    assert 0 < value(s, "wasmer_dfs_compaction_last_after_bytes") < before
    assert mp.unmount() == 0
