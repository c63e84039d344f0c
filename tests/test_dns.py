"""The DNS client against a tiny DNS server on 127.0.0.1 (nothing here needs the internet).
The ``Resolver`` contract, run against every resolver, is in
tests/contract/test_resolver_contract.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from adapters.dns import (
    DnsResolver,
    MalformedAnswer,
    SystemResolver,
    make_resolver,
    read_name,
)
from application.ports import ResolveError
from tests.dns_server import AAAA, A, DnsServer
from tests.fakes import closed_udp_port


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as srv:
        yield srv


# --- the DNS client ------------------------------------------------------------------------------
def resolver_for(
    server: DnsServer, *, dnssec: bool = False, timeout: float = 2.0, attempts: int = 2
) -> DnsResolver:
    return DnsResolver("127.0.0.1", server.port, dnssec=dnssec, timeout=timeout, attempts=attempts)


def test_ipv4_comes_first_then_ipv6(server: DnsServer) -> None:
    r = resolver_for(server)
    assert r.resolve("svc.test", 7) == [("192.0.2.10", 7), ("2001:db8::10", 7)]
    assert r.resolve("v4.test", 7) == [("192.0.2.4", 7), ("192.0.2.5", 7)]
    assert r.resolve("v6.test", 7) == [("2001:db8::6", 7)]
    assert [(q.name, q.qtype, q.transport) for q in server.queries[:2]] == [
        ("svc.test", A, "udp"),
        ("svc.test", AAAA, "udp"),
    ]


def test_literals_and_localhost_send_no_query(server: DnsServer) -> None:
    r = resolver_for(server)
    r.resolve("10.1.2.3", 1)
    r.resolve("::1", 1)
    r.resolve("localhost", 1)
    assert server.queries == []


def test_a_cname_chain_in_one_answer_is_followed(server: DnsServer) -> None:
    r = resolver_for(server)
    assert r.resolve("www.test", 443) == [("198.51.100.1", 443), ("2001:db8::1", 443)]
    assert [q.name for q in server.queries] == ["www.test", "www.test"]


def test_a_cname_the_server_did_not_follow_is_asked_for(server: DnsServer) -> None:
    server.partial = True
    r = resolver_for(server)
    assert r.resolve("www.test", 443) == [("198.51.100.1", 443), ("2001:db8::1", 443)]
    assert [q.name for q in server.queries if q.qtype == A] == [
        "www.test",
        "edge.cdn.test",
        "host.cdn.test",
    ]


@pytest.mark.parametrize("partial", [False, True])
def test_a_cname_loop_raises(server: DnsServer, partial: bool) -> None:
    server.partial = partial
    with pytest.raises(ResolveError, match=r"CNAME chain of .* loops"):
        resolver_for(server).resolve("loop1.test", 80)


def test_a_name_without_addresses_raises(server: DnsServer) -> None:
    with pytest.raises(ResolveError, match=r"'text\.test' has no address"):
        resolver_for(server).resolve("text.test", 80)


def test_nxdomain_raises(server: DnsServer) -> None:
    with pytest.raises(ResolveError, match=r"'nope\.test' does not exist \(NXDOMAIN"):
        resolver_for(server).resolve("nope.test", 80)


def test_servfail_raises(server: DnsServer) -> None:
    server.mode = "servfail"
    with pytest.raises(ResolveError, match="SERVFAIL"):
        resolver_for(server).resolve("svc.test", 80)


def test_plain_queries_do_not_ask_for_dnssec(server: DnsServer) -> None:
    resolver_for(server).resolve("svc.test", 80)
    assert server.queries and not any(q.do or q.ad for q in server.queries)


def test_dnssec_accepts_a_validated_answer(server: DnsServer) -> None:
    server.authenticated = True
    r = resolver_for(server, dnssec=True)
    assert r.resolve("www.test", 80) == [("198.51.100.1", 80), ("2001:db8::1", 80)]
    assert server.queries and all(q.do and q.ad for q in server.queries)


@pytest.mark.parametrize("name", ["svc.test", "nope.test"])
def test_dnssec_refuses_an_answer_without_ad(server: DnsServer, name: str) -> None:
    with pytest.raises(ResolveError, match="the answer is not DNSSEC-validated"):
        resolver_for(server, dnssec=True).resolve(name, 80)


def test_a_truncated_answer_is_asked_again_over_tcp(server: DnsServer) -> None:
    server.mode = "truncate"
    assert resolver_for(server).resolve("svc.test", 80) == [
        ("192.0.2.10", 80),
        ("2001:db8::10", 80),
    ]
    assert [q.transport for q in server.queries] == ["udp", "tcp", "udp", "tcp"]


def test_a_silent_server_times_out(server: DnsServer) -> None:
    server.mode = "silent"
    r = resolver_for(server, timeout=0.1, attempts=2)
    started = time.monotonic()
    with pytest.raises(ResolveError, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.1 s"):
        r.resolve("svc.test", 80)
    assert time.monotonic() - started < 3.0
    assert len(server.queries) == 2  # two attempts, then it gives up


@pytest.mark.parametrize("noise", ["garbage", "wrong-id"])
def test_datagrams_that_do_not_answer_the_query_are_ignored(server: DnsServer, noise: str) -> None:
    server.noise = noise
    assert resolver_for(server).resolve("v6.test", 80) == [("2001:db8::6", 80)]


def test_only_datagrams_that_do_not_answer_the_query_time_out(server: DnsServer) -> None:
    server.noise, server.mode = "wrong-id", "silent"
    with pytest.raises(ResolveError, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.1 s"):
        resolver_for(server, timeout=0.1, attempts=1).resolve("svc.test", 80)


def test_a_malformed_answer_raises(server: DnsServer) -> None:
    server.mode = "bad-pointer"
    with pytest.raises(ResolveError, match=r"malformed answer .*does not point backwards"):
        resolver_for(server).resolve("svc.test", 80)


def test_an_unreachable_server_raises() -> None:
    r = DnsResolver("127.0.0.1", closed_udp_port())
    with pytest.raises(ResolveError, match="cannot reach the DNS server"):
        r.resolve("svc.test", 80)


def test_the_server_must_be_an_ip_address() -> None:
    with pytest.raises(ValueError, match="must be an IP address"):
        DnsResolver("dns.example")


# --- compressed names ----------------------------------------------------------------------------
def test_read_name_follows_pointers_and_says_where_the_name_ends() -> None:
    msg = b"\x03www\x04test\x00" + b"\x03cdn\xc0\x04" + b"\xc0\x0a"
    assert read_name(msg, 0) == ("www.test", 10)
    assert read_name(msg, 10) == ("cdn.test", 16)
    assert read_name(msg, 16) == ("cdn.test", 18)


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (b"\xc0\x00", "does not point backwards"),  # at itself
        (b"\x01a\xc0\x00", "does not point backwards"),  # back to where this name began: a loop
        (b"\x01a\xc0\x04\x00", "does not point backwards"),  # forwards
        (b"\x05ab", "past the end"),
        (b"\x01a", "past the end"),  # no terminating label
        (b"\x80", "unknown label type"),
        ((b"\x3f" + b"a" * 63) * 4 + b"\0", "longer than 255 bytes"),
    ],
)
def test_read_name_refuses_hostile_names(msg: bytes, why: str) -> None:
    with pytest.raises(MalformedAnswer, match=why):
        read_name(msg, 0)


# --- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("server", "dnssec", "address"),
    [
        ("8.8.8.8", False, ("8.8.8.8", 53)),
        ("127.0.0.1:5353", True, ("127.0.0.1", 5353)),
        ("::1", False, ("::1", 53)),
        ("[2001:db8::53]:853", False, ("2001:db8::53", 853)),
    ],
)
def test_make_resolver_with_a_server(server: str, dnssec: bool, address: tuple[str, int]) -> None:
    r = make_resolver(server, dnssec)
    assert isinstance(r, DnsResolver)
    assert (r.server, r.dnssec) == (address, dnssec)


def test_make_resolver_without_a_server_is_the_system_resolver() -> None:
    assert type(make_resolver(None, False)) is SystemResolver


@pytest.mark.parametrize(
    ("server", "dnssec", "message"),
    [
        (None, True, "--dns-sec needs --dns-server"),
        ("dns.example", False, "must be an IP address"),
        ("1.2.3.4:99999", False, "out of range"),
    ],
)
def test_make_resolver_refuses(server: str | None, dnssec: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_resolver(server, dnssec)
