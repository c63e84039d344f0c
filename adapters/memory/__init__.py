"""In-memory twins of the ports (docs/adr/0017-ports-and-twins.md): one per port, each a subclass
of the port (never of the real adapter, never ``Mock``) that keeps the port's promises without
the world behind it, checked by the same contract tests as the real adapters (tests/contract/).
They ship with the program because tests, benchmarks and tools build services on them.

* ``Clock``: ``FakeClock`` (moves only when told);
* ``Resolver``: ``MemoryResolver`` (names from a dict);
* ``RedoLogFactory``: ``MemoryRedoLogFactory`` (defined in adapters/redolog.py beside the file
  log, whose frame codec and base class it shares; re-exported here);
* ``LockCoordinator``: ``MemoryLockHub().coordinator()`` (the server's lock logic in process);
* ``KernelCache``: ``MemoryKernelCache`` (records what it was told to forget);
* ``RefusalRecord``: ``MemoryRefusalRecord`` (a list).

``Crypto`` has no twin here: see the ADR (tests use ``tests.fakes.FastCrypto``, the real
algorithms with a cheap Argon2id). ``RemoteConnector`` has none either: its contract runs the
websocket adapter against an in-process chain server.
"""

from __future__ import annotations

from adapters.memory.clock import FakeClock
from adapters.memory.kernel import MemoryKernelCache
from adapters.memory.locks import MemoryCoordinator, MemoryLockHub
from adapters.memory.log import DiskSpace, MemoryRedoLogFactory
from adapters.memory.names import MemoryResolver
from adapters.memory.refusals import MemoryRefusalRecord

__all__ = [
    "DiskSpace",
    "FakeClock",
    "MemoryCoordinator",
    "MemoryKernelCache",
    "MemoryLockHub",
    "MemoryRedoLogFactory",
    "MemoryRefusalRecord",
    "MemoryResolver",
]
