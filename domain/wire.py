"""The wire protocol between mounts and the chain server: typed messages and their frames.

One websocket binary message is one frame: the MessagePack encoding of one message struct, a map
tagged by its field ``t``. Pure: no I/O. Decoding checks types, ranges and the structural rules
below and raises ``WireError`` (a ``DomainError``) for anything else, so that a receiver never
acts on a malformed frame. See docs/adr/0008-wire-protocol.md for the conversation.

Versioning: ``Hello``, ``Welcome`` and ``Fatal`` keep their shape in every version (new fields
only, with defaults; unknown fields are ignored), so that two programs of any versions can always
agree on a version or say why they cannot. Every other message belongs to the version chosen.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import msgspec

from domain.errors import DomainError
from domain.locks import EOF

#: protocol versions this program speaks, oldest first
PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

#: limits of the original's history batches: at most this many events or bytes per batch
BATCH_EVENTS = 5_000
BATCH_BYTES = 512 * 1024
#: the largest frame a server accepts by default (websockets ``max_size``)
MAX_FRAME = 8 * 1024 * 1024

_MAX_NAME = 251
_MAX_REASON = 4096

U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgpack integers stop at 2**64 - 1
Position = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
FormatByte = Annotated[int, msgspec.Meta(ge=0, le=255)]
Version = Annotated[int, msgspec.Meta(ge=1, le=65535)]
ChainName = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_NAME)]
Reason = Annotated[str, msgspec.Meta(max_length=_MAX_REASON)]
#: a byte offset of a lock range, and its exclusive end (``EOF``: to the end of the file)
Offset = Annotated[int, msgspec.Meta(ge=0, le=EOF - 1)]
End = Annotated[int, msgspec.Meta(ge=1, le=EOF)]
#: at most this many locks in one ``LockSync``
MAX_SYNC_LOCKS = 100_000


class WireError(DomainError):
    """A frame that is not a well-formed message of the protocol (the message says why)."""


class VersionMismatch(WireError):
    """The two ends share no protocol version."""


# --- records -------------------------------------------------------------------------------------
class WireRecord(msgspec.Struct, frozen=True, array_like=True):
    """A record of the server's log as streamed to subscribers: its position in that log, its
    metadata bytes and format byte, its data (None: no data) and whether it ends a transaction
    (the seal). Everything but the metadata's clear fields is ciphertext to the server."""

    position: Position
    meta: bytes
    fmt: FormatByte
    data: bytes | None
    commit: bool


class CommitRecord(msgspec.Struct, frozen=True, array_like=True):
    """A record of a transaction a client commits; the last one of a ``Commit`` is the seal."""

    meta: bytes
    fmt: FormatByte
    data: bytes | None = None


class ServerLimits(msgspec.Struct, frozen=True):
    """What the server accepts and sends (told in ``Welcome``)."""

    max_frame: int = MAX_FRAME
    batch_events: int = BATCH_EVENTS
    batch_bytes: int = BATCH_BYTES
    #: commits a client may have unanswered before the server stops reading its frames
    max_pending_commits: int = 64
    #: how far in the future an event's timestamp may lie
    tolerance_ms: int = 30_000
    #: a client's locks are freed this long after the server last heard from it (ADR 0010)
    lock_lease_ms: int = 10_000


# --- client -> server ---------------------------------------------------------------------------
class ChainAuth(msgspec.Struct, frozen=True):
    """Who a connection is (issue 14, docs/adr/0018): the user's email, the group whose chain
    it asks for (None: the user's own chain) and the user's normal ML-DSA signature over
    ``domain.auth.chains.signed_chain_auth`` with the nonce the server gave in the websocket
    handshake's ``x-wasmer-dfs-nonce`` header."""

    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
    group: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None
    signature: Annotated[bytes, msgspec.Meta(max_length=8192)]


class Hello(msgspec.Struct, frozen=True, tag="hello", tag_field="t"):
    """The first frame of a connection: the versions the client speaks, the chain (the same name
    as in the URL path) and, when the client holds the chain already or creates it, the chain
    header body (opaque to the server but for its chain id and root key hash)."""

    versions: Annotated[list[Version], msgspec.Meta(min_length=1, max_length=64)]
    chain: ChainName
    header: bytes | None = None
    agent: Annotated[str, msgspec.Meta(max_length=256)] = ""
    #: the client's name for its lock session (random, kept across reconnects, so that a
    #: reconnect finds its locks again); None: the locks of this connection cannot be reclaimed
    client_id: Annotated[bytes, msgspec.Meta(min_length=1, max_length=64)] | None = None
    #: a token's signature: the chain is then the user's or the group's (None: a passcode chain)
    auth: ChainAuth | None = None


class Subscribe(msgspec.Struct, frozen=True, tag="subscribe", tag_field="t"):
    """Stream the chain from ``from_position``: 0 for the start, otherwise a resumable position
    the server gave before (``Events.end`` after a commit record, ``Confirmed.end``,
    ``EndOfHistory.position``)."""

    from_position: Position = 0


