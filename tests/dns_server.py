"""A tiny DNS server on 127.0.0.1 answering from a fixed zone, for the resolver contract
(tests/contract/test_resolver_contract.py) and the DNS client's tests (tests/test_dns.py); no
internet needed."""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
import threading
from dataclasses import dataclass

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
