"""Checkpoints: the materialised state of a chain saved beside its log (``local.ckpt``), so that
opening the chain replays only the transactions written after it (docs/adr/0007).

A checkpoint holds the chain index, every indexer's state (the file tree), the committed end of
the log it corresponds to, and an *anchor*: a hash over the records of the last transaction
before that end (their metadata hashes and data hashes). The seal of that transaction is a
keyed hash over the chain's head, so the anchor names the history before it.

It is sealed with AES-256-GCM under a key derived from the read key (names in the view are as
secret as the log's data); a chain without keys stores it with a SHA-256 checksum.

Opening trusts a checkpoint only when it authenticates, names this chain, lies within the
committed log, and its anchor matches the log's records at that place. Anything else - and any
failure while the records after it replay - falls back to a full replay: the log is the truth.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from application.ports import CryptoError, LogError, RedoLog, RedoLogFactory
from application.session import ChainSession, Rebuildable
from application.snapshot import no_gc
from domain.chain import ChainIndex, ObjectInfo
from domain.hashing import EMPTY_HASH, hasher, sha256_of

MAGIC = b"WDFSCKPT"
VERSION = 1
#: magic, version, flags (bit 0: sealed with the checkpoint key), committed end (in clear: it
#: is only a hint for the log's open; the sealed body repeats it)
_HEAD = struct.Struct("<8sHBQ")
_SEALED = 0x01

_log = logging.getLogger("wasmer_dfs.checkpoint")


class CheckpointRejected(Exception):
    """The checkpoint cannot be used (the message says why); the log is replayed instead."""


class CompactionMark(msgspec.Struct, array_like=True, frozen=True):
    """When the chain was last compacted (the triggers measure growth and time from it)."""

    size: int  # the log's size right after the compaction
    at_ms: int  # wall-clock time of the compaction
    head: bytes  # the chain's head right after it (unchanged head: nothing was written since)


class _Body(msgspec.Struct, array_like=True):
    chain_id: bytes
    position: int
    anchor_start: int
    anchor: bytes
    head: bytes
    attested: bytes
    public_keys: dict[bytes, bytes]
    objects: list[ObjectInfo]
    indexers: list[tuple[str, msgspec.Raw]]
    compaction: CompactionMark | None


def anchor(log: RedoLog, start: int, end: int) -> bytes:
    """Hash of the records in [start, end): the last transaction before a checkpoint."""
    state = hasher()
    for rec in log.scan(start, end):
        state.update(sha256_of(rec.meta))
        state.update(rec.data.data_hash if rec.data is not None else EMPTY_HASH)
        state.update(b"\x01" if rec.commit else b"\x00")
    return bytes(state.digest())


def _name(ix: object) -> str:
    return f"{type(ix).__module__}.{type(ix).__qualname__}"


def _seal(session: ChainSession, body: bytes) -> tuple[int, bytes]:
    key = session.checkpoint_key
    if key is None:
        return 0, sha256_of(body) + body
    return _SEALED, session.crypto.seal(key, body, MAGIC + session.header.chain_id)


def encode(session: ChainSession, mark: CompactionMark | None) -> bytes | None:
    """The checkpoint of ``session``'s state at the log's committed end, or None when the state
    cannot be saved (a transaction is pending, or an indexer cannot export its state)."""
    log = session.log
    position = log.committed_end
    start = session.last_tx_start
    if session.has_pending or start < 0 or log.size() != position:
        return None
    states: list[tuple[str, bytes]] = []
    for ix in session.pipeline.indexers:
        blob = ix.export_state() if isinstance(ix, Rebuildable) else None
        if blob is None:
            _log.debug("no checkpoint: %s cannot save its state", _name(ix))
            return None
        states.append((_name(ix), blob))
    index = session.index
    body = _Body(
        chain_id=index.chain_id,
        position=position,
        anchor_start=start,
        anchor=anchor(log, start, position),
        head=index.head,
        attested=index.attested,
        public_keys=index.public_keys,
        objects=list(index.objects.values()),
        indexers=[(n, msgspec.Raw(b)) for n, b in states],
        compaction=mark,
    )
    flags, sealed = _seal(session, msgspec.msgpack.encode(body))
    return _HEAD.pack(MAGIC, VERSION, flags, position) + sealed


def save(
    logs: RedoLogFactory, chain: str, session: ChainSession, mark: CompactionMark | None
) -> bool:
    """Write the checkpoint of ``session`` (True), or leave the old one (False)."""
    blob = encode(session, mark)
    if blob is None:
        return False
    logs.write_checkpoint(chain, blob)
    return True


def resume_position(blob: bytes | None) -> int | None:
    """The committed end a checkpoint claims (a hint for opening the log), or None."""
    if blob is None or len(blob) < _HEAD.size:
        return None
    magic, version, _, position = _HEAD.unpack_from(blob)
    return position if magic == MAGIC and version == VERSION else None


def _body(holder: list[bytes], session: ChainSession) -> _Body:
    """Decode the checkpoint in ``holder`` (which gives its bytes up once they are decrypted:
    a checkpoint is tens of MiB for 100 000 files, and nothing should hold it twice)."""
    blob = holder.pop()
    if len(blob) < _HEAD.size:
        raise CheckpointRejected("it is truncated")
    magic, version, flags, position = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointRejected("it is not a checkpoint")
    if version != VERSION:
        raise CheckpointRejected(f"its version {version} is not {VERSION}")
    sealed = memoryview(blob)[_HEAD.size :]
    key = session.checkpoint_key
    if key is not None:
        if flags != _SEALED:
            raise CheckpointRejected("it is not sealed, but the chain is encrypted")
        try:
            raw: bytes | memoryview = session.crypto.open(
                key, sealed, MAGIC + session.header.chain_id
            )
            del sealed, blob
        except CryptoError:
            raise CheckpointRejected(
                "it does not authenticate (another chain, or altered)"
            ) from None
    else:
        if flags != 0 or sha256_of(bytes(sealed[32:])) != bytes(sealed[:32]):
            raise CheckpointRejected("its checksum does not match")
        raw = sealed[32:]
    try:
        with no_gc():
            body = msgspec.msgpack.decode(raw, type=_Body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CheckpointRejected(f"it is undecodable: {exc}") from None
    if body.position != position:
        raise CheckpointRejected("its position was altered")
    return body


def _index(session: ChainSession, body: _Body) -> ChainIndex:
    index = ChainIndex(chain_id=session.header.chain_id, root_write=session.header.root_write)
    objects = index.objects
    children = index.children
    with no_gc():
        for info in body.objects:
            # a parent's only child is held as itself, a set from the second on (as
            # ChainIndex.apply does). Repeated values are not made one object here: they are
            # decoded already, and the time that would take buys no lower peak (issue 17)
            objects[info.key] = info
            parent = info.parent
            if parent is not None:
                siblings = children.get(parent)
                if siblings is None:
                    children[parent] = info.key
                elif isinstance(siblings, int):
                    children[parent] = {siblings, info.key}
                else:
                    siblings.add(info.key)
    index.public_keys = body.public_keys
    index.head = body.head
    index.attested = body.attested
    return index


@dataclass(slots=True)
class Loader:
    """Restores a session's state from a checkpoint (pass it to ``ChainSession.start``)."""

    blob: bytes | None
    #: after ``start``: whether the checkpoint was used, and the compaction it remembers
    used: bool = False
    mark: CompactionMark | None = None
    reason: str = ""

    def __call__(self, session: ChainSession) -> int | None:
        if self.blob is None:
            self.reason = "there is none"
            return None
        holder, self.blob = [self.blob], None
        try:
            position = self._restore(session, holder)
        except CheckpointRejected as exc:
            self.reason = str(exc)
            _log.debug("checkpoint ignored: %s", exc)
            return None
        self.used = True
        return position

    def _restore(self, session: ChainSession, holder: list[bytes]) -> int:
        body = _body(holder, session)
        if body.chain_id != session.header.chain_id:
            raise CheckpointRejected("it belongs to another chain")
        log = session.log
        if not log.committed_end >= body.position >= body.anchor_start >= 0:
            raise CheckpointRejected("it lies beyond the committed log")
        try:
            if anchor(log, body.anchor_start, body.position) != body.anchor:
                raise CheckpointRejected("the log's records at its position differ")
        except LogError as exc:
            raise CheckpointRejected(f"the log does not match it ({exc})") from None
        indexers = session.pipeline.indexers
        if [n for n, _ in body.indexers] != [_name(ix) for ix in indexers]:
            raise CheckpointRejected("it was written for other indexers")
        twins: list[Rebuildable] = []
        for ix, (_, state) in zip(indexers, body.indexers, strict=True):
            if not isinstance(ix, Rebuildable):
                raise CheckpointRejected(f"{_name(ix)} cannot load a state")
            twin = ix.fork(session)
            try:
                twin.import_state(memoryview(state))
            except ValueError as exc:
                raise CheckpointRejected(f"{_name(ix)}: {exc}") from None
            twins.append(twin)
        index = _index(session, body)
        # nothing was changed until here: now take it all over
        session.index.adopt(index)
        for ix, twin in zip(indexers, twins, strict=True):
            assert isinstance(ix, Rebuildable)
            ix.adopt(twin)
        session.last_tx_start = body.anchor_start
        self.mark = body.compaction
        return body.position


def check_prefix(log: RedoLog, until: int, stop: Callable[[], bool] = lambda: False) -> int:
    """Walk the frames of the log before ``until`` (the part a checkpointed open did not check),
    as an open would: ``LogCorrupt`` (naming the offset and the repair command) on damage.
    Returns the number of records checked; stops early when ``stop()`` says so."""
    n = 0
    for n, _ in enumerate(log.scan(None, until), 1):
        if not n & 1023 and stop():
            break
    return n
