"""Properties of the redo logs (file and in-memory): round trip, determinism, truncation, damage."""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.memory.log import MemoryRedoLogFactory
from adapters.redolog import FileRedoLogFactory
from application.ports import (
    DataRef,
    LogCorrupt,
    LogHeaderError,
    LogRecord,
    OpenReport,
    RedoLog,
    RedoLogFactory,
)

CHAIN = "prop"

records_st = st.lists(
    st.builds(
        LogRecord,
        meta=st.binary(max_size=40),
        fmt=st.integers(0, 255),
        data=st.none() | st.binary(max_size=80),
        commit=st.booleans(),
    ),
    max_size=16,
)
header_st = st.binary(max_size=24)

Seen = tuple[bytes, int, bytes | None, bool]


class Backend:
    """A fresh factory per example, and raw access to the bytes of a log."""

    name: str

    @contextmanager
    def factory(self) -> Iterator[RedoLogFactory]:
        raise NotImplementedError
        yield

    def raw(self, factory: RedoLogFactory) -> bytes:
        raise NotImplementedError

    def put_raw(self, factory: RedoLogFactory, data: bytes) -> None:
        raise NotImplementedError


class FileBackend(Backend):
    name = "file"

    @contextmanager
    def factory(self) -> Iterator[RedoLogFactory]:
        with tempfile.TemporaryDirectory() as d:
            yield FileRedoLogFactory(pathlib.Path(d))

    def raw(self, factory: RedoLogFactory) -> bytes:
        assert isinstance(factory, FileRedoLogFactory)
        return factory.path(CHAIN).read_bytes()

    def put_raw(self, factory: RedoLogFactory, data: bytes) -> None:
        assert isinstance(factory, FileRedoLogFactory)
        factory.path(CHAIN).write_bytes(data)


class MemoryBackend(Backend):
    name = "memory"

    @contextmanager
    def factory(self) -> Iterator[RedoLogFactory]:
        yield MemoryRedoLogFactory()

    def raw(self, factory: RedoLogFactory) -> bytes:
        assert isinstance(factory, MemoryRedoLogFactory)
        return bytes(factory.disk(CHAIN))

    def put_raw(self, factory: RedoLogFactory, data: bytes) -> None:
        assert isinstance(factory, MemoryRedoLogFactory)
        factory.disk(CHAIN)[:] = data


BACKENDS = [FileBackend(), MemoryBackend()]
backend_param = pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
props = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass
class Written:
    """What was written and where: ``commit_ends[k]`` is the log size after the k-th commit."""

    records: list[LogRecord]
    spans: list[tuple[int, int, DataRef | None]]  # (position, end, data ref) per record
    header_end: int
    commit_ends: list[int]  # header_end first
    commit_counts: list[int]  # records in the committed prefix ending at commit_ends[k]

    def prefix_at(self, offset: int) -> tuple[int, int]:
        """(end, record count) of the longest committed prefix that fits in ``offset`` bytes."""
        k = max(i for i, e in enumerate(self.commit_ends) if e <= offset)
        return self.commit_ends[k], self.commit_counts[k]


def write(factory: RedoLogFactory, header: bytes, records: Sequence[LogRecord]) -> Written:
    log = factory.create(CHAIN, header)
    header_end = log.size()
    spans: list[tuple[int, int, DataRef | None]] = []
    ends, counts = [header_end], [0]
    for n, rec in enumerate(records, 1):
        pos, ref = log.append(rec)
        spans.append((pos, log.size(), ref))
        if rec.commit:
            ends.append(log.size())
            counts.append(n)
    log.sync()
    log.close()
    return Written(list(records), spans, header_end, ends, counts)


def seen(records: Sequence[LogRecord]) -> list[Seen]:
    return [(r.meta, r.fmt, r.data, r.commit) for r in records]


def replay(log: RedoLog) -> list[Seen]:
    return [
        (r.meta, r.fmt, None if r.data is None else log.read_data(r.data), r.commit)
        for r in log.scan()
    ]


@backend_param
@props
@given(header=header_st, records=records_st)
def test_append_then_replay_round_trips(
    backend: Backend, header: bytes, records: list[LogRecord]
) -> None:
    with backend.factory() as factory:
        log = factory.create(CHAIN, header)
        returned = [log.append(r) for r in records]
        committed = max((i + 1 for i, r in enumerate(records) if r.commit), default=0)
        assert replay(log) == seen(records[:committed])  # before reopening, too
        size = log.size()
        log.close()
        log = factory.open(CHAIN)
        assert log.header == header
        assert replay(log) == seen(records[:committed])
        scanned = list(log.scan())
        assert [(s.position, s.data) for s in scanned] == returned[:committed]
        cut_from = returned[committed][0] if committed < len(records) else size
        assert log.open_report == OpenReport(size - cut_from, cut_from)
        log.close()


