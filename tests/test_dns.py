"""The resolver port: its contract run against every adapter, and the DNS client against a tiny
DNS server on 127.0.0.1 (nothing here needs the internet)."""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from adapters.dns import (
    DnsResolver,
    MalformedAnswer,
    MemoryResolver,
    SystemResolver,
    make_resolver,
    read_name,
)
from application.ports import ResolveError, Resolver
from tests.fakes import closed_udp_port

A, CNAME, TXT, AAAA, OPT = 1, 5, 16, 28, 41

ZONE: dict[str, list[tuple[int, str]]] = {
    "svc.test": [(A, "192.0.2.10"), (AAAA, "2001:db8::10")],
    "v4.test": [(A, "192.0.2.4"), (A, "192.0.2.5")],
    "v6.test": [(AAAA, "2001:db8::6")],
    "www.test": [(CNAME, "edge.cdn.test")],
    "edge.cdn.test": [(CNAME, "host.cdn.test")],
    "host.cdn.test": [(A, "198.51.100.1"), (TXT, "not an address"), (AAAA, "2001:db8::1")],
    "text.test": [(TXT, "only text here")],
    "loop1.test": [(CNAME, "loop2.test")],
    "loop2.test": [(CNAME, "loop1.test")],
}


@dataclass(frozen=True)
class Query:
    name: str
    qtype: int
    do: bool  # the EDNS0 DO bit
    ad: bool  # the AD bit of the query
    transport: str


class Writer:
    """A DNS message with name compression (a suffix written once is pointed at after)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.names: dict[str, int] = {}

    def name(self, name: str) -> None:
        labels = name.split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            if suffix in self.names:
                self.buf += struct.pack("!H", 0xC000 | self.names[suffix])
                return
            self.names[suffix] = len(self.buf)
            self.buf += bytes([len(labels[i])]) + labels[i].encode()
        self.buf += b"\0"

    def record(self, owner: str, rtype: int, value: str) -> None:
        self.name(owner)
        if rtype == A:
            rdata = ipaddress.IPv4Address(value).packed
        elif rtype == AAAA:
            rdata = ipaddress.IPv6Address(value).packed
        elif rtype == TXT:
            rdata = bytes([len(value)]) + value.encode()
        else:  # CNAME: the target is compressed too, so its rdata is written in place
            self.buf += struct.pack("!HHIH", rtype, 1, 60, 0)
            start = len(self.buf)
            self.name(value)
            struct.pack_into("!H", self.buf, start - 2, len(self.buf) - start)
            return
        self.buf += struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


class DnsServer:
    """Answers A/AAAA queries from ``ZONE`` over UDP and TCP on 127.0.0.1.

    ``mode``: "answer", "silent" (never answers), "truncate" (UDP answers carry TC and nothing
    else), "servfail", "bad-pointer" (a well-addressed answer whose record name points at
    itself). ``noise``: None, "garbage" (a short datagram) or "wrong-id" (the answer with another
    id), sent before the answer. ``authenticated`` sets AD; ``partial`` answers a CNAME without
    following it."""

    def __init__(self) -> None:
        self.mode = "answer"
        self.noise: str | None = None
        self.authenticated = False
        self.partial = False
        self.queries: list[Query] = []
        self.udp, self.tcp = self._bind()
        self.port: int = self.udp.getsockname()[1]
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="test-dns", daemon=True)

    @staticmethod
    def _bind() -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on the same free port of 127.0.0.1."""
        while True:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(udp.getsockname())
            except OSError:  # the TCP port is taken: try another
                udp.close()
                tcp.close()
                continue
            tcp.listen()
            return udp, tcp

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(5)
        assert not self._thread.is_alive()
        for sock in (self.udp, self.tcp, self._wake_r, self._wake_w):
            sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.udp, selectors.EVENT_READ)
            sel.register(self.tcp, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(1.0):
                    if key.fileobj is self._wake_r:
                        continue
                    if key.fileobj is self.udp:
                        data, peer = self.udp.recvfrom(4096)
                        for reply in self.handle(data, "udp"):
                            self.udp.sendto(reply, peer)
                    else:
                        conn, _ = self.tcp.accept()
                        with conn:
                            conn.settimeout(2)
                            (n,) = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))
                            for reply in self.handle(conn.recv(n, socket.MSG_WAITALL), "tcp")[-1:]:
                                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def handle(self, data: bytes, transport: str) -> list[bytes]:
        """The datagrams to send back for one query."""
        ident, flags, _qd, _an, _ns, arcount = struct.unpack_from("!6H", data)
        pos, labels = 12, []
        while data[pos]:
            labels.append(data[pos + 1 : pos + 1 + data[pos]].decode())
            pos += 1 + data[pos]
        qname, (qtype, qclass) = ".".join(labels), struct.unpack_from("!HH", data, pos + 1)
        question = data[12 : pos + 5]
        pos += 5
        do = False
        for _ in range(arcount):  # the OPT record: root name, type 41, DO in the TTL
            rtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", data, pos + 1)
            do = do or (rtype == OPT and bool(ttl & 0x8000))
            pos += 11 + rdlen
        self.queries.append(Query(qname, qtype, do, bool(flags & 0x20), transport))
        reply = self.answer(ident, flags, qname, qtype, qclass, transport)
        assert reply[12 : 12 + len(question)].lower() == question.lower()
        noise = {
            "garbage": [b"\x13\x37garbage"],
            "wrong-id": [bytes([reply[0], reply[1] ^ 1]) + reply[2:]],
        }.get(self.noise or "", [])
        return noise + ([] if self.mode == "silent" else [reply])

    def answer(
        self, ident: int, flags: int, qname: str, qtype: int, qclass: int, transport: str
    ) -> bytes:
        flags = 0x8000 | 0x0080 | (flags & 0x0100) | (0x0020 if self.authenticated else 0)
        w = Writer()
        w.buf += struct.pack("!6H", ident, flags, 1, 0, 0, 0)
        w.name(qname.lower())
        w.buf += struct.pack("!HH", qtype, qclass)
        if self.mode == "servfail":
            struct.pack_into("!H", w.buf, 2, flags | 2)
            return bytes(w.buf)
        if self.mode == "truncate" and transport == "udp":
            struct.pack_into("!H", w.buf, 2, flags | 0x0200)
            return bytes(w.buf)
        if self.mode == "bad-pointer":
            struct.pack_into("!H", w.buf, 6, 1)
            at = len(w.buf)
            w.buf += struct.pack("!HHHIH", 0xC000 | at, A, 1, 60, 4) + bytes(4)
            return bytes(w.buf)
        answers, rcode = self.lookup(qname.lower(), qtype)
        for owner, rtype, value in answers:
            w.record(owner, rtype, value)
        struct.pack_into("!HH", w.buf, 2, flags | rcode, 1)
        struct.pack_into("!H", w.buf, 6, len(answers))
        return bytes(w.buf)

    def lookup(self, name: str, qtype: int) -> tuple[list[tuple[str, int, str]], int]:
        answers: list[tuple[str, int, str]] = []
        seen: set[str] = set()
        while name not in seen:
            seen.add(name)
            records = ZONE.get(name)
            if records is None:
                return answers, 3  # NXDOMAIN
            targets = [v for t, v in records if t == CNAME]
            if not targets:
                answers += [(name, t, v) for t, v in records if t in (qtype, TXT)]
                break
            answers.append((name, CNAME, targets[0]))
            if self.partial:
                break
            name = targets[0]
        return answers, 0


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as srv:
        yield srv