class Commit(msgspec.Struct, frozen=True, tag="commit", tag_field="t"):
    """One transaction: events, then the seal (last record, no data) with the signature(s) over
    ``transaction_digest(chain_id, event hashes)``. ``tx_id`` is the client's name for it."""

    tx_id: U64
    records: Annotated[list[CommitRecord], msgspec.Meta(min_length=1)]


# --- locks (docs/adr/0010-lock-protocol.md) ------------------------------------------------------
class LockStatus(enum.IntEnum):
    GRANTED = 0  # granted (for LockTest: nothing conflicts; for LockRenew/LockSync: done)
    CONFLICT = 1  # another owner holds a conflicting lock (``holder``); nothing changed
    DEADLOCK = 2  # waiting would close a cycle of waiting owners (EDEADLK); nothing changed
    CANCELLED = 3  # the answer to LockCancel: the request is withdrawn if it still waited
    REFUSED = 4  # too many locks or waiters (ENOLCK); ``reason`` says which


class LockSpan(msgspec.Struct, frozen=True, array_like=True):
    """A lock as held: an object key, the owner within the client, flock (whole file) or POSIX,
    the range ``[start, end)`` and the kind (1 read / shared, 2 write / exclusive)."""

    key: U64
    owner: U64
    flock: bool
    start: Offset
    end: End
    kind: Annotated[int, msgspec.Meta(ge=1, le=2)]


class Lock(msgspec.Struct, frozen=True, tag="lock", tag_field="t"):
    """Set ``owner``'s lock on ``[start, end)`` of object ``key`` to ``kind`` (replacing what it
    held there: POSIX semantics), all or nothing. Conflicting: ``CONFLICT`` at once, or with
    ``wait`` an answer once granted (``LockCancel`` withdraws it). ``position``: when this
    downgrades a write lock, the server log position that covers the holder's writes."""

    req: U64
    key: U64
    owner: U64
    kind: Annotated[int, msgspec.Meta(ge=1, le=2)]
    start: Offset = 0
    end: End = EOF
    flock: bool = False
    wait: bool = False
    position: Position = 0


class Unlock(msgspec.Struct, frozen=True, tag="unlock", tag_field="t"):
    """Release ``owner``'s locks on ``[start, end)`` of ``key`` (no answer). ``position``: the
    server log position after the holder's writes were confirmed (the next holder of the range
    waits until it has applied the log up to there)."""

    key: U64
    owner: U64
    start: Offset = 0
    end: End = EOF
    flock: bool = False
    position: Position = 0


class LockCancel(msgspec.Struct, frozen=True, tag="lock-cancel", tag_field="t"):
    """Withdraw the waiting request ``req``; answered ``CANCELLED`` (after ``GRANTED`` if the
    grant came first: the client then undoes it)."""

    req: U64


class LockTest(msgspec.Struct, frozen=True, tag="lock-test", tag_field="t"):
    """F_GETLK: would ``kind`` on ``[start, end)`` conflict? ``GRANTED`` (no) or ``CONFLICT``
    with a ``holder``."""

    req: U64
    key: U64
    owner: U64
    kind: Annotated[int, msgspec.Meta(ge=1, le=2)]
    start: Offset = 0
    end: End = EOF
    flock: bool = False


class LockSync(msgspec.Struct, frozen=True, tag="lock-sync", tag_field="t"):
    """After a (re)connect: this client's session holds exactly ``held``. Locks of the session
    not listed are released (``position`` as in ``Unlock``); listed locks the session does not
    hold any more are reclaimed when ``reclaim`` is set and the server is in its grace period
    (and nothing conflicts), otherwise lost. Answered ``GRANTED`` with ``lost`` (indexes)."""

    req: U64
    held: Annotated[list[LockSpan], msgspec.Meta(max_length=MAX_SYNC_LOCKS)]
    position: Position = 0
    reclaim: bool = False


class LockRenew(msgspec.Struct, frozen=True, tag="lock-renew", tag_field="t"):
    """Keep this client's lease (every lock message does); answered ``GRANTED``."""

    req: U64


# --- server -> client ---------------------------------------------------------------------------
class Welcome(msgspec.Struct, frozen=True, tag="welcome", tag_field="t"):
    """The answer to ``Hello``: the version chosen, the chain's header body (None while the chain
    does not exist: the client must commit its genesis transaction first), the durable end of the
    chain's log (0 while it does not exist) and the server's limits."""

    version: Version
    chain: ChainName
    header: bytes | None
    position: Position
    limits: ServerLimits = msgspec.field(default_factory=ServerLimits)


class Events(msgspec.Struct, frozen=True, tag="events", tag_field="t"):
    """A batch of records in log order; ``end`` is the position right after the last record
    (resumable when that record is a commit record)."""

    records: list[WireRecord]
    end: Position


class EndOfHistory(msgspec.Struct, frozen=True, tag="end-of-history", tag_field="t"):
    """History up to ``position`` has been sent; live events follow."""

    position: Position


