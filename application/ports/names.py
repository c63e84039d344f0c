"""Port of name resolution (docs/adr/0011-clock-and-resolver.md).

Adapters: ``adapters.dns.SystemResolver``, ``adapters.dns.DnsResolver``; twin:
``adapters.memory.MemoryResolver``. Contract: tests/contract/test_resolver_contract.py."""

from __future__ import annotations

import abc


class ResolveError(Exception):
    """A host name could not be turned into addresses; the message is meant for a human."""


class Resolver(abc.ABC):
    """Turns a host name into the addresses to connect to. Blocking: call it off the event loop
    (``asyncio.to_thread``). IP literals and ``localhost`` resolve without asking anyone."""

    @abc.abstractmethod
    def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        """``(address, port)`` pairs in the order to try them, never empty; raises
        ``ResolveError`` when the name does not exist, has no address or cannot be looked up."""
