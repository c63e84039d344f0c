"""Redo logs: one append-only, checksummed file per chain (and an in-memory twin for tests).

The byte layout, the torn-tail rule and the durability contract are described in
``docs/adr/0003-redo-log-format.md``; keep the two in step.

File header (little-endian)::

    magic b"WDFSLOG\\0" (8) | version u16 | body length u32 | body | CRC32 u32 of all before it

Record frame (52-byte head, then meta, then data)::

    magic b"WR" (2) | flags u8 | fmt u8 | meta length u32 | data length u64 | data hash (32)
    | CRC32 u32 of the 48 bytes before it and of the meta | meta | data

The frame CRC does not cover the data: the data is checked against its SHA-256 hash when it is
read back (``read_data``), and at open for the last committed transaction.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import re
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from application.ports import (
    DamagedLog,
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
    ScannedRecord,
)
from domain.hashing import DIGEST_SIZE, EMPTY_HASH, hasher, sha256_of

# --- format ------------------------------------------------------------------------------------
LOG_MAGIC = b"WDFSLOG\x00"
FORMAT_VERSION = 1
HEADER_FIXED = struct.Struct("<8sHI")  # magic, version, body length
U32 = struct.Struct("<I")
MAX_HEADER_BODY = 16 << 20

FRAME_MAGIC = b"WR"
FLAG_COMMIT = 0x01
FLAG_DATA = 0x02
KNOWN_FLAGS = FLAG_COMMIT | FLAG_DATA
FRAME_PREFIX = struct.Struct(f"<2sBBIQ{DIGEST_SIZE}s")  # everything the CRC starts with
FRAME_HEAD = struct.Struct(f"<2sBBIQ{DIGEST_SIZE}sI")
FRAME_SIZE = FRAME_HEAD.size  # 52
MAX_META = 16 << 20
MAX_DATA = 1 << 30

_CHAIN_RE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_CHAIN_LEN = 251  # + ".log" = 255, the usual file-name limit
_READ_CHUNK = 1 << 16
_HASH_CHUNK = 1 << 20
_SEARCH_CHUNK = 1 << 20

REPAIR_HINT = "run `wasmer-dfs verify --repair` to salvage the records around the damage"
TEMP_INFIX = ".rewrite-"  # temporary logs of compaction and repair: .<chain>.rewrite-*.tmp
CKPT_INFIX = ".ckpt-"  # checkpoints being written: .<chain>.ckpt-*.tmp


def repair_hint(directory: str | None) -> str:
    if directory is None:
        return REPAIR_HINT
    return f"run `wasmer-dfs verify --repair {directory}` to salvage the records around the damage"


def validate_chain_name(chain: str) -> str:
    """The chain name if it is usable as a file name; ``ValueError`` otherwise."""
    if not isinstance(chain, str) or not _CHAIN_RE.fullmatch(chain):
        raise ValueError(
            f"invalid chain name {chain!r}: use only letters, digits, '.', '_' and '-'"
        )
    if chain.startswith("."):
        raise ValueError(f"invalid chain name {chain!r}: it must not start with '.'")
    if len(chain) > _MAX_CHAIN_LEN:
        raise ValueError(f"invalid chain name: longer than {_MAX_CHAIN_LEN} characters")
    return chain


def encode_header(body: bytes) -> bytes:
    """The complete file header around ``body``."""
    if len(body) > MAX_HEADER_BODY:
        raise ValueError(f"log header body too large ({len(body)} > {MAX_HEADER_BODY} bytes)")
    head = HEADER_FIXED.pack(LOG_MAGIC, FORMAT_VERSION, len(body)) + body
    return head + U32.pack(zlib.crc32(head))


def encode_frame(record: LogRecord) -> tuple[bytes, bytes]:
    """(52-byte frame head, data hash) of ``record``; the frame is head + meta + data."""
    data = record.data
    fmt = record.fmt
    if not 0 <= fmt <= 0xFF:
        raise ValueError(f"record format byte out of range: {fmt}")
    meta_len = len(record.meta)
    if meta_len > MAX_META:
        raise ValueError(f"record meta too large ({meta_len} > {MAX_META} bytes)")
    if data is None:
        flags = FLAG_COMMIT if record.commit else 0
        data_len = 0
        data_hash = EMPTY_HASH
    else:
        flags = (FLAG_COMMIT | FLAG_DATA) if record.commit else FLAG_DATA
        data_len = len(data)
        if data_len > MAX_DATA:
            raise ValueError(f"record data too large ({data_len} > {MAX_DATA} bytes)")
        data_hash = record.data_hash if record.data_hash is not None else sha256_of(data)
    prefix = FRAME_PREFIX.pack(FRAME_MAGIC, flags, fmt, meta_len, data_len, data_hash)
    crc = zlib.crc32(record.meta, zlib.crc32(prefix))
    return prefix + U32.pack(crc), data_hash


ReadFn = Callable[[int, int], bytes]


class _Frame(NamedTuple):
    position: int
    flags: int
    fmt: int
    meta_len: int
    data_len: int
    data_hash: bytes

    @property
    def data_offset(self) -> int:
        return self.position + FRAME_SIZE + self.meta_len

    @property
    def end(self) -> int:
        return self.position + FRAME_SIZE + self.meta_len + self.data_len

    def data_ref(self) -> DataRef | None:
        if not self.flags & FLAG_DATA:
            return None
        return DataRef(self.data_offset, self.data_len, self.data_hash)


def _parse_frame(
    read: ReadFn, pos: int, end: int, *, need_data: bool
) -> tuple[_Frame, bytes] | None:
    """The frame at ``pos`` and its meta if it is valid and lies before ``end``, else None.

    With ``need_data`` False the data may extend past ``end`` (used when searching for frames
    behind a damaged one).
    """
    if end - pos < FRAME_SIZE:
        return None
    head = read(pos, FRAME_SIZE)
    if len(head) < FRAME_SIZE:
        return None
    magic, flags, fmt, meta_len, data_len, data_hash, crc = FRAME_HEAD.unpack(head)
    if magic != FRAME_MAGIC or flags & ~KNOWN_FLAGS or meta_len > MAX_META or data_len > MAX_DATA:
        return None
    if not flags & FLAG_DATA and (data_len or data_hash != EMPTY_HASH):
        return None
    meta_end = pos + FRAME_SIZE + meta_len
    if meta_end > end or (need_data and meta_end + data_len > end):
        return None
    meta = read(pos + FRAME_SIZE, meta_len) if meta_len else b""
    if len(meta) < meta_len:
        return None
    if zlib.crc32(meta, zlib.crc32(head[: FRAME_PREFIX.size])) != crc:
        return None
    return _Frame(pos, flags, fmt, meta_len, data_len, data_hash), meta


def _parse_header(read: ReadFn, size: int, where: str) -> tuple[bytes, int]:
    """(header body, header length); ``LogHeaderError`` when the header is not right.

    The header's layout (magic, version, body length, body, CRC) is the same in every format
    version, so the checksum is checked before the version.
    """
    fixed = read(0, HEADER_FIXED.size)
    if len(fixed) < len(LOG_MAGIC):
        if not fixed:
            raise LogHeaderError(f"{where}: header is truncated (the file is empty)")
        if LOG_MAGIC.startswith(fixed):
            raise LogHeaderError(f"{where}: header is truncated ({len(fixed)} bytes)")
        raise LogHeaderError(f"{where}: not a wasmer-dfs redo log (no log magic)")
    if fixed[: len(LOG_MAGIC)] != LOG_MAGIC:
        raise LogHeaderError(f"{where}: not a wasmer-dfs redo log (no log magic)")
    if len(fixed) < HEADER_FIXED.size:
        raise LogHeaderError(f"{where}: header is truncated ({len(fixed)} bytes)")
    _, version, body_len = HEADER_FIXED.unpack(fixed)
    if body_len > MAX_HEADER_BODY:
        raise LogHeaderError(
            f"{where}: header is damaged (body length {body_len} exceeds {MAX_HEADER_BODY})"
        )
    header_end = HEADER_FIXED.size + body_len + U32.size
    if size < header_end:
        raise LogHeaderError(f"{where}: header is truncated ({size} of {header_end} bytes present)")
    rest = read(HEADER_FIXED.size, body_len + U32.size)
    if len(rest) < body_len + U32.size:
        raise LogHeaderError(f"{where}: header is truncated")
    body = rest[:body_len]
    (crc,) = U32.unpack_from(rest, body_len)
    if zlib.crc32(body, zlib.crc32(fixed)) != crc:
        raise LogHeaderError(f"{where}: header checksum mismatch (the header is damaged)")
    if version > FORMAT_VERSION:
        raise LogHeaderError(
            f"{where}: log format version {version} is newer than this program"
            f" (it reads version {FORMAT_VERSION}); upgrade wasmer-dfs"
        )
    if version < 1:
        raise LogHeaderError(f"{where}: unknown log format version {version}")
    return body, header_end


def _hash_range(read: ReadFn, offset: int, length: int) -> bytes | None:
    """The data hash of ``length`` bytes at ``offset``, read in chunks; None when they are short."""
    state = hasher()
    done = 0
    while done < length:
        chunk = read(offset + done, min(_HASH_CHUNK, length - done))
        if not chunk:
            return None
        state.update(chunk)
        done += len(chunk)
    return bytes(state.digest())


def _find_frame_after(read: ReadFn, start: int, end: int) -> int | None:
    """Offset of the first valid frame head (CRC checked) in [start, end), else None."""
    pos = start
    while pos < end:
        chunk = read(pos, min(_SEARCH_CHUNK, end - pos))
        if not chunk:
            return None
        i = chunk.find(FRAME_MAGIC)
        while i != -1:
            if _parse_frame(read, pos + i, end, need_data=False) is not None:
                return pos + i
            i = chunk.find(FRAME_MAGIC, i + 1)
        if pos + len(chunk) >= end:
            return None
        pos += len(chunk) - 1  # a magic may straddle two chunks
    return None


def _recover(read: ReadFn, header_end: int, size: int, where: str, hint: str = REPAIR_HINT) -> int:
    """End of the committed, intact prefix of the log; ``LogCorrupt`` on mid-log damage.

    ``header_end`` may also be a committed end known from before (a checkpoint's): then only the
    records after it are checked."""
    pos = header_end
    committed_end = prev_committed_end = header_end
    tx: list[_Frame] = []
    last_tx: list[_Frame] = []
    damaged_at: int | None = None
    while pos < size:
        parsed = _parse_frame(read, pos, size, need_data=True)
        if parsed is None:
            damaged_at = pos
            break
        frame = parsed[0]
        if frame.flags & FLAG_DATA:
            tx.append(frame)
        pos = frame.end
        if frame.flags & FLAG_COMMIT:
            prev_committed_end, committed_end = committed_end, pos
            last_tx, tx = tx, []
    if damaged_at is not None:
        later = _find_frame_after(read, damaged_at + 1, size)
        if later is not None:
            raise LogCorrupt(
                f"{where}: the log is damaged at offset {damaged_at} (the record there is"
                f" invalid, but a valid record follows at offset {later}, so this is not a"
                f" torn tail); {hint}"
            )
    # A torn write may leave the frames of the last transaction intact but its data unwritten.
    for frame in last_tx:
        if _hash_range(read, frame.data_offset, frame.data_len) != frame.data_hash:
            return prev_committed_end
    return committed_end


# --- storage -----------------------------------------------------------------------------------
class _Storage:
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


class _Reader:
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


class _LogBase(RedoLog):
    """The log logic on top of a storage: shared by the file and the in-memory logs."""

    def __init__(
        self,
        storage: _Storage,
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
            self._header, self._header_end = _parse_header(storage.pread, size, storage.where)
            start = self._header_end
            if resume_at is not None and self._header_end < resume_at <= size:
                at_end = resume_at == size
                if at_end or _parse_frame(storage.pread, resume_at, size, need_data=False):
                    start = resume_at  # a valid record (or the end) lies there: check after it
            committed_end = _recover(
                _Reader(storage.pread).read, start, size, storage.where, storage.hint
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
            parsed = _parse_frame(
                self._storage.pread, position, self._committed_end, need_data=True
            )
        if parsed is None:
            raise LogCorrupt(
                f"{self._storage.where}: no valid record at offset {position}; {self._storage.hint}"
            )
        frame, meta = parsed
        return ScannedRecord(
            position, meta, frame.fmt, frame.data_ref(), bool(frame.flags & FLAG_COMMIT)
        )

    def _scan(self, start: int, limit: int) -> Iterator[ScannedRecord]:
        reader = _Reader(self._storage.pread)
        pos = start
        where = self._storage.where
        while pos < limit:
            self._check_open()
            parsed = _parse_frame(reader.read, pos, limit, need_data=True)
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


# --- file adapter ------------------------------------------------------------------------------
def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_fd(fd: int, offset: int, n: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _FileStorage(_Storage):
    #: ``free_space`` asks the file system again after the log grew this much, after this many
    #: seconds, and always while less than ``FREE_LOW`` is left (so freed space is seen at once)
    FREE_RECHECK_BYTES = 1 << 20
    FREE_RECHECK_SECONDS = 1.0
    FREE_LOW = 64 << 20

    def __init__(self, fd: int, path: pathlib.Path) -> None:
        self.fd = fd
        self.where = str(path)
        self.closed = False
        self.hint = repair_hint(str(path.parent))
        self._free: tuple[int, int, float] | None = None  # (free bytes, log end, when)

    def free_space(self, end: int) -> int | None:
        known = self._free
        now = time.monotonic()
        if known is not None:
            free, at, when = known
            grown = end - at
            estimate = free - max(0, grown)
            if (
                0 <= grown < self.FREE_RECHECK_BYTES
                and now - when < self.FREE_RECHECK_SECONDS
                and estimate >= self.FREE_LOW
            ):
                return estimate
        st = os.fstatvfs(self.fd)
        free = st.f_bavail * st.f_frsize
        self._free = (free, end, now)
        return free

    def pread(self, offset: int, n: int) -> bytes:
        if self.closed:
            raise LogError(f"{self.where}: the log is closed")
        return _pread_fd(self.fd, offset, n)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def append(self, parts: Sequence[bytes]) -> None:
        total = 0
        for p in parts:
            total += len(p)
        written = os.writev(self.fd, parts)
        if written == total:
            return
        # A short write (rare: a signal, or the disk filling up): write the rest.
        blob = memoryview(b"".join(parts))
        while written < total:
            n = os.write(self.fd, blob[written:])
            if n <= 0:
                raise OSError(errno.EIO, "short write to the redo log")
            written += n

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)
        os.fsync(self.fd)

    def sync(self) -> None:
        # the data and what finds it again (the file's size): the inode's times may wait
        os.fdatasync(self.fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class FileRedoLog(_LogBase):
    """A redo log in one file; obtain it from ``FileRedoLogFactory``."""

    def __init__(
        self,
        fd: int,
        path: pathlib.Path,
        *,
        read_only: bool = False,
        create_body: bytes | None = None,
        resume_at: int | None = None,
        temp_of: str | None = None,
    ) -> None:
        self.path = path
        #: the chain this temporary log will replace the log of (``create_temp``), else None
        self.temp_of = temp_of
        storage = _FileStorage(fd, path)
        try:
            super().__init__(
                storage, read_only=read_only, create_body=create_body, resume_at=resume_at
            )
        except BaseException:
            storage.close()
            raise

    @property
    def closed(self) -> bool:
        return self._storage.closed

    def _moved(self, path: pathlib.Path) -> None:
        self.path = path
        self._storage.where = str(path)
        self.temp_of = None


class _DamagedReader(DamagedLog):
    """Reads a possibly damaged log frame by frame, reporting what lies between valid frames."""

    def __init__(self, storage: _Storage) -> None:
        self._storage = storage
        try:
            self._size = storage.size()
            self._header, self._header_end = _parse_header(storage.pread, self._size, storage.where)
        except BaseException:
            storage.close()
            raise

    @property
    def header(self) -> bytes:
        return self._header

    def size(self) -> int:
        return self._size

    def records(self) -> Iterator[ScannedRecord | DamagedSpan]:
        reader = _Reader(self._storage.pread)
        pos, size = self._header_end, self._size
        while pos < size:
            parsed = _parse_frame(reader.read, pos, size, need_data=True)
            if parsed is not None:
                frame, meta = parsed
                commit = bool(frame.flags & FLAG_COMMIT)
                yield ScannedRecord(pos, meta, frame.fmt, frame.data_ref(), commit)
                pos = frame.end
                continue
            later = _find_frame_after(reader.read, pos + 1, size)
            end = size if later is None else later
            yield DamagedSpan(pos, end)
            pos = end

    def read_record(self, position: int) -> ScannedRecord:
        parsed = None
        if self._header_end <= position < self._size:
            parsed = _parse_frame(self._storage.pread, position, self._size, need_data=True)
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


class FileRedoLogFactory(RedoLogFactory):
    """Logs at ``directory / f"{chain}.log"``, checkpoints at ``directory / f"{chain}.ckpt"``.

    A log opened for writing holds an exclusive ``flock`` on its file (when ``lock`` is true), so
    that two processes never append to the same chain; read-only opens take no lock. A temporary
    log (``create_temp``) is locked from its creation, so when it is renamed over the chain's log
    the name stays locked by the same writer.
    """

    def __init__(self, directory: pathlib.Path | str, *, lock: bool = True) -> None:
        self.directory = pathlib.Path(directory)
        self._lock = lock

    def path(self, chain: str) -> pathlib.Path:
        return self.directory / f"{validate_chain_name(chain)}.log"

    def checkpoint_path(self, chain: str) -> pathlib.Path:
        return self.directory / f"{validate_chain_name(chain)}.ckpt"

    def exists(self, chain: str) -> bool:
        return self.path(chain).is_file()

    def create(self, chain: str, header: bytes) -> RedoLog:
        path = self.path(chain)
        blob = encode_header(header)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            raise LogExists(f"a log for chain {chain!r} already exists at {path}")
        # Write the header to a temporary file and link it into place, so that a crash never
        # leaves a log without a complete header, and an existing log is never overwritten.
        fd, tmp_name = tempfile.mkstemp(prefix=".creating-", suffix=".tmp", dir=self.directory)
        tmp = pathlib.Path(tmp_name)
        try:
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise LogExists(f"a log for chain {chain!r} already exists at {path}") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        fd = self._open_fd(path, chain, read_only=False)
        return FileRedoLog(fd, path, create_body=header)

    def _flock(self, fd: int, path: pathlib.Path) -> None:
        if not self._lock:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogError(
                f"{path}: the log is already open for writing (is the chain mounted?)"
            ) from None

    def _open_fd(self, path: pathlib.Path, chain: str, *, read_only: bool) -> int:
        flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_APPEND
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LogNotFound(f"no log for chain {chain!r} at {path}") from None
        if not read_only:
            self._flock(fd, path)
        return fd

    def open(self, chain: str, *, read_only: bool = False, resume_at: int | None = None) -> RedoLog:
        path = self.path(chain)
        fd = self._open_fd(path, chain, read_only=read_only)
        if not read_only:
            self._remove_strays(chain)  # we hold the writer's lock: no rewrite is under way
        return FileRedoLog(fd, path, read_only=read_only, resume_at=resume_at)

    def _remove_strays(self, chain: str) -> None:
        """Temporary files a crash left behind: an unfinished rewrite, an unfinished checkpoint."""
        for infix in (TEMP_INFIX, CKPT_INFIX):
            for stray in self.directory.glob(f".{chain}{infix}*.tmp"):
                stray.unlink(missing_ok=True)

    def read_header(self, chain: str) -> bytes:
        path = self.path(chain)
        fd = self._open_fd(path, chain, read_only=True)
        try:
            return _parse_header(
                lambda off, n: _pread_fd(fd, off, n), os.fstat(fd).st_size, str(path)
            )[0]
        finally:
            os.close(fd)

    def remove(self, chain: str) -> None:
        path = self.path(chain)
        self.checkpoint_path(chain).unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            raise LogNotFound(f"no log for chain {chain!r} at {path}") from None
        _fsync_dir(self.directory)

    # -- rewriting -------------------------------------------------------------------------------
    def create_temp(self, chain: str, header: bytes) -> RedoLog:
        validate_chain_name(chain)
        blob = encode_header(header)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{chain}{TEMP_INFIX}", suffix=".tmp", dir=self.directory
        )
        path = pathlib.Path(name)
        try:
            os.close(fd)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            self._flock(fd, path)
            os.write(fd, blob)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return FileRedoLog(fd, path, create_body=header, temp_of=chain)

    def _temp(self, log: RedoLog, chain: str | None = None) -> FileRedoLog:
        if (
            not isinstance(log, FileRedoLog)
            or log.temp_of is None
            or (chain is not None and log.temp_of != chain)
            or log.path.parent != self.directory
        ):
            raise LogError("not a temporary log of this chain (see create_temp)")
        if log.closed:
            raise LogError(f"{log.path}: the temporary log is closed")
        return log

    def replace(self, chain: str, log: RedoLog) -> None:
        tmp = self._temp(log, chain)
        path = self.path(chain)
        tmp.sync()
        os.replace(tmp.path, path)
        _fsync_dir(self.directory)
        tmp._moved(path)

    def discard(self, log: RedoLog) -> None:
        tmp = self._temp(log)
        tmp.close()
        tmp.path.unlink(missing_ok=True)

    def preserve(self, chain: str, suffix: str) -> str:
        path = self.path(chain)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", suffix):
            raise ValueError(f"invalid suffix {suffix!r}")
        kept = path.with_name(f"{path.name}.{suffix}")
        try:
            os.link(path, kept)
        except FileNotFoundError:
            raise LogNotFound(f"no log for chain {chain!r} at {path}") from None
        except FileExistsError:
            raise LogExists(f"{kept} exists already") from None
        _fsync_dir(self.directory)
        return str(kept)

    def open_damaged(self, chain: str) -> DamagedLog:
        path = self.path(chain)
        fd = self._open_fd(path, chain, read_only=True)
        self._flock(fd, path)  # no mount may write while a repair reads
        return _DamagedReader(_FileStorage(fd, path))

    # -- checkpoints -----------------------------------------------------------------------------
    def write_checkpoint(self, chain: str, blob: bytes) -> None:
        final = self.checkpoint_path(chain)
        fd, name = tempfile.mkstemp(
            prefix=f".{chain}{CKPT_INFIX}", suffix=".tmp", dir=self.directory
        )
        tmp = pathlib.Path(name)
        try:
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)

    def read_checkpoint(self, chain: str) -> bytes | None:
        try:
            return self.checkpoint_path(chain).read_bytes()
        except FileNotFoundError:
            return None

    def remove_checkpoint(self, chain: str) -> None:
        path = self.checkpoint_path(chain)
        if path.exists():
            path.unlink(missing_ok=True)
            _fsync_dir(self.directory)


# --- in-memory twin ----------------------------------------------------------------------------
class MemoryDisk:
    """The bytes of one in-memory log and how many of them are durable."""

    __slots__ = ("data", "synced")

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.synced = len(data)


class DiskSpace:
    """The room left on the "disk" of a ``MemoryRedoLogFactory`` (None: unlimited); tests set
    ``free`` to make appends fail with ENOSPC, as a full disk does."""

    __slots__ = ("free",)

    def __init__(self, free: int | None = None) -> None:
        self.free = free


class _MemoryStorage(_Storage):
    def __init__(self, disk: MemoryDisk, where: str, space: DiskSpace | None = None) -> None:
        self.disk = disk
        self.where = where
        self.closed = False
        self.space = space if space is not None else DiskSpace()

    def free_space(self, end: int) -> int | None:
        return self.space.free

    def pread(self, offset: int, n: int) -> bytes:
        if self.closed:
            raise LogError(f"{self.where}: the log is closed")
        return bytes(self.disk.data[offset : offset + n])

    def size(self) -> int:
        return len(self.disk.data)

    def append(self, parts: Sequence[bytes]) -> None:
        data = self.disk.data
        space = self.space
        for p in parts:
            if space.free is not None:
                if len(p) > space.free:  # what fits is written, as a full disk does
                    data.extend(p[: space.free])
                    space.free = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                space.free -= len(p)
            data.extend(p)

    def truncate(self, length: int) -> None:
        cut = len(self.disk.data) - length
        del self.disk.data[length:]
        self.disk.synced = len(self.disk.data)
        if self.space.free is not None and cut > 0:
            self.space.free += cut

    def sync(self) -> None:
        self.disk.synced = len(self.disk.data)

    def close(self) -> None:
        self.closed = True


class MemoryRedoLog(_LogBase):
    """A redo log whose "disk" is a ``bytearray``; obtain it from ``MemoryRedoLogFactory``."""

    def __init__(
        self,
        disk: MemoryDisk,
        chain: str,
        *,
        read_only: bool = False,
        create_body: bytes | None = None,
        resume_at: int | None = None,
        temp_of: str | None = None,
        space: DiskSpace | None = None,
    ) -> None:
        self.disk = disk
        self.temp_of = temp_of
        super().__init__(
            _MemoryStorage(disk, f"memory log {chain!r}", space),
            read_only=read_only,
            create_body=create_body,
            resume_at=resume_at,
        )

    @property
    def closed(self) -> bool:
        return self._storage.closed


class MemoryRedoLogFactory(RedoLogFactory):
    """In-memory logs with the semantics of the file logs, plus ``crash()`` for tests."""

    def __init__(self) -> None:
        #: the room left on the in-memory "disk" of every log (unlimited unless a test sets it)
        self.space = DiskSpace()
        self._disks: dict[str, MemoryDisk] = {}
        self._open: list[MemoryRedoLog] = []
        self._checkpoints: dict[str, bytes] = {}
        #: logs kept aside by ``preserve``, by name
        self.preserved: dict[str, bytes] = {}

    def _disk(self, chain: str) -> MemoryDisk:
        disk = self._disks.get(validate_chain_name(chain))
        if disk is None:
            raise LogNotFound(f"no log for chain {chain!r}")
        return disk

    def disk(self, chain: str) -> bytearray:
        """The live bytes of a log: tests may flip or cut them."""
        return self._disk(chain).data

    def chains(self) -> list[str]:
        return sorted(self._disks)

    def crash(self) -> None:
        """Lose everything not synced, as a power cut would; every open log is closed (and
        temporary logs not yet put in place are gone)."""
        for log in self._open:
            log.close()
        self._open.clear()
        for disk in self._disks.values():
            del disk.data[disk.synced :]

    def exists(self, chain: str) -> bool:
        return validate_chain_name(chain) in self._disks

    def _track(self, log: MemoryRedoLog) -> MemoryRedoLog:
        self._open = [lg for lg in self._open if not lg._storage.closed]
        self._open.append(log)
        return log

    def _check_no_writer(self, chain: str, disk: MemoryDisk) -> None:
        for lg in self._open:
            if lg.disk is disk and not lg.read_only and not lg._storage.closed:
                raise LogError(
                    f"memory log {chain!r}: the log is already open for writing"
                    " (is the chain mounted?)"
                )

    def create(self, chain: str, header: bytes) -> RedoLog:
        if self.exists(chain):
            raise LogExists(f"a log for chain {chain!r} already exists")
        disk = self._disks[chain] = MemoryDisk(encode_header(header))
        return self._track(MemoryRedoLog(disk, chain, create_body=header, space=self.space))

    def open(self, chain: str, *, read_only: bool = False, resume_at: int | None = None) -> RedoLog:
        disk = self._disk(chain)
        if not read_only:
            self._check_no_writer(chain, disk)
        return self._track(
            MemoryRedoLog(disk, chain, read_only=read_only, resume_at=resume_at, space=self.space)
        )

    def read_header(self, chain: str) -> bytes:
        data = self._disk(chain).data
        return _parse_header(
            lambda off, n: bytes(data[off : off + n]), len(data), f"memory log {chain!r}"
        )[0]

    def remove(self, chain: str) -> None:
        """Forget the log; like an unlinked file, logs already open on it stay usable."""
        self._disk(chain)
        del self._disks[chain]
        self._checkpoints.pop(chain, None)

    # -- rewriting -------------------------------------------------------------------------------
    def create_temp(self, chain: str, header: bytes) -> RedoLog:
        validate_chain_name(chain)
        disk = MemoryDisk(encode_header(header))
        disk.synced = 0  # a new file: nothing of it is durable before its first sync
        return self._track(
            MemoryRedoLog(
                disk,
                f"{chain} (temporary)",
                create_body=header,
                temp_of=chain,
                space=self.space,
            )
        )

    def _temp(self, log: RedoLog, chain: str | None = None) -> MemoryRedoLog:
        if (
            not isinstance(log, MemoryRedoLog)
            or log.temp_of is None
            or (chain is not None and log.temp_of != chain)
            or log not in self._open
        ):
            raise LogError("not a temporary log of this chain (see create_temp)")
        if log.closed:
            raise LogError("the temporary log is closed")
        return log

    def replace(self, chain: str, log: RedoLog) -> None:
        tmp = self._temp(log, chain)
        tmp.sync()
        self._disks[validate_chain_name(chain)] = tmp.disk
        tmp.temp_of = None
        tmp._storage.where = f"memory log {chain!r}"

    def discard(self, log: RedoLog) -> None:
        self._temp(log).close()

    def preserve(self, chain: str, suffix: str) -> str:
        name = f"{validate_chain_name(chain)}.log.{suffix}"
        if name in self.preserved:
            raise LogExists(f"{name} exists already")
        self.preserved[name] = bytes(self._disk(chain).data)
        return name

    def open_damaged(self, chain: str) -> DamagedLog:
        disk = self._disk(chain)
        self._check_no_writer(chain, disk)
        copy = MemoryDisk(bytes(disk.data))
        return _DamagedReader(_MemoryStorage(copy, f"memory log {chain!r}"))

    # -- checkpoints -----------------------------------------------------------------------------
    def write_checkpoint(self, chain: str, blob: bytes) -> None:
        self._checkpoints[validate_chain_name(chain)] = bytes(blob)

    def read_checkpoint(self, chain: str) -> bytes | None:
        return self._checkpoints.get(validate_chain_name(chain))

    def remove_checkpoint(self, chain: str) -> None:
        self._checkpoints.pop(validate_chain_name(chain), None)

    def checkpoint(self, chain: str) -> bytes | None:
        """The stored checkpoint (tests may damage it with ``put_checkpoint``)."""
        return self._checkpoints.get(chain)

    def put_checkpoint(self, chain: str, blob: bytes) -> None:
        self._checkpoints[chain] = blob
