"""The ``Resolver`` port's contract (application/ports/names.py), run against every resolver: the
system's (``getaddrinfo``: only what needs no network), the DNS client (against a DNS server on
127.0.0.1) and the twin ``MemoryResolver`` (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from adapters.dns import DnsResolver, SystemResolver
from adapters.memory import MemoryResolver
from application.ports import ResolveError, Resolver
from tests.dns_server import DnsServer

KNOWN = ("svc.test", ["192.0.2.10", "2001:db8::10"])  # in tests/dns_server.py's ZONE


@dataclass
class Subject:
    """A resolver; ``known`` is a name it resolves (and the addresses), and ``unknown`` a name
    it must refuse; None when the adapter cannot be given one offline."""

    resolver: Resolver
    known: tuple[str, list[str]] | None
    unknown: str | None


@pytest.fixture(params=["memory", "system", "dns"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        yield Subject(MemoryResolver({"SVC.test.": KNOWN[1]}), KNOWN, "missing.test")
    elif request.param == "system":
        yield Subject(SystemResolver(), None, None)
    else:
        with DnsServer() as server:
            yield Subject(DnsResolver("127.0.0.1", server.port), KNOWN, "missing.test")


class TestResolverContract:
    def test_an_ipv4_literal_is_itself(self, subject: Subject) -> None:
        assert subject.resolver.resolve("192.0.2.7", 8080) == [("192.0.2.7", 8080)]

    @pytest.mark.parametrize("literal", ["2001:db8::7", "[2001:db8::7]", "2001:DB8:0:0::7"])
    def test_an_ipv6_literal_is_itself(self, subject: Subject, literal: str) -> None:
        assert subject.resolver.resolve(literal, 443) == [("2001:db8::7", 443)]

    @pytest.mark.parametrize("name", ["localhost", "LocalHost.", "app.localhost"])
    def test_localhost_is_the_loopback(self, subject: Subject, name: str) -> None:
        assert subject.resolver.resolve(name, 5000) == [("127.0.0.1", 5000), ("::1", 5000)]

    @pytest.mark.parametrize("spelling", [str.lower, str.upper, lambda n: n + "."])
    def test_a_known_name_gives_its_addresses(self, subject: Subject, spelling: object) -> None:
        if subject.known is None:
            pytest.skip("this adapter knows no name offline")
        name, addresses = subject.known
        assert callable(spelling)
        assert subject.resolver.resolve(spelling(name), 1234) == [(a, 1234) for a in addresses]

    def test_an_unknown_name_raises(self, subject: Subject) -> None:
        if subject.unknown is None:
            pytest.skip("asking this adapter for an unknown name needs the network")
        with pytest.raises(ResolveError, match="does not exist"):
            subject.resolver.resolve(subject.unknown, 80)

    @pytest.mark.parametrize("bad", ["", "  ", ".", "a..test", "x" * 64 + ".test", "a b.test"])
    def test_a_malformed_name_raises(self, subject: Subject, bad: str) -> None:
        with pytest.raises(ResolveError, match="host name"):
            subject.resolver.resolve(bad, 80)

    @pytest.mark.parametrize("port", [-1, 65536])
    def test_a_port_out_of_range_raises(self, subject: Subject, port: int) -> None:
        with pytest.raises(ResolveError, match="out of range"):
            subject.resolver.resolve("127.0.0.1", port)


def test_the_memory_resolver_records_the_names_asked_but_not_literals() -> None:
    resolver = MemoryResolver({"SVC.test.": KNOWN[1]})
    resolver.resolve("localhost", 1)
    resolver.resolve("10.0.0.1", 1)
    resolver.resolve("Svc.Test", 1)
    assert resolver.queries == ["svc.test"]
