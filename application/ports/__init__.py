"""Ports: the only doors from the application to the world (docs/adr/0017-ports-and-twins.md).

Every port is an ABC in this package, one module per concern; every method's docstring states
its promise, which tests/contract/ checks against every adapter and twin of the port:

* ``log``: ``RedoLog``, ``RedoLogFactory``, ``DamagedLog``, their records and errors;
* ``chain_store``: ``ChainStore``, ``ChainStoreFactory`` (a chain server's storage of a chain:
  redo logs or JetStream, ADR 0022); its records and errors in the module;
* ``crypto``: ``Crypto`` (AES-256-GCM, ML-DSA-65, ML-KEM-768, Argon2id, randomness)
  and ``KdfParams``;
* ``time``: ``Clock``;
* ``names``: ``Resolver``;
* ``auth``: ``AuthConnector``, ``AuthLink`` (a client's connection to the auth service);
* ``locks``: ``LockCoordinator``, ``PendingLock``, ``HeldLocks``, ``ReplicaSync``;
* ``remote``: ``RemoteConnector``, ``RemoteChain``, ``KernelCache``, ``RefusalRecord``;
* ``views``: ``View``, ``Stream`` (emulated files) and their ``ViewNode``, ``NodeKind``;
  ``ViewStore`` (a view's data in the chain), ``ViewContext`` and ``ViewFactory`` (``--view``).

Adapters implement them; twins and test fakes subclass them too (never ``Mock``). Import from
here (``from application.ports import Clock``) or from the module."""

from __future__ import annotations

from application.ports.auth import (
    AuthConnector,
    AuthLink,
    AuthUnavailable,
)
from application.ports.chain_store import (
    ChainStore,
    ChainStoreFactory,
)
from application.ports.crypto import (
    Crypto,
    CryptoError,
    KdfParams,
)
from application.ports.locks import (
    Acquire,
    HeldLocks,
    Holder,
    LockConflict,
    LockCoordinator,
    LockDeadlock,
    LockRefused,
    LockUnavailable,
    PendingLock,
    ReplicaSync,
)
from application.ports.log import (
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
from application.ports.names import (
    ResolveError,
    Resolver,
)
from application.ports.remote import (
    CommitRejected,
    KernelCache,
    RefusalRecord,
    RemoteChain,
    RemoteConnector,
    RemoteError,
    RemoteRefused,
)
from application.ports.time import (
    Clock,
)
from application.ports.views import (
    NodeKind,
    Stream,
    View,
    ViewContext,
    ViewFactory,
    ViewNode,
    ViewPath,
    ViewStore,
)

__all__ = [
    "Acquire",
    "AuthConnector",
    "AuthLink",
    "AuthUnavailable",
    "ChainStore",
    "ChainStoreFactory",
    "Clock",
    "CommitRejected",
    "Crypto",
    "CryptoError",
    "DamagedLog",
    "DamagedSpan",
    "DataRef",
    "HeldLocks",
    "Holder",
    "KdfParams",
    "KernelCache",
    "LockConflict",
    "LockCoordinator",
    "LockDeadlock",
    "LockRefused",
    "LockUnavailable",
    "LogCorrupt",
    "LogError",
    "LogExists",
    "LogHeaderError",
    "LogNotFound",
    "LogRecord",
    "NodeKind",
    "OpenReport",
    "PendingLock",
    "RedoLog",
    "RedoLogFactory",
    "RefusalRecord",
    "RemoteChain",
    "RemoteConnector",
    "RemoteError",
    "RemoteRefused",
    "ReplicaSync",
    "ResolveError",
    "Resolver",
    "ScannedRecord",
    "Stream",
    "View",
    "ViewContext",
    "ViewFactory",
    "ViewNode",
    "ViewPath",
    "ViewStore",
]
