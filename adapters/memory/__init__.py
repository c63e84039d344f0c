"""In-memory twins of the ports (docs/adr/0017-ports-and-twins.md): one per port, each a subclass
of the port (never of the real adapter, never ``Mock``) that keeps the port's promises without
the world behind it, checked by the same contract tests as the real adapters (tests/contract/).
They ship with the program because tests, benchmarks and tools build services on them.

* ``Clock``: ``FakeClock`` (moves only when told);
* ``Resolver``: ``MemoryResolver`` (names from a dict);
* ``RedoLogFactory``: ``MemoryRedoLogFactory`` (adapters/memory/log.py; it shares the frame
  codec, adapters/redolog_format.py, and ``LogBase``, adapters/redolog_base.py, with the file log);
* ``LockCoordinator``: ``MemoryLockHub().coordinator()`` (the server's lock logic in process);
* ``KernelCache``: ``MemoryKernelCache`` (records what it was told to forget);
* ``RefusalRecord``: ``MemoryRefusalRecord`` (a list);
* ``ReplicaSync``: ``MemoryReplicaHub().replica()`` (replicas of a chain held in a list);
* ``RemoteConnector`` / ``RemoteChain``: ``MemoryChainServer(app).connector(chain)`` (the chain
  server application in process, driven without a socket);
* ``ViewStore``: ``MemoryViewStore`` (records in a dict);
* ``AuthConnector`` / ``AuthLink``: ``MemoryAuthConnector(service)`` (adapters/memory/auth.py:
  the auth service's ``AuthSession`` in process, no socket).

* ``Crypto``: ``FastCrypto`` (adapters/memory/crypto.py: the real algorithms, a cheap Argon2id;
  an honest twin cannot fake a signature or a cipher, see the ADR).
"""

from __future__ import annotations

from adapters.memory.clock import FakeClock
from adapters.memory.crypto import FastCrypto
from adapters.memory.kernel import MemoryKernelCache
from adapters.memory.locks import MemoryCoordinator, MemoryLockHub
from adapters.memory.log import DiskSpace, MemoryRedoLogFactory
from adapters.memory.names import MemoryResolver
from adapters.memory.refusals import MemoryRefusalRecord
from adapters.memory.remote import MemoryChainServer, MemoryConnector, MemoryRemoteChain
from adapters.memory.replica import MemoryReplicaHub, MemoryReplicaSync
from adapters.memory.view_store import MemoryViewStore

__all__ = [
    "DiskSpace",
    "FakeClock",
    "FastCrypto",
    "MemoryChainServer",
    "MemoryConnector",
    "MemoryCoordinator",
    "MemoryKernelCache",
    "MemoryLockHub",
    "MemoryRedoLogFactory",
    "MemoryRefusalRecord",
    "MemoryRemoteChain",
    "MemoryReplicaHub",
    "MemoryReplicaSync",
    "MemoryResolver",
    "MemoryViewStore",
]
