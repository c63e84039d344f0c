"""The in-memory twin of ``ReplicaSync`` (docs/adr/0017): replicas of one chain whose "server"
is a list in memory (``MemoryReplicaHub``). A replica's writes are local until
``flush_confirmed`` appends them to the hub (the server confirming them); another replica sees
them once it has applied the hub's log that far (``wait_applied``). Positions are byte offsets in
the hub's log, as a chain server's are.
"""

from __future__ import annotations

import asyncio

from application.ports import ReplicaSync


class MemoryReplicaHub:
    """The chain server of the twins: one ordered log of (position after, name, data)."""

    def __init__(self) -> None:
        self.log: list[tuple[int, bytes, bytes]] = []
        self.end = 0
        self._grown = asyncio.Event()

    def replica(self) -> MemoryReplicaSync:
        return MemoryReplicaSync(self)

    def append(self, name: bytes, data: bytes) -> int:
        self.end += len(name) + len(data) + 1
        self.log.append((self.end, name, data))
        self._grown.set()
        return self.end

    async def grown(self) -> None:
        """Wait until the log grows."""
        self._grown.clear()
        await self._grown.wait()


class MemoryReplicaSync(ReplicaSync):
    """One replica of the hub's chain: its files as it sees them (``read``), its unconfirmed
    writes, and how far it has applied the hub's log."""

    def __init__(self, hub: MemoryReplicaHub) -> None:
        self.hub = hub
        self.files: dict[bytes, bytes] = {}
        self.pending: dict[bytes, bytes] = {}
        self.applied = 0
        self.confirmed = 0

    def write(self, name: bytes, data: bytes) -> None:
        """A local change: seen here at once, by others after ``flush_confirmed``."""
        self.files[name] = data
        self.pending[name] = data

    def read(self, name: bytes) -> bytes | None:
        return self.files.get(name)

    async def flush_confirmed(self) -> int:
        for name, data in self.pending.items():
            self.confirmed = self.hub.append(name, data)
        self.pending.clear()
        self._apply(self.confirmed)
        return self.confirmed

    async def wait_applied(self, position: int) -> None:
        while self.applied < position:
            if self.hub.end >= position:
                # whole transactions, as a replica applies them: up to the end of the one
                # that holds ``position``
                self._apply(next(end for end, _, _ in self.hub.log if end >= position))
            else:
                await self.hub.grown()

    def _apply(self, position: int) -> None:
        for end, name, data in self.hub.log:
            if self.applied < end <= position and name not in self.pending:
                self.files[name] = data
        self.applied = max(self.applied, position)
