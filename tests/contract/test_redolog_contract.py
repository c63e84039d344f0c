"""The redo-log contract, run against the file adapter and its in-memory twin."""

from __future__ import annotations

import errno
import os
import pathlib
import stat
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from adapters import redolog_format
from adapters.memory.log import MemoryRedoLogFactory
from adapters.redolog import FileRedoLogFactory
from adapters.redolog_format import FRAME_SIZE, encode_header
from application.ports import (
    DamagedSpan,
    DataRef,
    LogCorrupt,
    LogError,
    LogExists,
    LogHeaderError,
    LogNotFound,
    LogRecord,
    OpenReport,
    RedoLog,
    RedoLogFactory,
)
from domain.hashing import EMPTY_HASH, sha256_of

HEADER = b"chain-parameters\x00\x01\x02"
CHAIN = "chain-1"

Expected = tuple[bytes, int, bytes | None, bool]

TXS: list[list[LogRecord]] = [
    [LogRecord(b"meta-1", 1, b"data-1", False), LogRecord(b"c1", 0, None, True)],
    [
        LogRecord(b"meta-2a", 2, b"x" * 100, False),
        LogRecord(b"meta-2b", 255, b"", False),
        LogRecord(b"", 7, None, True),
    ],
    [LogRecord(b"meta-3", 3, b"data-3", False), LogRecord(b"c3", 0, b"tail-data", True)],
]


def expected(records: Sequence[LogRecord]) -> list[Expected]:
    return [(r.meta, r.fmt, r.data, r.commit) for r in records]


def replay(log: RedoLog) -> list[Expected]:
    """Every committed record with its data read back."""
    return [
        (r.meta, r.fmt, None if r.data is None else log.read_data(r.data), r.commit)
        for r in log.scan()
    ]


@dataclass
class Layout:
    """Where the records of ``TXS`` landed."""

    header_end: int
    positions: list[list[int]]  # per transaction, per record
    refs: list[list[DataRef | None]]
    tx_ends: list[int]  # log size after each transaction

    def tx_start(self, i: int) -> int:
        return self.positions[i][0]


def write_txs(log: RedoLog, txs: Sequence[Sequence[LogRecord]]) -> Layout:
    header_end = log.size()
    positions: list[list[int]] = []
    refs: list[list[DataRef | None]] = []
    ends: list[int] = []
    for tx in txs:
        ps: list[int] = []
        rs: list[DataRef | None] = []
        for rec in tx:
            pos, ref = log.append(rec)
            ps.append(pos)
            rs.append(ref)
        positions.append(ps)
        refs.append(rs)
        ends.append(log.size())
    log.sync()
    return Layout(header_end, positions, refs, ends)


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