class Confirmed(msgspec.Struct, frozen=True, tag="confirmed", tag_field="t"):
    """The transaction ``tx_id`` is durable (fsynced) in the server's log at [position, end). To a
    subscriber it also stands in the stream where those records would be (they are not echoed)."""

    tx_id: U64
    position: Position
    end: Position


class CommitError(msgspec.Struct, frozen=True, tag="commit-error", tag_field="t"):
    """The transaction ``tx_id`` was refused; nothing of it was written."""

    tx_id: U64
    reason: Reason


#: how a ``CommitError`` reason starts when the server's disk is full: the refusal is for now,
#: not for good, and the client sends the transaction again later (docs/adr/0008)
DISK_FULL_REASON = "the server's disk is full"


class ReadOnly(msgspec.Struct, frozen=True, tag="read-only", tag_field="t"):
    """The chain accepts no commits for now (the reason says why); the stream goes on."""

    reason: Reason


class Fatal(msgspec.Struct, frozen=True, tag="fatal", tag_field="t"):
    """The server ends the connection for this reason (a websocket close follows)."""

    reason: Reason


class LockResult(msgspec.Struct, frozen=True, tag="lock-result", tag_field="t"):
    """The answer to ``Lock``, ``LockTest``, ``LockCancel``, ``LockSync`` or ``LockRenew``
    ``req``. A grant carries the ``position`` of the server's log the new holder must have
    applied before it uses the lock (coherence: it then sees the previous holders' writes)."""

    req: U64
    status: LockStatus
    position: Position = 0
    holder: LockSpan | None = None
    lost: list[int] = msgspec.field(default_factory=list)
    reason: Reason = ""


ClientMessage = (
    Hello | Subscribe | Commit | Lock | Unlock | LockCancel | LockTest | LockSync | LockRenew
)
#: the lock messages a client sends
LockMessage = Lock | Unlock | LockCancel | LockTest | LockSync | LockRenew
ServerMessage = (
    Welcome | Events | EndOfHistory | Confirmed | CommitError | ReadOnly | Fatal | LockResult
)
Message = ClientMessage | ServerMessage

_encoder = msgspec.msgpack.Encoder()
_client_decoder = msgspec.msgpack.Decoder(ClientMessage)
_server_decoder = msgspec.msgpack.Decoder(ServerMessage)


def encode(msg: Message) -> bytes:
    """The frame of one message."""
    return _encoder.encode(msg)


def _decode(frame: Any, decoder: msgspec.msgpack.Decoder[Any], side: str) -> Any:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise WireError(f"a {side} frame must be binary, not {type(frame).__name__}")
    try:
        return decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise WireError(f"malformed {side} frame: {exc}") from None
    except (msgspec.DecodeError, ValueError, TypeError) as exc:  # incl. UnicodeDecodeError
        raise WireError(f"undecodable {side} frame: {exc}") from None
    except RecursionError:
        raise WireError(f"undecodable {side} frame: nested too deeply") from None


def decode_client(frame: Any) -> ClientMessage:
    """A frame a client sent; ``WireError`` when it is not a valid client message."""
    msg: ClientMessage = _decode(frame, _client_decoder, "client")
    if isinstance(msg, Commit):
        check_commit(msg.records)
    elif isinstance(msg, Lock | Unlock | LockTest):
        _check_range(msg.start, msg.end)
    elif isinstance(msg, LockSync):
        for span in msg.held:
            _check_range(span.start, span.end)
    return msg


def _check_range(start: int, end: int) -> None:
    if end <= start:
        raise WireError("malformed client frame: a lock range ends before it starts")


def decode_server(frame: Any) -> ServerMessage:
    """A frame a server sent; ``WireError`` when it is not a valid server message."""
    msg: ServerMessage = _decode(frame, _server_decoder, "server")
    if isinstance(msg, Events):
        check_events(msg)
    elif isinstance(msg, Confirmed) and msg.end <= msg.position:
        raise WireError("malformed server frame: a confirmed transaction ends before it starts")
    return msg


def check_commit(records: Sequence[CommitRecord]) -> None:
    """A transaction is events then one seal; the seal carries no data."""
    if not records:
        raise WireError("malformed client frame: a commit without records")
    if records[-1].data is not None:
        raise WireError("malformed client frame: the seal (last record) of a commit has data")


def check_events(msg: Events) -> None:
    last = -1
    for rec in msg.records:
        if rec.position <= last:
            raise WireError("malformed server frame: event positions do not increase")
        last = rec.position
    if msg.end <= last:
        raise WireError("malformed server frame: a batch ends before its last record")


def negotiate(client: Iterable[int], server: Iterable[int] = PROTOCOL_VERSIONS) -> int:
    """The highest version both speak; ``VersionMismatch`` when there is none."""
    theirs = set(client)
    common = theirs & set(server)
    if not common:
        raise VersionMismatch(
            f"no common protocol version: the server speaks {sorted(set(server))},"
            f" the client {sorted(theirs)}"
        )
    return max(common)
