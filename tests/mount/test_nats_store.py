"""Chain servers over a NATS JetStream cluster (issue 16, docs/adr/0022), end to end: a real
3-node nats-server cluster on loopback (tests/nats_cluster.py), two `wasmer-dfs serve --store
nats://...` processes, a mount through each. What one server accepted, the other serves, and
live events of one reach the mounts of the other (through the stream, no link between the
servers). Plus the refusals of `serve --store` (exit 2 with the reason)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, ServerProc, wasmer_dfs_exe
from tests.mount.test_replication import (
    _eq,
    _gone,
    _same,
    eventually,
    mount_remote,
    tree,
    write,
)
from tests.nats_cluster import NatsCluster, nats_cluster
from tests.net import free_port

pytestmark = [pytest.mark.timeout(300)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    (tmp_path / "nats").mkdir()
    with nats_cluster(tmp_path / "nats") as running:
        yield running


@pytest.fixture
def two_servers(tmp_path: Path, cluster: NatsCluster) -> Iterator[tuple[ServerProc, ServerProc]]:
    servers = []
    try:
        for name in ("s1", "s2"):
            (tmp_path / name).mkdir()
            srv = ServerProc(
                tmp_path / name, tmp_path / f"{name}.out", args=("--store", cluster.url)
            )
            servers.append(srv)
            srv.start()
        yield servers[0], servers[1]
    finally:
        for srv in servers:
            srv.stop()


def test_writes_through_one_server_appear_through_the_other(
    mounter: Mounter, two_servers: tuple[ServerProc, ServerProc]
) -> None:
    one, two = two_servers
    a = mount_remote(mounter, "a", one.url())
    write(a.mnt / "hello.txt", b"hello from A\n")
    (a.mnt / "dir").mkdir()
    write(a.mnt / "dir" / "inner", b"inner")
    b = mount_remote(mounter, "b", two.url())  # history from the stream, through server 2
    eventually(lambda: _same(b.mnt / "hello.txt", b"hello from A\n"), "A's file on B")
    eventually(lambda: _same(b.mnt / "dir" / "inner", b"inner"), "A's directory on B")
    # live, both ways: server 1 learns of server 2's appends through the stream and back
    with open(a.mnt / "hello.txt", "ab") as f:
        f.write(b"more\n")
    write(a.mnt / "later.txt", b"created while B is mounted")
    os.rename(a.mnt / "dir", a.mnt / "moved")
    eventually(lambda: _same(b.mnt / "hello.txt", b"hello from A\nmore\n"), "A's append on B")
    eventually(lambda: _same(b.mnt / "later.txt", b"created while B is mounted"), "a new file")
    eventually(lambda: _gone(b.mnt / "dir"), "A's rename on B")
    write(b.mnt / "from-b", b"B was here")
    os.unlink(b.mnt / "later.txt")
    os.truncate(b.mnt / "hello.txt", 5)
    eventually(lambda: _same(a.mnt / "from-b", b"B was here"), "B's file on A")
    eventually(lambda: _gone(a.mnt / "later.txt"), "B's unlink on A")
    eventually(lambda: _same(a.mnt / "hello.txt", b"hello"), "B's truncation on A")
    # a burst on each side in turn: every file reaches the other, both hold one tree
    for i in range(10):
        write(a.mnt / f"a{i}", b"A%d" % i)
    eventually(lambda: _same(b.mnt / "a9", b"A9"), "A's burst on B")
    for i in range(10):
        write(b.mnt / f"b{i}", b"B%d" % i)
    eventually(lambda: _same(a.mnt / "b9", b"B9"), "B's burst on A")
    eventually(lambda: _eq(tree(a.mnt), tree(b.mnt)), "the same tree on A and B")
    assert {f"a{i}" for i in range(10)} | {f"b{i}" for i in range(10)} <= set(os.listdir(a.mnt))
    # nothing lives in the servers' data directories but their wire keys
    for srv in two_servers:
        assert not list(srv.data_dir.glob("*.log"))


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [wasmer_dfs_exe(), "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(tmp_path / "srv"), *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_cluster_without_jetstream_is_refused(tmp_path: Path) -> None:
    with nats_cluster(tmp_path, nodes=1, jetstream=False) as plain:
        done = _serve(tmp_path, "--store", plain.url, "--replicas", "1")
    assert done.returncode == 2, done.stderr
    assert "no JetStream" in done.stderr and "Traceback" not in done.stderr


def test_too_few_replicas_are_refused(tmp_path: Path) -> None:
    with nats_cluster(tmp_path, nodes=1) as single:
        done = _serve(tmp_path, "--store", single.url, "--replicas", "3")
    assert done.returncode == 2, done.stderr
    assert "3 replicas" in done.stderr and "Traceback" not in done.stderr


def test_a_malformed_store_is_refused(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--store", "http://localhost:4222")
    assert done.returncode == 2 and "nats://HOST:PORT" in done.stderr, done.stderr


def test_a_nats_node_killed_while_a_writes_loses_nothing(
    tmp_path: Path, mounter: Mounter, cluster: NatsCluster
) -> None:
    """kill -9 the NATS node A's server is connected to (it is given that node only, and learns
    the others from the cluster) while A writes fsync'd files in sync recovery mode: every
    write A acknowledged reaches B through the other server; the node comes back."""
    node0 = "nats://" + cluster.nodes[0].address
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    one = ServerProc(tmp_path / "s1", tmp_path / "s1.out", args=("--store", node0))
    two = ServerProc(tmp_path / "s2", tmp_path / "s2.out", args=("--store", cluster.url))
    try:
        one.start()
        two.start()
        _write_through_a_node_kill(mounter, cluster, one, two)
    finally:
        one.stop()
        two.stop()


def _write_through_a_node_kill(
    mounter: Mounter, cluster: NatsCluster, one: ServerProc, two: ServerProc
) -> None:
    a = mount_remote(mounter, "a", one.url(), "--recovery-mode", "sync")
    b = mount_remote(mounter, "b", two.url())
    acknowledged: list[str] = []

    def put(name: str) -> None:
        fd = os.open(a.mnt / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, name.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        acknowledged.append(name)

    for i in range(5):
        put(f"before-{i}")
    cluster.kill(0)  # SIGKILL, by pid
    for i in range(10):
        put(f"during-{i}")
    cluster.start(0)
    cluster.wait_listening(0)
    for i in range(5):
        put(f"after-{i}")
    for name in acknowledged:
        eventually(lambda n=name: _same(b.mnt / n, n.encode()), f"{name} on B", timeout=60)
    eventually(lambda: _eq(tree(a.mnt), tree(b.mnt)), "the same tree on A and B")
