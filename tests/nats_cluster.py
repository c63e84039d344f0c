"""A NATS cluster for the tests (issue 16): ``nats_cluster(tmp, nodes=3)`` starts
``nats-server`` processes with JetStream on free loopback ports (tests/net.py), their
configuration and storage in ``tmp``, and always stops them *by pid* (SIGTERM, then SIGKILL).
``NatsCluster.kill(i)`` / ``start(i)`` play a node that dies and comes back."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.net import free_port

READY_TIMEOUT = 20.0


def nats_server_exe() -> str:
    found = shutil.which("nats-server")
    if found is None:
        pytest.skip("nats-server is not installed (scripts/install.sh installs it)")
    return found


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``nats://H:P,H:P,...``: the form ``serve --store`` takes."""
        return "nats://" + ",".join(n.address for n in self.nodes)

    @property
    def servers(self) -> list[str]:
        return [f"nats://{n.address}" for n in self.nodes]

    def start(self, i: int) -> None:
        node = self.nodes[i]
        assert node.proc is None or node.proc.poll() is not None, f"{node.name} runs already"
        node.proc = subprocess.Popen(
            [nats_server_exe(), "-c", str(node.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_listening(self, i: int) -> None:
        node = self.nodes[i]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server {node.name} exited ({node.proc.returncode}):"
                    f" {node.log.read_text(errors='replace')[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", node.port), timeout=0.5) as s,
            ):
                if s.recv(4).startswith(b"INFO"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"nats-server {node.name} does not listen on {node.port}")

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Stop node ``i`` by its pid (kill -9 by default)."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            proc = node.proc
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _config(node: NatsNode, routes: list[int], store: Path, jetstream: bool) -> str:
    lines = [
        f"server_name: {node.name}",
        f"listen: 127.0.0.1:{node.port}",
        # a commit frame may be 8 MiB (domain/wire.py MAX_FRAME)
        "max_payload: 16MB",
        f'logfile: "{node.log}"',
    ]
    if jetstream:
        lines += [
            "jetstream {",
            f'  store_dir: "{store}"',
            "  max_memory_store: 64MB",
            "  max_file_store: 2GB",
            "}",
        ]
    if routes:
        lines += [
            "cluster {",
            "  name: wdfs-test",
            f"  listen: 127.0.0.1:{node.cluster_port}",
            "  routes: [" + ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes) + "]",
            "}",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def nats_cluster(tmp: Path, nodes: int = 3, *, jetstream: bool = True) -> Iterator[NatsCluster]:
    """A running cluster of ``nodes`` nats-servers (one: a single server, no cluster block)."""
    exe = nats_server_exe()
    del exe
    cluster = NatsCluster()
    cluster_ports = [free_port() for _ in range(nodes)]
    for i in range(nodes):
        name = f"n{i + 1}"
        node = NatsNode(
            name, free_port(), cluster_ports[i], tmp / f"{name}.conf", tmp / f"{name}.log"
        )
        routes = [p for j, p in enumerate(cluster_ports) if j != i] if nodes > 1 else []
        node.config.write_text(_config(node, routes, tmp / f"{name}-js", jetstream))
        cluster.nodes.append(node)
    try:
        for i in range(nodes):
            cluster.start(i)
        for i in range(nodes):
            cluster.wait_listening(i)
        yield cluster
    finally:
        cluster.stop()
