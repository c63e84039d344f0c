"""Compaction twins (docs/adr/0007): a chain session's state rebuilt beside it - from a log
being rewritten (compaction, repair) or from scratch (a replay after a checkpoint that failed) -
and taken over in place, so that the references others hold to that state stay valid.

``ChainSession.shadow``, ``adopt`` and ``reset`` delegate here; the indexers that take part are
``Rebuildable``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from application.ports import RedoLog
from application.session_errors import SessionError
from domain.chain import ChainIndex, Indexer

if TYPE_CHECKING:
    from application.session import ChainSession


@runtime_checkable
class Rebuildable(Indexer, Protocol):
    """An indexer whose state can be rebuilt beside it and taken over in place (compaction
    rebuilds the state from the new log off the event loop), and saved in a checkpoint."""

    def fork(self, session: ChainSession) -> Rebuildable:
        """A new, empty indexer of the same kind that reads through ``session``."""

    def adopt(self, other: Rebuildable) -> None:
        """Take the state of ``other`` (a fork) in place: references to this indexer's state
        held elsewhere (the file-system service's view) stay valid."""

    def export_state(self) -> bytes | None:
        """The state as bytes for a checkpoint, or None when it cannot be saved."""

    def import_state(self, blob: bytes | memoryview) -> None:
        """Load ``export_state``'s bytes into this (empty) indexer; ValueError when unusable."""


def shadow(session: ChainSession, log: RedoLog) -> ChainSession:
    """A session over ``log`` with ``session``'s keys (object keys unwrapped once serve both)
    and empty forks of its indexers."""
    twin = type(session)(
        log,
        session.header,
        session.crypto,
        session.clock,
        session.keys.read_key,
        session.formats,
        keys=session.keys,
    )
    for ix in session.pipeline.indexers:
        if not isinstance(ix, Rebuildable):
            raise SessionError(
                f"the indexer {type(ix).__name__} cannot be rebuilt: compaction is disabled"
            )
        twin.pipeline.indexers.append(ix.fork(twin))
    return twin


def adopt(session: ChainSession, twin: ChainSession) -> None:
    """``session`` takes the state ``twin`` (from ``shadow``) built, in place, and its log."""
    if session.has_pending:
        raise SessionError("cannot switch logs with a transaction pending")
    session.index.adopt(twin.index)
    for mine, theirs in zip(session.pipeline.indexers, twin.pipeline.indexers, strict=True):
        assert isinstance(mine, Rebuildable) and isinstance(theirs, Rebuildable)
        mine.adopt(theirs)
    session.log = twin.log
    session.last_tx_start = twin.last_tx_start


def reset(session: ChainSession) -> None:
    """Forget ``session``'s replayed state (index and indexers) in place."""
    header = session.header
    session.index.adopt(ChainIndex(chain_id=header.chain_id, root_write=header.root_write))
    for ix in session.pipeline.indexers:
        if not isinstance(ix, Rebuildable):
            raise SessionError(f"{type(ix).__name__} cannot be reset")
        ix.adopt(ix.fork(session))
    session.last_tx_start = -1
    session.replayed_from = None
