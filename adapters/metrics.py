"""Prometheus metrics of a mount (``mount --metrics``) and of a chain server (``serve
--metrics``), with the official ``prometheus_client`` (docs/adr/0020).

Nothing is recorded twice: the collectors read, at scrape time, what the application already
counts (``OperationStats`` of the mount, ``ReplicationService``'s state, ``ServerStats`` of the
chain server) and turn it into metric families. The HTTP server is prometheus_client's own, in a
daemon thread; it reads plain integers and dictionaries the event loop updates (a scrape that
meets a dictionary growing under it tries again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from application.compaction import Compactor
from application.replication import ReplicationService
from application.server_stats import ServerStats
from application.stats import OperationStats

log = logging.getLogger("wasmer_dfs.metrics")

PREFIX = "wasmer_dfs"

#: how often a scrape tries again when the event loop changed a dictionary while it was read
_ATTEMPTS = 5


def _snapshot(stats: OperationStats) -> dict[str, Any]:
    for _ in range(_ATTEMPTS - 1):
        try:
            return stats.snapshot()
        except RuntimeError:  # "dictionary changed size during iteration": a new operation
            continue
    return stats.snapshot()


@dataclass(slots=True)
class MountSource:
    """What a mount's collector reads: filled in as the mount comes up (the HTTP server starts
    before the log is opened, so a bad address fails before anything is mounted)."""

    stats: OperationStats | None = None
    replication: ReplicationService | None = None
    compactor: Compactor | None = None


class MountCollector(Collector):
    """The metrics of one mount, read from ``source`` at every scrape."""

    def __init__(self, source: MountSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        stats = self.source.stats
        yield GaugeMetricFamily(
            f"{PREFIX}_mounted",
            "1 once the chain is open and being mounted",
            value=int(stats is not None),
        )
        if stats is not None:
            yield from _operations(_snapshot(stats))
        replication = self.source.replication
        if replication is not None:
            yield from _replication(replication)
        compactor = self.source.compactor
        if compactor is not None:
            yield from _compaction(compactor)


def _operations(snap: dict[str, Any]) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        f"{PREFIX}_operations", "File-system operations answered, by operation", labels=["op"]
    )
    errors = CounterMetricFamily(
        f"{PREFIX}_operation_errors",
        "File-system operations answered with an error, by operation",
        labels=["op"],
    )
    latency = HistogramMetricFamily(
        f"{PREFIX}_operation_seconds",
        "Time to answer a file-system operation, by operation",
        labels=["op"],
    )
    for op, c in snap["ops"].items():
        calls.add_metric([op], c["calls"])
        errors.add_metric([op], c["errors"])
        latency.add_metric([op], list(c["histogram"].items()), sum_value=c["seconds"])
    yield calls
    yield errors
    yield latency
    yield CounterMetricFamily(
        f"{PREFIX}_read_bytes", "Bytes read through the mount", value=snap["bytes_read"]
    )
    yield CounterMetricFamily(
        f"{PREFIX}_written_bytes", "Bytes written through the mount", value=snap["bytes_written"]
    )


def _replication(r: ReplicationService) -> Iterator[Metric]:
    state = r.state
    yield GaugeMetricFamily(
        f"{PREFIX}_connected",
        "1 while connected to the chain server (a replicated mount)",
        value=int(state.connected),
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_uploads_pending",
        "Local transactions the chain server has not confirmed yet",
        value=r.replica.pending,
    )
    s = state.stats
    for name, value, what in (
        ("applied", s.applied, "Transactions streamed from the chain server and applied"),
        ("uploaded", s.uploaded, "Upload batches the chain server confirmed"),
        ("upload_rejections", s.rejected, "Uploads the chain server refused"),
        ("reconnects", s.reconnects, "Connections to the chain server made again"),
        ("conflicts", s.conflicts, "Conflict copies made for files changed on two sides"),
    ):
        yield CounterMetricFamily(f"{PREFIX}_replication_{name}", what, value=value)


def _compaction(c: Compactor) -> Iterator[Metric]:
    yield CounterMetricFamily(
        f"{PREFIX}_compactions", "Compactions of the log completed", value=c.completed
    )
    yield CounterMetricFamily(
        f"{PREFIX}_compaction_failures", "Compactions given up (retried later)", value=c.failures
    )
    last = c.last
    if last is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_compaction_last_seconds", "Duration of the last compaction", last.seconds
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_compaction_last_before_bytes", "Log size before the last compaction",
            last.before,
        )  # fmt: skip
        yield GaugeMetricFamily(
            f"{PREFIX}_compaction_last_after_bytes", "Log size after the last compaction",
            last.after,
        )  # fmt: skip


class ServerCollector(Collector):
    """The metrics of a chain server: ``stats`` (counted by its connections) and the number of
    chains open now (``chains``: read at scrape time)."""

    def __init__(self, stats: ServerStats, chains: Callable[[], int]) -> None:
        self.stats = stats
        self.chains = chains

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        p = f"{PREFIX}_server"
        yield GaugeMetricFamily(f"{p}_connections", "Client connections open", s.connections)
        yield GaugeMetricFamily(f"{p}_chains_open", "Chains open (with a client)", self.chains())
        for name, value, what in (
            ("connections_opened", s.connections_opened, "Client connections accepted"),
            ("chains_created", s.chains_created, "Chains created by a client's first commit"),
            ("commits", s.commits, "Transactions stored"),
            ("commits_refused", s.commits_refused, "Transactions refused"),
            ("events", s.events, "Records (events and seals) of the stored transactions"),
            ("committed_bytes", s.bytes_committed, "Bytes of the stored records"),
            ("lock_requests", s.lock_requests, "File-lock requests received"),
            ("lock_waits", s.lock_waits, "Lock requests that had to wait"),
        ):
            yield CounterMetricFamily(f"{p}_{name}", what, value=value)


class MetricsServer:
    """prometheus_client's HTTP server (``/metrics``) on ``host``:``port``, serving ``collector``
    and the process's own metrics (CPU, memory, open files). ``OSError`` when it cannot listen."""

    def __init__(self, host: str, port: int, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        self._server: WSGIServer
        self._thread: Thread
        self._server, self._thread = start_http_server(port, host, self.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
