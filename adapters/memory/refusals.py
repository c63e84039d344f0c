"""Twin of ``RefusalRecord`` (application/ports/remote.py): the refusals a replica noted, kept in
a list (docs/adr/0016, docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

from application.ports import RefusalRecord


class MemoryRefusalRecord(RefusalRecord):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def record(self, reason: str) -> None:
        self.reasons.append(reason)

    def entries(self) -> list[str]:
        return list(self.reasons)
