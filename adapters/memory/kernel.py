"""Twin of ``KernelCache`` (application/ports/remote.py): records what it was told to forget,
for tests of replication without a kernel mount (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

from application.ports import KernelCache


class MemoryKernelCache(KernelCache):
    """What a mount's kernel would have been told to forget: every call to ``invalidate`` in
    order (``calls``), and the union of its inodes and names (``inodes``, ``entries``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[frozenset[int], frozenset[tuple[int, bytes]]]] = []
        self.inodes: set[int] = set()
        self.entries: set[tuple[int, bytes]] = set()
        self.closed = False

    async def invalidate(self, inodes: set[int], entries: set[tuple[int, bytes]]) -> None:
        self.calls.append((frozenset(inodes), frozenset(entries)))
        self.inodes |= inodes
        self.entries |= entries

    async def settled(self) -> None:
        """Everything asked is forgotten at once here."""

    async def close(self) -> None:
        self.closed = True

    def forgotten(self, ino: int) -> bool:
        """Whether the kernel was told to forget ``ino``'s attributes and data."""
        return ino in self.inodes
