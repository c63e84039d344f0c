"""The Prometheus collectors (adapters/metrics.py) read what the application counts, at scrape
time; the chain server's connections count into ``ServerStats``; --metrics addresses."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from adapters.clock import SystemClock
from adapters.memory.log import MemoryRedoLogFactory
from adapters.metrics import MetricsServer, MountCollector, MountSource, ServerCollector
from application.chain_server import ChainServer, ServerConfig
from application.lock_server import LockConfig
from application.server_peer import Peer
from application.server_stats import ServerStats
from application.stats import OperationStats
from domain.fs.model import ROOT_INO
from domain.wire import Commit, Hello, Lock
from entrypoints.settings import OptionError, host_port
from tests.fakes import FastCrypto
from tests.server.conftest import LocalChain
from tests.unit.conftest import Rig

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(collector: Collector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_mount_not_open_yet_says_so_and_nothing_more() -> None:
    samples = scrape(MountCollector(MountSource()))
    assert samples == {("wasmer_dfs_mounted", ()): 0.0}


def test_operations_are_read_from_the_stats_at_each_scrape() -> None:
    stats = OperationStats()
    collector = MountCollector(MountSource(stats=stats))
    stats.record("write", 0.0002)
    stats.record("write", 0.003, 28)
    stats.record("lookup", 20.0, 2)
    stats.written(4096)
    stats.read(10)
    s = scrape(collector)
    assert s[("wasmer_dfs_mounted", ())] == 1
    assert s[("wasmer_dfs_operations_total", (("op", "write"),))] == 2
    assert s[("wasmer_dfs_operation_errors_total", (("op", "write"),))] == 1
    assert s[("wasmer_dfs_operation_errors_total", (("op", "lookup"),))] == 1
    bucket = "wasmer_dfs_operation_seconds_bucket"
    assert s[(bucket, (("le", "0.0001"), ("op", "write")))] == 0
    assert s[(bucket, (("le", "0.00025"), ("op", "write")))] == 1
    assert s[(bucket, (("le", "0.005"), ("op", "write")))] == 2
    assert s[(bucket, (("le", "10.0"), ("op", "lookup")))] == 0
    assert s[(bucket, (("le", "+Inf"), ("op", "lookup")))] == 1
    assert s[("wasmer_dfs_operation_seconds_count", (("op", "write"),))] == 2
    assert s[("wasmer_dfs_operation_seconds_sum", (("op", "write"),))] == pytest.approx(0.0032)
    assert s[("wasmer_dfs_written_bytes_total", ())] == 4096
    assert s[("wasmer_dfs_read_bytes_total", ())] == 10
    stats.record("write", 0.0002)
    assert scrape(collector)[("wasmer_dfs_operations_total", (("op", "write"),))] == 3


def test_a_scrape_retries_when_a_new_operation_appears_meanwhile() -> None:
    class Racing(OperationStats):
        calls = 0

        def snapshot(self) -> dict[str, object]:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return super().snapshot()

    stats = Racing()
    stats.record("read", 0.001)
    assert (
        scrape(MountCollector(MountSource(stats=stats)))[
            ("wasmer_dfs_operations_total", (("op", "read"),))
        ]
        == 1
    )
    assert stats.calls == 2


def make_server() -> ChainServer:
    config = ServerConfig(locks=LockConfig(lease=10.0, grace=0.0))
    return ChainServer(MemoryRedoLogFactory(), FastCrypto(), SystemClock(), config)


def connect(server: ChainServer, header: bytes | None = None) -> Peer:
    peer = Peer(server, "fs", lambda: None)
    peer.hello(Hello([1], "fs", header, client_id=b"c" * 16 if header else b"d" * 16),
               server.loaded("fs") or server.load("fs"))  # fmt: skip
    return peer


def test_the_server_counts_connections_chains_commits_and_lock_waits() -> None:
    server = make_server()
    collector = ServerCollector(server.stats, lambda: len(server.hosts))
    chain = LocalChain()
    creator = connect(server, chain.header)
    genesis = chain.genesis()
    for i, tx in enumerate(genesis):
        creator.handle(Commit(i, tx))
    creator.handle(Commit(9, [*chain.write(b"x")[:-1], chain.write(b"y")[-1]]))  # a bad seal
    other = connect(server)
    s = scrape(collector)
    p = "wasmer_dfs_server"
    assert s[(f"{p}_connections", ())] == 2
    assert s[(f"{p}_connections_opened_total", ())] == 2
    assert s[(f"{p}_chains_created_total", ())] == 1
    assert s[(f"{p}_chains_open", ())] == 1
    assert s[(f"{p}_commits_total", ())] == len(genesis)
    assert s[(f"{p}_commits_refused_total", ())] == 1
    assert s[(f"{p}_events_total", ())] == sum(len(tx) for tx in genesis)
    size = sum(len(r.meta) + len(r.data or b"") for tx in genesis for r in tx)
    assert s[(f"{p}_committed_bytes_total", ())] == size

    creator.handle(Lock(1, 5, 1, 2, 0, 10))  # granted at once
    other.handle(Lock(1, 5, 2, 2, 0, 10))  # conflict, answered at once
    other.handle(Lock(2, 5, 2, 2, 0, 10, wait=True))  # waits for the holder
    s = scrape(collector)
    assert s[(f"{p}_lock_requests_total", ())] == 3
    assert s[(f"{p}_lock_waits_total", ())] == 1

    other.close()
    other.close()  # counted once
    assert scrape(collector)[(f"{p}_connections", ())] == 1
    assert ServerStats(connections_opened=3, connections_closed=1).connections == 2


def test_the_metrics_server_serves_over_http_until_closed() -> None:
    stats = OperationStats()
    stats.record("open", 0.001)
    exporter = MetricsServer("127.0.0.1", 0, MountCollector(MountSource(stats=stats)))
    try:
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        assert 'wasmer_dfs_operations_total{op="open"} 1.0' in text
        assert "process_cpu_seconds_total" in text
    finally:
        exporter.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:0", ("::1", 0)),
     ("localhost:65535", ("localhost", 65535))],
)  # fmt: skip
def test_host_port(value: str, expected: tuple[str, int]) -> None:
    assert host_port(value, "--metrics") == expected


@pytest.mark.parametrize("value", ["9100", ":9100", "host:", "host:x", "h:65536", "[]:1", "[::1:2"])
def test_host_port_refuses(value: str) -> None:
    with pytest.raises(OptionError, match="--metrics must be HOST:PORT"):
        host_port(value, "--metrics")


def test_compactions_are_counted_from_the_compactor(rig: Rig) -> None:
    compactor = rig.mounted.compactor
    assert compactor is not None
    collector = MountCollector(MountSource(stats=rig.fs.stats, compactor=compactor))
    s = scrape(collector)
    assert s[("wasmer_dfs_compactions_total", ())] == 0
    assert ("wasmer_dfs_compaction_last_seconds", ()) not in s
    for i in range(3):
        fh, _ = rig.fs.create(ROOT_INO, f"f{i}".encode(), 0o644, 1000, 1000)
        rig.fs.write(fh, 0, b"x" * 5000)
        rig.fs.release(fh)
    result = compactor.compact()
    s = scrape(collector)
    assert s[("wasmer_dfs_compactions_total", ())] == 1
    assert s[("wasmer_dfs_compaction_failures_total", ())] == 0
    assert s[("wasmer_dfs_compaction_last_before_bytes", ())] == result.before
    assert s[("wasmer_dfs_compaction_last_after_bytes", ())] == result.after
    assert s[("wasmer_dfs_compaction_last_seconds", ())] == pytest.approx(result.seconds)


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist(rig: Rig) -> None:
    import json
    import re
    from pathlib import Path

    from application.replication import ReplicationState

    class Replica:  # what the collector reads of a ReplicationService
        state = ReplicationState()
        replica = type("ReplicaLog", (), {"pending": 0})()

    assert rig.mounted.compactor is not None
    rig.mounted.compactor.compact()
    source = MountSource(
        stats=OperationStats(), replication=Replica(), compactor=rig.mounted.compactor
    )  # type: ignore[arg-type]
    source.stats.record("read", 0.001)  # type: ignore[union-attr]
    names = {n for n, _ in scrape(MountCollector(source))}
    names |= {n for n, _ in scrape(ServerCollector(ServerStats(), lambda: 0))}
    names.add("process_resident_memory_bytes")
    dashboard = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
    text = json.dumps(json.loads(dashboard.read_text()))
    wanted = set(re.findall(r"\b(?:wasmer_dfs|process)_[a-z_]+", text))
    assert wanted, "no metric in the dashboard"
    assert wanted <= names, wanted - names
    assert "wasmer_dfs_compactions_total" in wanted