class RedoLogContract:
    """Subclasses provide a fresh ``factory`` and raw access to a log's bytes."""

    @pytest.fixture
    def factory(self) -> RedoLogFactory:
        raise NotImplementedError

    def raw(self, factory: RedoLogFactory, chain: str) -> bytes:
        raise NotImplementedError

    def put_raw(self, factory: RedoLogFactory, chain: str, data: bytes) -> None:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------------
    def build(self, factory: RedoLogFactory, chain: str = CHAIN) -> tuple[Layout, bytes]:
        log = factory.create(chain, HEADER)
        layout = write_txs(log, TXS)
        log.close()
        return layout, self.raw(factory, chain)

    def reopen_with(self, factory: RedoLogFactory, data: bytes, **kw: bool) -> RedoLog:
        self.put_raw(factory, CHAIN, data)
        return factory.open(CHAIN, **kw)

    # -- lifecycle -----------------------------------------------------------------------------
    def test_create_exists_open_read_header_remove(self, factory: RedoLogFactory) -> None:
        assert not factory.exists(CHAIN)
        log = factory.create(CHAIN, HEADER)
        assert factory.exists(CHAIN)
        assert log.header == HEADER
        assert list(log.scan()) == []
        assert log.size() == len(encode_header(HEADER)) == len(self.raw(factory, CHAIN))
        assert log.open_report == OpenReport(0, log.size())
        log.close()
        assert factory.read_header(CHAIN) == HEADER
        log = factory.open(CHAIN)
        assert log.header == HEADER
        assert log.open_report == OpenReport(0, log.size())
        assert list(log.scan()) == []
        log.close()
        factory.remove(CHAIN)
        assert not factory.exists(CHAIN)
        with pytest.raises(LogNotFound):
            factory.open(CHAIN)

    def test_logs_of_different_chains_are_separate(self, factory: RedoLogFactory) -> None:
        a = factory.create("a", b"A")
        b = factory.create("b", b"B")
        a.append(LogRecord(b"in-a", 0, None, True))
        assert list(b.scan()) == []
        a.close()
        b.close()
        assert factory.read_header("a") == b"A"
        assert factory.read_header("b") == b"B"

    def test_create_existing_raises_log_exists(self, factory: RedoLogFactory) -> None:
        factory.create(CHAIN, HEADER).close()
        before = self.raw(factory, CHAIN)
        with pytest.raises(LogExists):
            factory.create(CHAIN, b"other")
        assert self.raw(factory, CHAIN) == before

    def test_missing_log_raises_log_not_found(self, factory: RedoLogFactory) -> None:
        with pytest.raises(LogNotFound):
            factory.open(CHAIN)
        with pytest.raises(LogNotFound):
            factory.open(CHAIN, read_only=True)
        with pytest.raises(LogNotFound):
            factory.read_header(CHAIN)
        with pytest.raises(LogNotFound):
            factory.remove(CHAIN)

    @pytest.mark.parametrize(
        "name", ["", ".hidden", "..", "a/b", "a b", "x\x00", "ümlaut", "a\\b", "z" * 252]
    )
    def test_invalid_chain_name_is_refused(self, factory: RedoLogFactory, name: str) -> None:
        with pytest.raises(ValueError, match="chain name"):
            factory.create(name, HEADER)
        with pytest.raises(ValueError, match="chain name"):
            factory.open(name)
        with pytest.raises(ValueError, match="chain name"):
            factory.exists(name)

    @pytest.mark.parametrize("name", ["a", "A-z_0.9", "x..y", "z" * 251])
    def test_valid_chain_names(self, factory: RedoLogFactory, name: str) -> None:
        factory.create(name, HEADER).close()
        assert factory.exists(name)

    def test_close_is_idempotent_and_closed_log_refuses_use(self, factory: RedoLogFactory) -> None:
        log = factory.create(CHAIN, HEADER)
        _, ref = log.append(LogRecord(b"m", 0, b"d", True))
        assert ref is not None
        log.close()
        log.close()
        for call in (
            lambda: log.append(LogRecord(b"m", 0, None, True)),
            lambda: list(log.scan()),
            lambda: log.read_data(ref),
            log.sync,
            log.size,
        ):
            with pytest.raises(LogError):
                call()

    def test_second_writer_is_refused_readers_are_not(self, factory: RedoLogFactory) -> None:
        log = factory.create(CHAIN, HEADER)
        log.append(LogRecord(b"m", 0, None, True))
        with pytest.raises(LogError, match="already open"):
            factory.open(CHAIN)
        reader = factory.open(CHAIN, read_only=True)
        assert len(list(reader.scan())) == 1
        reader.close()
        log.close()
        factory.open(CHAIN).close()

    # -- round trip ----------------------------------------------------------------------------
    def test_round_trip_every_fmt_byte_with_and_without_data(self, factory: RedoLogFactory) -> None:
        records = []
        for fmt in range(256):
            data: bytes | None = [None, b"", bytes([fmt]) * (fmt % 37)][fmt % 3]
            meta = b"" if fmt % 5 == 0 else f"meta-{fmt}".encode()
            records.append(LogRecord(meta, fmt, data, fmt % 7 == 0 or fmt == 255))
        log = factory.create(CHAIN, HEADER)
        returned = [log.append(r) for r in records]
        scanned = list(log.scan())
        assert [s.position for s in scanned] == [p for p, _ in returned]
        assert [s.data for s in scanned] == [ref for _, ref in returned]
        assert replay(log) == expected(records)
        for rec, (pos, ref) in zip(records, returned, strict=True):
            if rec.data is None:
                assert ref is None
            else:
                offset = pos + FRAME_SIZE + len(rec.meta)
                assert ref == DataRef(offset, len(rec.data), sha256_of(rec.data))
        assert log.size() == len(self.raw(factory, CHAIN))
        log.close()
        log = factory.open(CHAIN)
        assert log.open_report == OpenReport(0, log.size())
        assert replay(log) == expected(records)
        assert [s.position for s in log.scan()] == [p for p, _ in returned]
        log.close()

    def test_empty_data_is_not_no_data(self, factory: RedoLogFactory) -> None:
        log = factory.create(CHAIN, HEADER)
        _, none_ref = log.append(LogRecord(b"a", 0, None, False))
        _, empty_ref = log.append(LogRecord(b"b", 0, b"", True))
        assert none_ref is None
        assert empty_ref is not None
        assert empty_ref.length == 0
        assert empty_ref.data_hash == EMPTY_HASH
        assert log.read_data(empty_ref) == b""
        assert [r.data for r in log.scan()] == [None, empty_ref]

    def test_uncommitted_records_are_invisible_until_commit(self, factory: RedoLogFactory) -> None:
        log = factory.create(CHAIN, HEADER)
        _, ref = log.append(LogRecord(b"pending", 9, b"payload", False))
        assert list(log.scan()) == []
        assert ref is not None
        assert log.read_data(ref) == b"payload"  # data of a pending record is readable
        log.append(LogRecord(b"commit", 9, None, True))
        assert replay(log) == [
            (b"pending", 9, b"payload", False),
            (b"commit", 9, None, True),
        ]

    def test_records_appended_after_open_appear_in_later_scan(
        self, factory: RedoLogFactory
    ) -> None:
        layout, _ = self.build(factory)
        log = factory.open(CHAIN)
        assert replay(log) == expected([r for tx in TXS for r in tx])
        extra = [LogRecord(b"more", 4, b"more-data", False), LogRecord(b"end", 4, None, True)]
        pos, _ = log.append(extra[0])
        assert pos == layout.tx_ends[-1]
        log.append(extra[1])
        all_records = expected([r for tx in TXS for r in tx] + extra)
        assert replay(log) == all_records
        log.close()
        log = factory.open(CHAIN)
        assert replay(log) == all_records
        log.close()

    def test_scan_is_restartable_and_lazy(self, factory: RedoLogFactory) -> None:
        self.build(factory)
        log = factory.open(CHAIN)
        it: Iterator[object] = log.scan()
        first = next(it)
        assert next(iter(log.scan())) == first
        assert len(list(it)) == sum(len(tx) for tx in TXS) - 1
        log.close()

    def test_read_data_outside_the_log_is_refused(self, factory: RedoLogFactory) -> None:
        log = factory.create(CHAIN, HEADER)
        _, ref = log.append(LogRecord(b"m", 0, b"abc", True))
        assert ref is not None
        with pytest.raises(LogCorrupt):
            log.read_data(DataRef(ref.offset, ref.length + 1, ref.data_hash))
        with pytest.raises(LogCorrupt):
            log.read_data(DataRef(log.size() + 10, 1, ref.data_hash))
        with pytest.raises(LogCorrupt):
            log.read_data(DataRef(0, 3, ref.data_hash))
        with pytest.raises(LogCorrupt, match=f"offset {ref.offset}"):
            log.read_data(DataRef(ref.offset, ref.length, sha256_of(b"xyz")))

    @pytest.mark.parametrize("fmt", [-1, 256])
    def test_invalid_fmt_is_refused_and_writes_nothing(
        self, factory: RedoLogFactory, fmt: int
    ) -> None:
        log = factory.create(CHAIN, HEADER)
        size = log.size()
        with pytest.raises(ValueError):
            log.append(LogRecord(b"m", fmt, None, True))
        assert log.size() == size == len(self.raw(factory, CHAIN))

    # -- torn tails ----------------------------------------------------------------------------
    def test_uncommitted_tail_is_cut_on_reopen(self, factory: RedoLogFactory) -> None:
        layout, _ = self.build(factory)
        log = factory.open(CHAIN)
        log.append(LogRecord(b"uncommitted-1", 1, b"lost", False))
        log.append(LogRecord(b"uncommitted-2", 1, None, False))
        log.sync()
        grown = log.size()
        log.close()
        committed = layout.tx_ends[-1]
        log = factory.open(CHAIN)
        assert log.open_report == OpenReport(grown - committed, committed)
        assert log.size() == committed
        assert len(self.raw(factory, CHAIN)) == committed
        assert replay(log) == expected([r for tx in TXS for r in tx])
        log.close()
        log = factory.open(CHAIN)
        assert log.open_report == OpenReport(0, committed)
        log.close()

    def test_truncation_inside_last_transaction_opens_to_previous_prefix(
        self, factory: RedoLogFactory
    ) -> None:
        layout, full = self.build(factory)
        start, end = layout.tx_ends[-2], layout.tx_ends[-1]
        prefix = expected([r for tx in TXS[:-1] for r in tx])
        for cut in range(start, end):
            log = self.reopen_with(factory, full[:cut])
            assert log.open_report == OpenReport(cut - start, start), cut
            assert replay(log) == prefix, cut
            assert log.size() == start
            log.close()
            assert self.raw(factory, CHAIN) == full[:start]
        log = self.reopen_with(factory, full)
        assert log.open_report == OpenReport(0, end)
        assert replay(log) == expected([r for tx in TXS for r in tx])
        log.close()

    def test_truncation_anywhere_opens_to_a_committed_prefix(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        bounds = [layout.header_end, *layout.tx_ends]
        for cut in range(layout.header_end, len(full) + 1):
            done = max(i for i, b in enumerate(bounds) if b <= cut)
            log = self.reopen_with(factory, full[:cut], read_only=True)
            assert replay(log) == expected([r for tx in TXS[:done] for r in tx]), cut
            assert log.open_report == OpenReport(cut - bounds[done], bounds[done])
            log.close()

    def test_log_usable_after_torn_tail_cut(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        log = self.reopen_with(factory, full[: layout.tx_ends[-1] - 3])
        log.append(LogRecord(b"after", 5, b"cut", True))
        log.close()
        log = factory.open(CHAIN)
        assert replay(log) == [
            *expected([r for tx in TXS[:-1] for r in tx]),
            (b"after", 5, b"cut", True),
        ]
        log.close()

    def test_garbage_tail_without_valid_frames_is_cut(self, factory: RedoLogFactory) -> None:
        _, full = self.build(factory)
        garbage = b"WR" + b"\x00" * 60 + b"WRWR" + bytes(range(256))
        log = self.reopen_with(factory, full + garbage)
        assert log.open_report == OpenReport(len(garbage), len(full))
        assert replay(log) == expected([r for tx in TXS for r in tx])
        log.close()
        assert self.raw(factory, CHAIN) == full

    def test_damaged_data_in_last_transaction_is_a_torn_tail(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        ref = layout.refs[-1][0]
        assert ref is not None
        zeroed = full[: ref.offset] + b"\x00" * ref.length + full[ref.offset + ref.length :]
        start = layout.tx_ends[-2]
        log = self.reopen_with(factory, zeroed)
        assert log.open_report == OpenReport(len(full) - start, start)
        assert replay(log) == expected([r for tx in TXS[:-1] for r in tx])
        log.close()

    def test_read_only_open_changes_no_bytes(self, factory: RedoLogFactory) -> None:
        layout, _ = self.build(factory)
        log = factory.open(CHAIN)
        log.append(LogRecord(b"torn", 1, b"tail", False))
        log.close()
        torn = self.raw(factory, CHAIN)[:-2]
        log = self.reopen_with(factory, torn, read_only=True)
        start = layout.tx_ends[-1]
        assert log.open_report == OpenReport(len(torn) - start, start)
        assert replay(log) == expected([r for tx in TXS for r in tx])
        with pytest.raises(LogError, match="read-only"):
            log.append(LogRecord(b"x", 0, None, True))
        log.sync()
        assert replay(log) == expected([r for tx in TXS for r in tx])
        log.close()
        assert factory.read_header(CHAIN) == HEADER
        assert self.raw(factory, CHAIN) == torn
        log = factory.open(CHAIN)  # a writable open does cut it
        assert log.open_report == OpenReport(len(torn) - start, start)
        log.close()
        assert len(self.raw(factory, CHAIN)) == start

    # -- damage --------------------------------------------------------------------------------
    def test_truncated_header_is_reported(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        for cut in range(layout.header_end):
            self.put_raw(factory, CHAIN, full[:cut])
            with pytest.raises(LogHeaderError, match="truncated"):
                factory.open(CHAIN)
            with pytest.raises(LogHeaderError, match="truncated"):
                factory.read_header(CHAIN)
            with pytest.raises(LogHeaderError, match="truncated"):
                factory.open(CHAIN, read_only=True)
            assert self.raw(factory, CHAIN) == full[:cut]

    def test_not_a_log(self, factory: RedoLogFactory) -> None:
        _, full = self.build(factory)
        for data in (b"hello world, this is not a log at all", b"SQLite format 3\x00" + full):
            self.put_raw(factory, CHAIN, data)
            with pytest.raises(LogHeaderError, match="not a wasmer-dfs redo log"):
                factory.open(CHAIN)
            with pytest.raises(LogHeaderError, match="not a wasmer-dfs redo log"):
                factory.read_header(CHAIN)
            assert self.raw(factory, CHAIN) == data

    def test_every_flipped_header_byte_is_reported(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        for i in range(layout.header_end):
            for mask in (0x01, 0x80):
                bad = flip(full, i, mask)
                self.put_raw(factory, CHAIN, bad)
                with pytest.raises(LogHeaderError) as info:
                    factory.open(CHAIN)
                if i >= len(redolog_format.LOG_MAGIC) + 6:  # body and CRC
                    assert "checksum mismatch" in str(info.value)
                with pytest.raises(LogHeaderError):
                    factory.read_header(CHAIN)
                assert self.raw(factory, CHAIN) == bad

    def test_newer_format_version_is_reported(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        head = struct.pack("<8sHI", redolog_format.LOG_MAGIC, 2, len(HEADER)) + HEADER
        newer = head + struct.pack("<I", zlib.crc32(head)) + full[layout.header_end :]
        self.put_raw(factory, CHAIN, newer)
        for call in (factory.open, factory.read_header):
            with pytest.raises(LogHeaderError, match="version 2 is newer than this program"):
                call(CHAIN)
        assert self.raw(factory, CHAIN) == newer

    def test_flipped_frame_or_meta_byte_in_the_middle_is_corruption(
        self, factory: RedoLogFactory
    ) -> None:
        layout, full = self.build(factory)
        for pos, ref, rec in zip(layout.positions[1], layout.refs[1], TXS[1], strict=True):
            frame_end = ref.offset if ref is not None else pos + FRAME_SIZE + len(rec.meta)
            for i in range(pos, frame_end):
                bad = flip(full, i)
                for read_only in (False, True):
                    self.put_raw(factory, CHAIN, bad)
                    with pytest.raises(LogCorrupt) as info:
                        factory.open(CHAIN, read_only=read_only)
                    msg = str(info.value)
                    assert f"damaged at offset {pos}" in msg, (i, msg)
                    assert "wasmer-dfs verify --repair" in msg
                    assert self.raw(factory, CHAIN) == bad

    @pytest.mark.parametrize("window", [2, 3, 4, 5, 7, 8, 64])
    def test_search_for_later_frames_does_not_depend_on_read_window(
        self, factory: RedoLogFactory, monkeypatch: pytest.MonkeyPatch, window: int
    ) -> None:
        layout, full = self.build(factory)
        monkeypatch.setattr(redolog_format, "_SEARCH_CHUNK", window)
        pos = layout.positions[2][0]  # exactly one valid frame follows: the magic may straddle
        self.put_raw(factory, CHAIN, flip(full, pos + 1))
        with pytest.raises(LogCorrupt, match=f"damaged at offset {pos}"):
            factory.open(CHAIN, read_only=True)
        self.put_raw(factory, CHAIN, full + b"W" * window + b"R" * window)
        log = factory.open(CHAIN, read_only=True)
        assert log.open_report == OpenReport(2 * window, len(full))
        log.close()

    def test_flipped_data_byte_is_caught_by_read_data(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        ref = layout.refs[1][0]
        assert ref is not None
        for i in (ref.offset, ref.offset + ref.length // 2, ref.offset + ref.length - 1):
            log = self.reopen_with(factory, flip(full, i, 0x10))
            assert log.open_report == OpenReport(0, len(full))
            records = list(log.scan())
            assert len(records) == sum(len(tx) for tx in TXS)
            for r in records:
                if r.data == ref:
                    with pytest.raises(LogCorrupt, match=f"offset {ref.offset}"):
                        log.read_data(r.data)
                elif r.data is not None:
                    log.read_data(r.data)
            log.close()

    def test_damage_after_open_is_caught_by_scan(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        log = factory.open(CHAIN, read_only=True)
        self.put_raw(factory, CHAIN, flip(full, layout.positions[1][1] + 5))
        with pytest.raises(LogCorrupt, match=f"offset {layout.positions[1][1]}"):
            list(log.scan())
        log.close()

    # -- ranges and single records (compaction, checkpoints) -----------------------------------
    def test_scan_a_range_and_read_one_record(self, factory: RedoLogFactory) -> None:
        layout, _ = self.build(factory)
        log = factory.open(CHAIN, read_only=True)
        assert log.committed_end == layout.tx_ends[-1]
        second = [r.position for r in log.scan(layout.tx_start(1), layout.tx_ends[1])]
        assert second == layout.positions[1]
        assert [r.position for r in log.scan(layout.tx_start(2))] == layout.positions[2]
        assert list(log.scan(log.committed_end)) == []
        rec = log.read_record(layout.positions[1][0])
        assert (rec.meta, rec.fmt, rec.commit) == (b"meta-2a", 2, False)
        assert rec.data is not None and log.read_data(rec.data) == b"x" * 100
        with pytest.raises(LogCorrupt):
            log.read_record(layout.positions[1][0] + 1)  # not where a record starts
        with pytest.raises(LogCorrupt):
            log.read_record(log.committed_end)
        log.close()

    def test_scan_outside_the_committed_records_is_refused(self, factory: RedoLogFactory) -> None:
        layout, _ = self.build(factory)
        log = factory.open(CHAIN)
        log.append(LogRecord(b"pending", 0, None, False))
        with pytest.raises(LogError):
            list(log.scan(None, log.size()))  # past the committed end
        with pytest.raises(LogError):
            list(log.scan(layout.header_end - 1))
        with pytest.raises(LogError):
            list(log.scan(layout.tx_start(2), layout.tx_start(1)))
        log.close()

    def test_resume_at_checks_only_what_follows(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        damaged = flip(full, layout.positions[0][0] + 5)  # damage before the resume point
        log = self.reopen_with(factory, damaged, resume_at=layout.tx_ends[0])
        assert log.committed_end == layout.tx_ends[-1]
        # the records after it are readable; the prefix was not checked, a scan finds it
        assert next(r.meta for r in log.scan(layout.tx_ends[0])) == b"meta-2a"
        with pytest.raises(LogCorrupt, match="--repair"):
            list(log.scan())
        log.close()
        with pytest.raises(LogCorrupt, match="--repair"):
            factory.open(CHAIN)  # without the hint, open finds it

    def test_resume_at_still_cuts_a_torn_tail_and_finds_damage_after_it(
        self, factory: RedoLogFactory
    ) -> None:
        layout, full = self.build(factory)
        torn = full[: layout.tx_ends[-1] - 3]
        log = self.reopen_with(factory, torn, resume_at=layout.tx_ends[0])
        assert log.open_report.cut_from == layout.tx_ends[1]
        log.close()
        damaged = flip(full, layout.positions[1][0] + 5)
        with pytest.raises(LogCorrupt):
            self.reopen_with(factory, damaged, resume_at=layout.tx_ends[0])

    @pytest.mark.parametrize("where", ["inside a record", "beyond the end", "in the header"])
    def test_a_wrong_resume_hint_is_ignored(self, factory: RedoLogFactory, where: str) -> None:
        layout, full = self.build(factory)
        hint = {
            "inside a record": layout.positions[1][0] + 7,
            "beyond the end": len(full) + 100,
            "in the header": 3,
        }[where]
        log = self.reopen_with(factory, full, resume_at=hint)
        assert replay(log) == expected([r for tx in TXS for r in tx])
        log.close()

    # -- rewriting: temporary logs, atomic replace ----------------------------------------------
    def test_a_temporary_log_replaces_the_chains_log_atomically(
        self, factory: RedoLogFactory
    ) -> None:
        self.build(factory)
        old = factory.open(CHAIN)  # the writer
        tmp = factory.create_temp(CHAIN, HEADER)
        tmp.append(LogRecord(b"new", 9, b"new data", True))
        # nothing refers to it yet
        reader = factory.open(CHAIN, read_only=True)
        assert len(replay(reader)) == 7
        reader.close()
        factory.replace(CHAIN, tmp)
        # the old handle still reads the old records; the chain's log is the new one
        assert len(replay(old)) == 7
        old.close()
        assert replay(tmp) == [(b"new", 9, b"new data", True)]
        tmp.append(LogRecord(b"more", 9, None, True))  # and it is the writer now
        with pytest.raises(LogError, match="already open for writing"):
            factory.open(CHAIN)
        reader = factory.open(CHAIN, read_only=True)
        assert replay(reader) == [(b"new", 9, b"new data", True), (b"more", 9, None, True)]
        reader.close()
        tmp.sync()
        tmp.close()
        log = factory.open(CHAIN)
        assert log.header == HEADER and log.open_report.cut_bytes == 0
        assert len(replay(log)) == 2
        log.close()

    def test_a_discarded_temporary_log_leaves_nothing(self, factory: RedoLogFactory) -> None:
        _, full = self.build(factory)
        tmp = factory.create_temp(CHAIN, HEADER)
        tmp.append(LogRecord(b"x", 0, b"x", True))
        factory.discard(tmp)
        with pytest.raises(LogError):
            tmp.append(LogRecord(b"y", 0, None, True))
        assert self.raw(factory, CHAIN) == full
        with pytest.raises(LogError):
            factory.replace(CHAIN, tmp)

    def test_replace_takes_only_a_temporary_log_of_that_chain(
        self, factory: RedoLogFactory
    ) -> None:
        self.build(factory)
        other = factory.create("other", HEADER)
        with pytest.raises(LogError):
            factory.replace(CHAIN, other)
        tmp = factory.create_temp("other", HEADER)
        with pytest.raises(LogError):
            factory.replace(CHAIN, tmp)
        factory.discard(tmp)
        other.close()

    def test_preserve_keeps_a_copy_under_a_second_name(self, factory: RedoLogFactory) -> None:
        _, full = self.build(factory)
        name = factory.preserve(CHAIN, "damaged-20240101T000000Z")
        assert name.endswith(f"{CHAIN}.log.damaged-20240101T000000Z")
        with pytest.raises(LogExists):
            factory.preserve(CHAIN, "damaged-20240101T000000Z")
        tmp = factory.create_temp(CHAIN, HEADER)
        factory.replace(CHAIN, tmp)
        tmp.close()
        assert self.raw(factory, CHAIN) != full
        assert self.preserved(factory, name) == full

    def preserved(self, factory: RedoLogFactory, name: str) -> bytes:
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------------------------
    def test_checkpoints_are_stored_replaced_and_removed(self, factory: RedoLogFactory) -> None:
        self.build(factory)
        assert factory.read_checkpoint(CHAIN) is None
        factory.write_checkpoint(CHAIN, b"one")
        factory.write_checkpoint(CHAIN, b"two" * 1000)
        assert factory.read_checkpoint(CHAIN) == b"two" * 1000
        factory.remove_checkpoint(CHAIN)
        factory.remove_checkpoint(CHAIN)
        assert factory.read_checkpoint(CHAIN) is None
        factory.write_checkpoint(CHAIN, b"three")
        factory.remove(CHAIN)  # removing the log removes its checkpoint
        assert factory.read_checkpoint(CHAIN) is None

    # -- damaged logs (repair) -------------------------------------------------------------------
    def test_a_damaged_log_is_read_past_its_damage(self, factory: RedoLogFactory) -> None:
        layout, full = self.build(factory)
        at = layout.positions[1][1]
        damaged = flip(full, at + 5)[: len(full) - 2]  # damage in the middle, a torn end
        self.put_raw(factory, CHAIN, damaged)
        dlog = factory.open_damaged(CHAIN)
        assert dlog.header == HEADER and dlog.size() == len(damaged)
        items = list(dlog.records())
        spans = [i for i in items if isinstance(i, DamagedSpan)]
        recs = [i for i in items if not isinstance(i, DamagedSpan)]
        assert spans[0] == DamagedSpan(at, layout.positions[1][2])
        assert spans[-1].end == len(damaged)  # the torn end
        positions = [r.position for r in recs]
        assert positions == [
            *layout.positions[0],
            layout.positions[1][0],
            layout.positions[1][2],
            layout.positions[2][0],
        ]
        rec = dlog.read_record(layout.positions[0][0])
        assert rec.data is not None and dlog.read_data(rec.data) == b"data-1"
        with pytest.raises(LogCorrupt):
            dlog.read_record(at)
        bad = DataRef(rec.data.offset, rec.data.length, sha256_of(b"something else"))
        with pytest.raises(LogCorrupt):
            dlog.read_data(bad)
        dlog.close()
        assert self.raw(factory, CHAIN) == damaged  # nothing changed

    def test_a_damaged_log_is_not_read_for_repair_while_mounted(
        self, factory: RedoLogFactory
    ) -> None:
        self.build(factory)
        log = factory.open(CHAIN)
        with pytest.raises(LogError, match="already open for writing"):
            factory.open_damaged(CHAIN)
        log.close()
        factory.open_damaged(CHAIN).close()

    def test_abandon_cuts_an_unfinished_transaction_and_appends_go_on(
        self, factory: RedoLogFactory
    ) -> None:
        log = factory.create(CHAIN, HEADER)
        log.append(LogRecord(b"ok", 0, b"ok", True))
        size = log.size()
        log.append(LogRecord(b"half", 0, b"x" * 500, False))
        log.append(LogRecord(b"half-2", 0, b"y" * 500, False))
        log.abandon()
        assert log.size() == size == log.committed_end
        assert len(self.raw(factory, CHAIN)) == size  # cut on disk too, not just forgotten
        log.abandon()  # nothing unfinished: nothing happens
        log.append(LogRecord(b"next", 0, b"next", True))
        log.close()
        log = factory.open(CHAIN)
        assert log.open_report.cut_bytes == 0
        assert replay(log) == [(b"ok", 0, b"ok", True), (b"next", 0, b"next", True)]
        log.close()
        log = factory.open(CHAIN, read_only=True)
        with pytest.raises(LogError, match="read-only"):
            log.abandon()
        log.close()


class TestFileRedoLog(RedoLogContract):
    @pytest.fixture
    def factory(self, tmp_path: pathlib.Path) -> Iterator[FileRedoLogFactory]:
        yield FileRedoLogFactory(tmp_path / "logs")

    def raw(self, factory: RedoLogFactory, chain: str) -> bytes:
        assert isinstance(factory, FileRedoLogFactory)
        return factory.path(chain).read_bytes()

    def put_raw(self, factory: RedoLogFactory, chain: str, data: bytes) -> None:
        assert isinstance(factory, FileRedoLogFactory)
        # in place, like damage on the disk (not a new inode)
        with open(factory.path(chain), "r+b") as f:
            f.write(data)
            f.truncate(len(data))

    def preserved(self, factory: RedoLogFactory, name: str) -> bytes:
        return pathlib.Path(name).read_bytes()

    def test_strays_of_an_interrupted_rewrite_are_removed_by_the_next_writer(
        self, factory: FileRedoLogFactory
    ) -> None:
        self.build(factory)
        tmp = factory.create_temp(CHAIN, HEADER)
        tmp.append(LogRecord(b"x", 0, b"x", True))
        stray = factory.directory / f".{CHAIN}.ckpt-abc.tmp"
        stray.write_bytes(b"half a checkpoint")
        tmp.close()  # the process died here: its files stay behind
        names = {p.name for p in factory.directory.iterdir()}
        assert len(names) == 3
        factory.open(CHAIN, read_only=True).close()
        assert {p.name for p in factory.directory.iterdir()} == names  # readers touch nothing
        factory.open(CHAIN).close()
        assert {p.name for p in factory.directory.iterdir()} == {f"{CHAIN}.log"}

    def test_checkpoint_file_is_private(self, factory: FileRedoLogFactory) -> None:
        self.build(factory)
        factory.write_checkpoint(CHAIN, b"state")
        path = factory.directory / f"{CHAIN}.ckpt"
        assert path.read_bytes() == b"state"
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0

    def test_a_replaced_log_is_locked_by_its_writer(self, factory: FileRedoLogFactory) -> None:
        self.build(factory)
        old = factory.open(CHAIN)
        tmp = factory.create_temp(CHAIN, HEADER)
        factory.replace(CHAIN, tmp)
        old.close()  # the old inode's lock goes; the name's new inode stays locked
        other = FileRedoLogFactory(factory.directory)
        with pytest.raises(LogError, match="already open for writing"):
            other.open(CHAIN)
        tmp.close()
        other.open(CHAIN).close()

    def test_free_space_is_what_the_disk_under_the_log_has(
        self, factory: FileRedoLogFactory
    ) -> None:
        log = factory.create(CHAIN, HEADER)
        st = os.statvfs(factory.directory)
        free = log.free_space()
        assert free is not None
        assert abs(free - st.f_bavail * st.f_frsize) < 64 << 20  # others write to this disk too
        log.close()
        log = factory.open(CHAIN, read_only=True)
        assert log.free_space() is None  # nothing will be written through it
        log.close()

    def test_layout_on_disk(self, factory: FileRedoLogFactory) -> None:
        factory.create(CHAIN, HEADER).close()
        assert stat.S_IMODE(factory.directory.stat().st_mode) & 0o077 == 0
        assert sorted(p.name for p in factory.directory.iterdir()) == [f"{CHAIN}.log"]
        assert factory.path(CHAIN) == factory.directory / f"{CHAIN}.log"
        assert stat.S_IMODE(factory.path(CHAIN).stat().st_mode) & 0o077 == 0

    def test_failed_append_is_rolled_back(
        self, factory: FileRedoLogFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        log = factory.create(CHAIN, HEADER)
        log.append(LogRecord(b"ok", 0, b"ok", True))
        size = log.size()
        real_writev = os.writev

        def half_then_fail(fd: int, parts: Sequence[bytes]) -> int:
            blob = b"".join(parts)
            os.write(fd, blob[: len(blob) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "writev", half_then_fail)
        with pytest.raises(OSError, match="No space"):
            log.append(LogRecord(b"fails", 0, b"x" * 1000, False))
        monkeypatch.setattr(os, "writev", real_writev)
        assert log.size() == size == factory.path(CHAIN).stat().st_size
        log.append(LogRecord(b"next", 0, b"next", True))
        log.close()
        log = factory.open(CHAIN)
        assert log.open_report.cut_bytes == 0
        assert replay(log) == [(b"ok", 0, b"ok", True), (b"next", 0, b"next", True)]
        log.close()

    def test_create_does_not_clobber_a_foreign_file(self, factory: FileRedoLogFactory) -> None:
        factory.directory.mkdir(parents=True)
        factory.path(CHAIN).write_bytes(b"someone else's file")
        with pytest.raises(LogExists):
            factory.create(CHAIN, HEADER)
        assert factory.path(CHAIN).read_bytes() == b"someone else's file"
        assert sorted(p.name for p in factory.directory.iterdir()) == [f"{CHAIN}.log"]


class TestMemoryRedoLog(RedoLogContract):
    @pytest.fixture
    def factory(self) -> Iterator[MemoryRedoLogFactory]:
        yield MemoryRedoLogFactory()

    def raw(self, factory: RedoLogFactory, chain: str) -> bytes:
        assert isinstance(factory, MemoryRedoLogFactory)
        return bytes(factory.disk(chain))

    def put_raw(self, factory: RedoLogFactory, chain: str, data: bytes) -> None:
        assert isinstance(factory, MemoryRedoLogFactory)
        factory.disk(chain)[:] = data

    def preserved(self, factory: RedoLogFactory, name: str) -> bytes:
        assert isinstance(factory, MemoryRedoLogFactory)
        return factory.preserved[name]

    def test_a_full_disk_fails_the_append_and_leaves_no_partial_frame(
        self, factory: MemoryRedoLogFactory
    ) -> None:
        log = factory.create(CHAIN, HEADER)
        log.append(LogRecord(b"ok", 0, b"ok", True))
        size = log.size()
        factory.space.free = 300
        assert log.free_space() == 300
        with pytest.raises(OSError) as full:
            log.append(LogRecord(b"too-big", 0, b"z" * 1000, True))
        assert full.value.errno == errno.ENOSPC
        assert log.size() == size == len(factory.disk(CHAIN))  # the part written was cut
        assert factory.space.free == 300  # and its room given back
        log.append(LogRecord(b"fits", 0, b"f" * 10, True))
        factory.space.free = None
        log.close()
        log = factory.open(CHAIN)
        assert replay(log) == [(b"ok", 0, b"ok", True), (b"fits", 0, b"f" * 10, True)]
        log.close()

    def test_a_crash_before_replace_loses_the_temporary_log(
        self, factory: MemoryRedoLogFactory
    ) -> None:
        _, full = self.build(factory)
        tmp = factory.create_temp(CHAIN, HEADER)
        tmp.append(LogRecord(b"x", 0, b"x", True))
        tmp.sync()
        factory.crash()
        assert self.raw(factory, CHAIN) == full
        with pytest.raises(LogError):
            factory.replace(CHAIN, tmp)

    def test_crash_loses_what_was_not_synced(self, factory: MemoryRedoLogFactory) -> None:
        log = factory.create(CHAIN, HEADER)
        log.append(LogRecord(b"durable", 0, b"d", True))
        log.sync()
        durable = log.size()
        log.append(LogRecord(b"committed-not-synced", 0, b"lost", True))
        log.append(LogRecord(b"pending", 0, None, False))
        factory.crash()
        with pytest.raises(LogError, match="closed"):
            log.size()
        assert len(factory.disk(CHAIN)) == durable
        log = factory.open(CHAIN)
        assert log.open_report == OpenReport(0, durable)
        assert replay(log) == [(b"durable", 0, b"d", True)]
        log.close()

    def test_crash_keeps_a_synced_uncommitted_tail_for_open_to_cut(
        self, factory: MemoryRedoLogFactory
    ) -> None:
        log = factory.create(CHAIN, HEADER)
        log.append(LogRecord(b"a", 0, None, True))
        committed = log.size()
        log.append(LogRecord(b"half", 0, b"tx", False))
        log.sync()
        synced = log.size()
        factory.crash()
        log = factory.open(CHAIN)
        assert log.open_report == OpenReport(synced - committed, committed)
        assert replay(log) == [(b"a", 0, None, True)]
