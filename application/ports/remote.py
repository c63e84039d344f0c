"""Ports of replication (docs/adr/0008-wire-protocol.md, 0009-replication.md): ``RemoteConnector``
opens a ``RemoteChain`` (one connection to a chain on a chain server), ``KernelCache`` is what
the kernel cached of the mount, to forget after a remote change, ``RefusalRecord`` where a
replica notes what it refused from its server (docs/adr/0016); and their errors.

Adapters: ``adapters.remote.WsConnector`` / ``WsRemoteChain``, ``adapters.remote.FuseKernelCache``,
``adapters.refusals.FileRefusalRecord``. Twins: ``adapters.memory.MemoryKernelCache`` and
``MemoryRefusalRecord``; the ``RemoteConnector`` contract runs the websocket adapter against an
in-process server instead of a twin (docs/adr/0017-ports-and-twins.md). Contracts:
tests/contract/test_remote_contract.py, tests/contract/test_kernel_cache_contract.py (which
checks ``RefusalRecord`` too)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from domain.wire import CommitRecord, Confirmed, ServerMessage


class RemoteError(Exception):
    """The connection to the chain server failed or ended (the message says why)."""


class RemoteRefused(RemoteError):
    """The server answered, and refused (a wrong chain name, no common protocol version...)."""


class CommitRejected(RemoteError):
    """The server refused a transaction (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteChain(abc.ABC):
    """Port: one connection to a chain on a chain server."""

    @property
    @abc.abstractmethod
    def header(self) -> bytes | None:
        """The chain's header body as the server holds it (None: the chain does not exist)."""

    @abc.abstractmethod
    async def subscribe(self, from_position: int) -> None:
        """Ask for the chain's transactions from ``from_position`` (a server log position; 0:
        from the start): ``next`` then yields them in server order, and every later one as it
        is confirmed."""

    @abc.abstractmethod
    async def next(self) -> ServerMessage:
        """The next message of the stream; ``RemoteError`` when the connection ended."""

    @abc.abstractmethod
    async def commit(self, records: Sequence[CommitRecord]) -> Confirmed:
        """Commit one transaction and wait for the server's fsync; ``CommitRejected``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the connection; never raises, and closing twice is harmless."""


class RemoteConnector(abc.ABC):
    """Port: opens connections to the chain server of one chain URL."""

    @abc.abstractmethod
    async def connect(self, header: bytes | None) -> RemoteChain:
        """Connect and say hello (``header``: the chain's header body, to create or check the
        chain); ``RemoteError`` when the server cannot be reached or refuses."""


class RefusalRecord(abc.ABC):
    """Port: a durable note, beside the replica's log, of what it refused from its chain server
    (a forged or forked history, docs/adr/0016), which ``wasmer-dfs verify`` reports."""

    @abc.abstractmethod
    def record(self, reason: str) -> None:
        """Append one refusal (durably)."""

    @abc.abstractmethod
    def entries(self) -> list[str]:
        """Every refusal recorded, oldest first."""


class KernelCache(abc.ABC):
    """Port: what the kernel cached of the mount, to forget after a remote change.

    ``invalidate`` never waits for the kernel: forgetting a name takes its directory's lock in
    the kernel, which a request in flight in that directory holds until the file system answers
    it, and that answer may wait for the very loop that asked (docs/adr/0009, "Kernel caches")."""

    @abc.abstractmethod
    async def invalidate(self, inodes: set[int], entries: set[tuple[int, bytes]]) -> None:
        """Have the kernel forget the attributes and data of ``inodes`` and the names
        ``(directory, name)``, after this call; returns without waiting for it."""

    @abc.abstractmethod
    async def settled(self) -> None:
        """Wait until the kernel has forgotten everything asked so far (what was asked later is
        not waited for). Never call it from a path that answers a file-system request which
        may hold a directory's lock (create, mkdir, unlink, rename ...)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop asking the kernel (before the session is closed): what is still queued is
        forgotten first, within a bound. Closing twice is harmless."""