# --- the contract --------------------------------------------------------------------------------
class ResolverContract:
    """Subclasses provide ``resolver``; ``known`` is a name it resolves (and the addresses), and
    ``unknown`` a name it must refuse; None when the adapter cannot be given one offline."""

    known: tuple[str, list[str]] | None = ("svc.test", ["192.0.2.10", "2001:db8::10"])
    unknown: str | None = "missing.test"

    @pytest.fixture
    def resolver(self) -> Resolver:
        raise NotImplementedError

    def test_an_ipv4_literal_is_itself(self, resolver: Resolver) -> None:
        assert resolver.resolve("192.0.2.7", 8080) == [("192.0.2.7", 8080)]

    @pytest.mark.parametrize("literal", ["2001:db8::7", "[2001:db8::7]", "2001:DB8:0:0::7"])
    def test_an_ipv6_literal_is_itself(self, resolver: Resolver, literal: str) -> None:
        assert resolver.resolve(literal, 443) == [("2001:db8::7", 443)]

    @pytest.mark.parametrize("name", ["localhost", "LocalHost.", "app.localhost"])
    def test_localhost_is_the_loopback(self, resolver: Resolver, name: str) -> None:
        assert resolver.resolve(name, 5000) == [("127.0.0.1", 5000), ("::1", 5000)]

    @pytest.mark.parametrize("spelling", [str.lower, str.upper, lambda n: n + "."])
    def test_a_known_name_gives_its_addresses(self, resolver: Resolver, spelling: object) -> None:
        if self.known is None:
            pytest.skip("this adapter knows no name offline")
        name, addresses = self.known
        assert callable(spelling)
        assert resolver.resolve(spelling(name), 1234) == [(a, 1234) for a in addresses]

    def test_an_unknown_name_raises(self, resolver: Resolver) -> None:
        if self.unknown is None:
            pytest.skip("asking this adapter for an unknown name needs the network")
        with pytest.raises(ResolveError, match="does not exist"):
            resolver.resolve(self.unknown, 80)

    @pytest.mark.parametrize("bad", ["", "  ", ".", "a..test", "x" * 64 + ".test", "a b.test"])
    def test_a_malformed_name_raises(self, resolver: Resolver, bad: str) -> None:
        with pytest.raises(ResolveError, match="host name"):
            resolver.resolve(bad, 80)

    @pytest.mark.parametrize("port", [-1, 65536])
    def test_a_port_out_of_range_raises(self, resolver: Resolver, port: int) -> None:
        with pytest.raises(ResolveError, match="out of range"):
            resolver.resolve("127.0.0.1", port)


class TestMemoryResolver(ResolverContract):
    @pytest.fixture
    def resolver(self) -> MemoryResolver:
        return MemoryResolver({"SVC.test.": ["192.0.2.10", "2001:db8::10"]})

    def test_it_records_the_names_asked_but_not_literals(self, resolver: MemoryResolver) -> None:
        resolver.resolve("localhost", 1)
        resolver.resolve("10.0.0.1", 1)
        resolver.resolve("Svc.Test", 1)
        assert resolver.queries == ["svc.test"]


class TestSystemResolver(ResolverContract):
    known = None
    unknown = None

    @pytest.fixture
    def resolver(self) -> SystemResolver:
        return SystemResolver()


class TestDnsResolver(ResolverContract):
    @pytest.fixture
    def resolver(self, server: DnsServer) -> DnsResolver:
        return DnsResolver("127.0.0.1", server.port)


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
