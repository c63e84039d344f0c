"""The redo log's logic over a storage of bytes, shared by the file log (adapters/redolog.py) and
its in-memory twin (adapters/memory/log.py), so that both keep the same torn-tail and damage
rules: ``LogStorage`` (the bytes), ``WindowReader`` (buffered scanning), ``LogBase`` (the
``RedoLog`` port: open and recovery, scan, read, append, rollback, abandon) and
``DamagedReader`` (the ``DamagedLog`` port, for repair).

The byte layout is in adapters/redolog_format.py and ``docs/adr/0003-redo-log-format.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from adapters.redolog_format import (
    FLAG_COMMIT,
    FRAME_SIZE,
    REPAIR_HINT,
    ReadFn,
    encode_frame,
    find_frame_after,
    parse_frame,
    parse_header,
    recover,
)
from application.ports import (
    DamagedLog,
    DamagedSpan,
    DataRef,
    LogCorrupt,
    LogError,
    LogRecord,
    OpenReport,
    RedoLog,
    ScannedRecord,
)
from domain.hashing import sha256_of

_READ_CHUNK = 1 << 16


class LogStorage:
    """Bytes of one log: positional reads, appends, truncation, durability."""

    where: str
    closed: bool
    hint: str = REPAIR_HINT

    def pread(self, offset: int, n: int) -> bytes:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def append(self, parts: Sequence[bytes]) -> None:
        raise NotImplementedError

    def truncate(self, length: int) -> None:
        """Cut the log to ``length`` bytes, durably."""
        raise NotImplementedError

    def sync(self) -> None:
        raise NotImplementedError

    def free_space(self, end: int) -> int | None:
        """Bytes left for the log on its disk (``end``: the log's size now), None: no limit."""
        return None

    def close(self) -> None:
        raise NotImplementedError


class WindowReader:
    """Reads through a small window so that scanning small records costs one pread per 64 KiB."""

    __slots__ = ("_pread", "_win", "_win_at")

    def __init__(self, pread: ReadFn) -> None:
        self._pread = pread
        self._win = b""
        self._win_at = 0

    def read(self, offset: int, n: int) -> bytes:
        rel = offset - self._win_at
        if rel >= 0 and rel + n <= len(self._win):
            return self._win[rel : rel + n]
        if n >= _READ_CHUNK:
            return self._pread(offset, n)
        self._win = self._pread(offset, _READ_CHUNK)
        self._win_at = offset
        return self._win[:n]


class LogBase(RedoLog):
    """The log logic on top of a storage: shared by the file and the in-memory logs."""

    def __init__(
        self,
        storage: LogStorage,
        *,
        read_only: bool,
        create_body: bytes | None,
        resume_at: int | None = None,
    ) -> None:
        self._storage = storage
        self._read_only = read_only
        self._lock = threading.Lock()
        self._broken: str | None = None
        size = storage.size()
        if create_body is not None:
            self._header = create_body
            self._header_end = size
            self._committed_end = size
            self._report = OpenReport(0, size)
        else:
            self._header, self._header_end = parse_header(storage.pread, size, storage.where)
            start = self._header_end
            if resume_at is not None and self._header_end < resume_at <= size:
                at_end = resume_at == size
                if at_end or parse_frame(storage.pread, resume_at, size, need_data=False):
                    start = resume_at  # a valid record (or the end) lies there: check after it
            committed_end = recover(
                WindowReader(storage.pread).read, start, size, storage.where, storage.hint
            )
            self._report = OpenReport(size - committed_end, committed_end)
            if committed_end < size and not read_only:
                storage.truncate(committed_end)
                size = committed_end
            self._committed_end = committed_end
        self._end = size

    # -- properties ----------------------------------------------------------------------------
    @property
    def header(self) -> bytes:
        return self._header

    @property
    def open_report(self) -> OpenReport:
        """What open found: in a read-only log, the torn tail that was ignored (left on disk)."""
        return self._report

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _check_open(self) -> None:
        if self._storage.closed:
            raise LogError(f"{self._storage.where}: the log is closed")

    # -- reading -------------------------------------------------------------------------------
    @property
    def committed_end(self) -> int:
        return self._committed_end

    @property
    def header_end(self) -> int:
        return self._header_end

    def scan(self, start: int | None = None, end: int | None = None) -> Iterator[ScannedRecord]:
        self._check_open()
        committed = self._committed_end
        start = self._header_end if start is None else start
        end = committed if end is None else end
        if not self._header_end <= start <= end <= committed:
            raise LogError(
                f"{self._storage.where}: cannot scan [{start}, {end}): the committed records lie"
                f" in [{self._header_end}, {committed})"
            )
        return self._scan(start, end)

    def read_record(self, position: int) -> ScannedRecord:
        self._check_open()
        parsed = None
        if self._header_end <= position < self._committed_end:
            parsed = parse_frame(self._storage.pread, position, self._committed_end, need_data=True)
        if parsed is None:
            raise LogCorrupt(
                f"{self._storage.where}: no valid record at offset {position}; {self._storage.hint}"
            )
        frame, meta = parsed
        return ScannedRecord(
            position, meta, frame.fmt, frame.data_ref(), bool(frame.flags & FLAG_COMMIT)
        )

    def _scan(self, start: int, limit: int) -> Iterator[ScannedRecord]:
        reader = WindowReader(self._storage.pread)
        pos = start
        where = self._storage.where
        while pos < limit:
            self._check_open()
            parsed = parse_frame(reader.read, pos, limit, need_data=True)
            if parsed is None:
                raise LogCorrupt(
                    f"{where}: the record at offset {pos} is damaged (it was not checked when"
                    f" the log was opened, or was damaged since); {self._storage.hint}"
                )
            frame, meta = parsed
            yield ScannedRecord(
                pos, meta, frame.fmt, frame.data_ref(), bool(frame.flags & FLAG_COMMIT)
            )
            pos = frame.end

    def read_data(self, ref: DataRef) -> bytes:
        self._check_open()
        where = self._storage.where
        if ref.offset < self._header_end or ref.length < 0 or ref.offset + ref.length > self._end:
            raise LogCorrupt(
                f"{where}: data at offset {ref.offset} ({ref.length} bytes) lies outside the log"
            )
        data = self._storage.pread(ref.offset, ref.length) if ref.length else b""
        if len(data) != ref.length:
            raise LogCorrupt(f"{where}: data at offset {ref.offset} is truncated")
        if sha256_of(data) != ref.data_hash:
            raise LogCorrupt(
                f"{where}: data at offset {ref.offset} is damaged (hash mismatch);"
                f" {self._storage.hint}"
            )
        return data

    def size(self) -> int:
        self._check_open()
        return self._end

    # -- writing -------------------------------------------------------------------------------
    def append(self, record: LogRecord) -> tuple[int, DataRef | None]:
        head, data_hash = encode_frame(record)
        data = record.data
        with self._lock:
            self._check_open()
            if self._read_only:
                raise LogError(f"{self._storage.where}: the log was opened read-only")
            if self._broken is not None:
                raise LogError(self._broken)
            pos = self._end
            parts = (head, record.meta) if data is None else (head, record.meta, data)
            try:
                self._storage.append(parts)
            except BaseException:
                self._rollback(pos)
                raise
            data_offset = pos + FRAME_SIZE + len(record.meta)
            end = data_offset + (0 if data is None else len(data))
            self._end = end
            if record.commit:
                self._committed_end = end
        if data is None:
            return pos, None
        return pos, DataRef(data_offset, len(data), data_hash)

    def _rollback(self, pos: int) -> None:
        """Remove a partly written frame so that the log never has damage before later frames."""
        try:
            self._storage.truncate(pos)
        except Exception as exc:
            self._broken = (
                f"{self._storage.where}: a failed write could not be undone ({exc});"
                " close and reopen the log"
            )

    def sync(self) -> None:
        self._check_open()
        if not self._read_only:
            self._storage.sync()

    def free_space(self) -> int | None:
        if self._read_only or self._storage.closed:
            return None
        return self._storage.free_space(self._end)

    def abandon(self) -> None:
        with self._lock:
            self._check_open()
            if self._read_only:
                raise LogError(f"{self._storage.where}: the log was opened read-only")
            if self._broken is not None:
                raise LogError(self._broken)
            if self._end == self._committed_end:
                return
            try:
                self._storage.truncate(self._committed_end)
            except Exception as exc:
                self._broken = (
                    f"{self._storage.where}: an unfinished transaction could not be cut ({exc});"
                    " close and reopen the log"
                )
                raise LogError(self._broken) from None
            self._end = self._committed_end

    def close(self) -> None:
        if not self._storage.closed:
            self._storage.close()


class DamagedReader(DamagedLog):
    """Reads a possibly damaged log frame by frame, reporting what lies between valid frames."""

    def __init__(self, storage: LogStorage) -> None:
        self._storage = storage
        try:
            self._size = storage.size()
            self._header, self._header_end = parse_header(storage.pread, self._size, storage.where)
        except BaseException:
            storage.close()
            raise

    @property
    def header(self) -> bytes:
        return self._header

    def size(self) -> int:
        return self._size

    def records(self) -> Iterator[ScannedRecord | DamagedSpan]:
        reader = WindowReader(self._storage.pread)
        pos, size = self._header_end, self._size
        while pos < size:
            parsed = parse_frame(reader.read, pos, size, need_data=True)
            if parsed is not None:
                frame, meta = parsed
                commit = bool(frame.flags & FLAG_COMMIT)
                yield ScannedRecord(pos, meta, frame.fmt, frame.data_ref(), commit)
                pos = frame.end
                continue
            later = find_frame_after(reader.read, pos + 1, size)
            end = size if later is None else later
            yield DamagedSpan(pos, end)
            pos = end

    def read_record(self, position: int) -> ScannedRecord:
        parsed = None
        if self._header_end <= position < self._size:
            parsed = parse_frame(self._storage.pread, position, self._size, need_data=True)
        if parsed is None:
            raise LogCorrupt(f"{self._storage.where}: no intact record at offset {position}")
        frame, meta = parsed
        return ScannedRecord(
            position, meta, frame.fmt, frame.data_ref(), bool(frame.flags & FLAG_COMMIT)
        )

    def read_data(self, ref: DataRef) -> bytes:
        where = self._storage.where
        if ref.offset < self._header_end or ref.offset + ref.length > self._size:
            raise LogCorrupt(f"{where}: data at offset {ref.offset} lies outside the log")
        data = self._storage.pread(ref.offset, ref.length) if ref.length else b""
        if len(data) != ref.length or sha256_of(data) != ref.data_hash:
            raise LogCorrupt(f"{where}: data at offset {ref.offset} is damaged (hash mismatch)")
        return data

    def close(self) -> None:
        if not self._storage.closed:
            self._storage.close()
