"""The redo log's bytes: the file header and record frames, encoded and decoded, and the rule that
finds the committed, intact end of a log (the torn-tail rule).

The byte layout, the torn-tail rule and the durability contract are described in
``docs/adr/0003-redo-log-format.md``; keep the two in step.

File header (little-endian)::

    magic b"WDFSLOG\\0" (8) | version u16 | body length u32 | body | CRC32 u32 of all before it

Record frame (52-byte head, then meta, then data)::

    magic b"WR" (2) | flags u8 | fmt u8 | meta length u32 | data length u64 | data hash (32)
    | CRC32 u32 of the 48 bytes before it and of the meta | meta | data

The frame CRC does not cover the data: the data is checked against its SHA-256 hash when it is
read back (``read_data``), and at open for the last committed transaction.

This codec is pure (it reads only through the ``ReadFn`` it is given) yet it stays in adapters/,
not domain/: it raises the log port's errors (``LogHeaderError``, ``LogCorrupt`` of
application.ports), which domain/ may not import, and the frame layout is a private matter of
the log adapters (the file log and its in-memory twin both write these bytes); nothing in
domain/ or application/ reads frames.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

from application.ports import DataRef, LogCorrupt, LogHeaderError, LogRecord
from domain.hashing import DIGEST_SIZE, EMPTY_HASH, hasher, sha256_of

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
_HASH_CHUNK = 1 << 20
_SEARCH_CHUNK = 1 << 20

REPAIR_HINT = "run `wasmer-dfs verify --repair` to salvage the records around the damage"


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


class Frame(NamedTuple):
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


def parse_frame(read: ReadFn, pos: int, end: int, *, need_data: bool) -> tuple[Frame, bytes] | None:
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
    return Frame(pos, flags, fmt, meta_len, data_len, data_hash), meta


def parse_header(read: ReadFn, size: int, where: str) -> tuple[bytes, int]:
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


def hash_range(read: ReadFn, offset: int, length: int) -> bytes | None:
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


def find_frame_after(read: ReadFn, start: int, end: int) -> int | None:
    """Offset of the first valid frame head (CRC checked) in [start, end), else None."""
    pos = start
    while pos < end:
        chunk = read(pos, min(_SEARCH_CHUNK, end - pos))
        if not chunk:
            return None
        i = chunk.find(FRAME_MAGIC)
        while i != -1:
            if parse_frame(read, pos + i, end, need_data=False) is not None:
                return pos + i
            i = chunk.find(FRAME_MAGIC, i + 1)
        if pos + len(chunk) >= end:
            return None
        pos += len(chunk) - 1  # a magic may straddle two chunks
    return None


def recover(read: ReadFn, header_end: int, size: int, where: str, hint: str = REPAIR_HINT) -> int:
    """End of the committed, intact prefix of the log; ``LogCorrupt`` on mid-log damage.

    ``header_end`` may also be a committed end known from before (a checkpoint's): then only the
    records after it are checked."""
    pos = header_end
    committed_end = prev_committed_end = header_end
    tx: list[Frame] = []
    last_tx: list[Frame] = []
    damaged_at: int | None = None
    while pos < size:
        parsed = parse_frame(read, pos, size, need_data=True)
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
        later = find_frame_after(read, damaged_at + 1, size)
        if later is not None:
            raise LogCorrupt(
                f"{where}: the log is damaged at offset {damaged_at} (the record there is"
                f" invalid, but a valid record follows at offset {later}, so this is not a"
                f" torn tail); {hint}"
            )
    # A torn write may leave the frames of the last transaction intact but its data unwritten.
    for frame in last_tx:
        if hash_range(read, frame.data_offset, frame.data_len) != frame.data_hash:
            return prev_committed_end
    return committed_end