@backend_param
@props
@given(header=header_st, records=records_st)
def test_replay_is_deterministic(backend: Backend, header: bytes, records: list[LogRecord]) -> None:
    with backend.factory() as factory:
        write(factory, header, records)
        ro1 = factory.open(CHAIN, read_only=True)
        ro2 = factory.open(CHAIN, read_only=True)
        first, second = list(ro1.scan()), list(ro2.scan())
        assert first == second
        assert ro1.open_report == ro2.open_report
        assert replay(ro1) == replay(ro2)
        ro1.close()
        ro2.close()
        rw = factory.open(CHAIN)
        assert list(rw.scan()) == first
        rw.close()
        again = factory.open(CHAIN)
        assert list(again.scan()) == first
        assert again.open_report.cut_bytes == 0
        again.close()


@backend_param
@props
@given(header=header_st, records=records_st, data=st.data())
def test_any_truncation_opens_to_a_committed_prefix(
    backend: Backend, header: bytes, records: list[LogRecord], data: st.DataObject
) -> None:
    with backend.factory() as factory:
        w = write(factory, header, records)
        full = backend.raw(factory)
        cut = data.draw(st.integers(0, len(full)), label="cut")
        backend.put_raw(factory, full[:cut])
        if cut < w.header_end:
            with pytest.raises(LogHeaderError):
                factory.open(CHAIN)
            return
        end, count = w.prefix_at(cut)
        log = factory.open(CHAIN)
        assert replay(log) == seen(records[:count])
        assert log.open_report == OpenReport(cut - end, end)
        log.close()
        assert backend.raw(factory) == full[:end]


@backend_param
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=header_st,
    records=records_st.filter(lambda rs: any(r.commit for r in rs)),
    data=st.data(),
)
def test_any_flipped_byte_is_detected(
    backend: Backend, header: bytes, records: list[LogRecord], data: st.DataObject
) -> None:
    with backend.factory() as factory:
        w = write(factory, header, records)
        full = backend.raw(factory)
        data_bytes = [
            ref.offset + k for _, _, ref in w.spans if ref is not None for k in range(ref.length)
        ]
        where = data.draw(st.sampled_from(["anywhere", "after header", "in data"]), label="where")
        if where == "in data" and data_bytes:
            i = data.draw(st.sampled_from(data_bytes), label="offset")
        elif where == "after header":
            i = data.draw(st.integers(w.header_end, len(full) - 1), label="offset")
        else:
            i = data.draw(st.integers(0, len(full) - 1), label="offset")
        mask = data.draw(st.integers(1, 255), label="mask")
        bad = bytearray(full)
        bad[i] ^= mask
        backend.put_raw(factory, bytes(bad))

        committed_end = w.commit_ends[-1]
        prev_end, prev_count = w.commit_ends[-2], w.commit_counts[-2]
        all_count = w.commit_counts[-1]
        owner = next((n for n, (pos, end, _) in enumerate(w.spans) if pos <= i < end), None)

        if i < w.header_end:
            event("flip in header")
            with pytest.raises(LogHeaderError):
                factory.open(CHAIN, read_only=True)
            with pytest.raises(LogHeaderError):
                factory.open(CHAIN)
            assert backend.raw(factory) == bytes(bad)
            return

        outcomes = []
        for read_only in (True, False):
            try:
                log = factory.open(CHAIN, read_only=read_only)
            except LogCorrupt:
                outcomes.append("corrupt")
                continue
            scanned = list(log.scan())
            # records are never silently different: structure is the original's
            want = [(r.meta, r.fmt, r.commit) for r in records[: len(scanned)]]
            assert [(s.meta, s.fmt, s.commit) for s in scanned] == want
            assert [s.data for s in scanned] == [ref for _, _, ref in w.spans[: len(scanned)]]
            bad_reads = []
            for n, s in enumerate(scanned):
                if s.data is None:
                    continue
                try:
                    assert log.read_data(s.data) == records[n].data
                except LogCorrupt:
                    bad_reads.append(n)
            log.close()
            outcomes.append(f"{len(scanned)} {bad_reads}")
            if read_only:
                assert backend.raw(factory) == bytes(bad)
        assert outcomes[0] == outcomes[1]  # read-only and writable opens agree

        allowed: set[str]
        event(f"outcome: {outcomes[0].split(' ')[0] if outcomes[0] == 'corrupt' else 'opened'}")
        if i >= committed_end:  # in the uncommitted tail: never part of the replay
            event("flip in uncommitted tail")
            allowed = {"corrupt", f"{all_count} []"}
        elif i >= prev_end:  # in the final transaction: may be taken for a torn tail
            event("flip in final transaction")
            allowed = {"corrupt", f"{prev_count} []"}
        else:
            assert owner is not None
            ref = w.spans[owner][2]
            if ref is not None and ref.offset <= i:  # in the data of an earlier record
                event("flip in earlier data")
                allowed = {f"{all_count} [{owner}]"}
            else:  # in the frame or meta of an earlier record
                event("flip in earlier frame or meta")
                allowed = {"corrupt"}
        assert set(outcomes) <= allowed, (i, outcomes, allowed)
