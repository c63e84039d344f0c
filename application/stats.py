"""What a mount has done, counted: file-system operations (calls, errors, latency histogram),
bytes read and written, and a live feed of operations for whoever listens (an access log).

One ``OperationStats`` per mount. The FUSE adapter records every request into it
(adapters/fuse_ops.py); readers take a ``snapshot()``: the emulated files (`/.wasmer-dfs/stats`),
`wasmer-dfs stats`, and the Prometheus exporter (`--metrics`). Recording costs a few dictionary
updates; the access-log feed costs nothing while nobody listens.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

#: upper bounds (seconds) of the latency histogram's buckets; a last bucket holds the rest
LATENCY_BUCKETS: tuple[float, ...] = (
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Access:
    """One finished operation, as an access log shows it."""

    #: when it finished (seconds since the epoch, as the caller's clock says)
    at: float
    op: str
    seconds: float
    #: the errno it was answered with (0: success)
    errno: int
    #: the operation's subject, e.g. "ino=12" or "ino=1 name=notes.txt" ("" when none)
    detail: str = ""


@dataclass(slots=True)
class OpCounter:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    #: counts per bucket of LATENCY_BUCKETS, plus one for slower calls
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


Listener = Callable[[Access], None]


class OperationStats:
    """Counters of one mount (see the module's docstring). Not thread-safe: record from the
    event loop that serves the file system."""

    def __init__(self) -> None:
        self.ops: dict[str, OpCounter] = {}
        self.bytes_read = 0
        self.bytes_written = 0
        self._listeners: list[Listener] = []

    def record(self, op: str, seconds: float, errno: int = 0, *, at: float = 0.0,
               detail: str = "") -> None:  # fmt: skip
        """One operation ``op`` finished after ``seconds`` with ``errno`` (0: success)."""
        c = self.ops.get(op)
        if c is None:
            c = self.ops[op] = OpCounter()
        c.calls += 1
        c.seconds += seconds
        if errno:
            c.errors += 1
        c.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if self._listeners:
            access = Access(at, op, seconds, errno, detail)
            for listener in list(self._listeners):
                listener(access)

    def read(self, n: int) -> None:
        self.bytes_read += n

    def written(self, n: int) -> None:
        self.bytes_written += n

    @property
    def listening(self) -> bool:
        """Whether anyone follows the access log (callers skip building details otherwise)."""
        return bool(self._listeners)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every operation from now on; returns the call that stops it."""
        self._listeners.append(listener)

        def stop() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return stop

    def snapshot(self) -> dict[str, object]:
        """Plain data (JSON-ready): totals, and per operation its calls, errors, seconds and
        cumulative histogram (``le`` bound -> calls at most that slow, "+Inf" last)."""
        ops: dict[str, object] = {}
        for name in sorted(self.ops):
            c = self.ops[name]
            cumulative: dict[str, int] = {}
            running = 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), c.buckets, strict=True):
                running += n
                cumulative["+Inf" if bound == float("inf") else repr(bound)] = running
            ops[name] = {
                "calls": c.calls,
                "errors": c.errors,
                "seconds": round(c.seconds, 6),
                "histogram": cumulative,
            }
        return {
            "operations": sum(c.calls for c in self.ops.values()),
            "errors": sum(c.errors for c in self.ops.values()),
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "ops": ops,
        }
