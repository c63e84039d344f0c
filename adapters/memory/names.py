"""Twin of ``Resolver`` (application/ports/names.py): names from a dict. Moved here from
adapters/dns.py (docs/adr/0017-ports-and-twins.md); like every resolver it answers IP literals
and ``localhost`` itself and refuses malformed names (``adapters.dns.NameResolver``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapters.dns import NameResolver, host_name
from application.ports import ResolveError


class MemoryResolver(NameResolver):
    """Names from a dict (name -> addresses); records every name it was asked for."""

    def __init__(self, names: Mapping[str, Sequence[str]] | None = None) -> None:
        self.names = {host_name(k): list(v) for k, v in (names or {}).items()}
        self.queries: list[str] = []

    def resolve_name(self, name: str, host: str, port: int) -> list[tuple[str, int]]:
        self.queries.append(name)
        addresses = self.names.get(name)
        if not addresses:
            raise ResolveError(f"{host!r} does not exist")
        return [(a, port) for a in addresses]
