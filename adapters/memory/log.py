"""Twin of ``RedoLogFactory`` (application/ports/log.py): in-memory logs with the file logs'
semantics, plus ``crash()`` and a settable ``space`` for tests.

The classes stay in adapters/redolog.py and are only re-exported here: the twin shares the frame
codec and ``_LogBase`` with ``FileRedoLogFactory`` (the same bytes, the same torn-tail and
damage rules), so it can move out only once that module's codec and base are split from the
file adapter (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

from adapters.redolog import DiskSpace, MemoryDisk, MemoryRedoLog, MemoryRedoLogFactory

__all__ = ["DiskSpace", "MemoryDisk", "MemoryRedoLog", "MemoryRedoLogFactory"]
