"""Name resolution: the system's resolver and a small DNS client of our own (the in-memory twin,
``MemoryResolver``, is in adapters/memory/names.py).

``DnsResolver`` asks one DNS server (``--dns-server``) for the A and AAAA records of a name over
UDP (RFC 1035), falls back to TCP when the answer is truncated, follows CNAME chains and reads
compressed names. With ``dnssec=True`` (``--dns-sec``) it sets the DO bit in an EDNS0 OPT record
(RFC 6891) and the AD bit in the query (RFC 6840 §5.7) and accepts only answers whose AD flag
says that the server validated them: the server must be a validating resolver on a trusted path
(this client checks no signature itself). See ADR 0011.

Every resolver here answers IP literals and ``localhost`` without asking anyone, and refuses a
malformed host name before any query.
"""

from __future__ import annotations

import abc
import ipaddress
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from application.ports import ResolveError, Resolver

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1

FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_AD = 0x0020
EDNS_DO = 0x8000  # in the OPT record's TTL field
RCODE_NXDOMAIN = 3

#: the EDNS0 UDP payload size we announce (the DNS flag day 2020 value)
UDP_PAYLOAD = 1232
MAX_CNAME_HOPS = 16
DEFAULT_PORT = 53

HEADER = struct.Struct("!6H")
QUESTION_TAIL = struct.Struct("!2H")
RR_TAIL = struct.Struct("!2HIH")
U16 = struct.Struct("!H")

RCODES = {
    1: "FORMERR (the server could not read the query)",
    2: "SERVFAIL (the server failed; a validating server also says so when a signature is bad)",
    4: "NOTIMP (the server does not support this query)",
    5: "REFUSED (the server refuses to answer us)",
}
TYPE_NAMES = {TYPE_A: "A", TYPE_AAAA: "AAAA"}


# --- host names ----------------------------------------------------------------------------------
def literal_addresses(host: str, port: int) -> list[tuple[str, int]] | None:
    """The addresses of an IP literal (``[::1]`` too) or of ``localhost`` (RFC 6761), else None."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return [(str(ip), port)]
    lowered = name.lower().removesuffix(".")
    if lowered == "localhost" or lowered.endswith(".localhost"):
        return [("127.0.0.1", port), ("::1", port)]
    return None


def host_name(host: str) -> str:
    """``host`` as the lower-case ASCII name to look up (IDNA for other scripts), without the
    trailing dot; ``ResolveError`` when it cannot be a DNS name."""
    name = host.strip().removesuffix(".")
    if not name:
        raise ResolveError("the host name is empty")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ResolveError(f"{host!r} is not a valid host name") from None
    labels = ascii_name.split(".")
    if (
        len(ascii_name) > 253
        or any(not 0 < len(label) <= 63 for label in labels)
        or any(not 33 <= ord(c) < 127 for c in ascii_name)
    ):
        raise ResolveError(f"{host!r} is not a valid host name")
    return ascii_name.lower()


def check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ResolveError(f"port {port} is out of range (0 to 65535)")


class NameResolver(Resolver):
    """What every resolver here does first: check the port, answer IP literals and ``localhost``
    itself, and turn the host into the name to look up (``resolve_name``)."""

    def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        check_port(port)
        literal = literal_addresses(host, port)
        if literal is not None:
            return literal
        return self.resolve_name(host_name(host), host, port)

    @abc.abstractmethod
    def resolve_name(self, name: str, host: str, port: int) -> list[tuple[str, int]]:
        """The addresses of ``name`` (``host`` as given, for messages)."""


# --- the system's resolver -----------------------------------------------------------------------
class SystemResolver(NameResolver):
    """``getaddrinfo``: /etc/hosts, the system's DNS servers and search domains."""

    def resolve_name(self, name: str, host: str, port: int) -> list[tuple[str, int]]:
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ResolveError(f"cannot resolve {host!r}: {reason}") from None
        found = [
            (str(info[4][0]), port)
            for info in infos
            if info[0] in (socket.AF_INET, socket.AF_INET6)
        ]
        if not found:
            raise ResolveError(f"{host!r} has no IPv4 or IPv6 address")
        return list(dict.fromkeys(found))


# --- the DNS wire format -------------------------------------------------------------------------
class MalformedAnswer(Exception):
    """The bytes are not a well-formed DNS message."""


def encode_name(name: str) -> bytes:
    """Labels of an (already checked) ASCII name, uncompressed."""
    return b"".join(bytes([len(x)]) + x for x in name.encode("ascii").split(b".")) + b"\0"


def build_query(ident: int, name: str, qtype: int, dnssec: bool) -> bytes:
    """A recursive query with an EDNS0 OPT record (DO and AD set when ``dnssec``)."""
    flags = FLAG_RD | (FLAG_AD if dnssec else 0)
    header = HEADER.pack(ident, flags, 1, 0, 0, 1)
    question = encode_name(name) + QUESTION_TAIL.pack(qtype, CLASS_IN)
    opt = b"\0" + RR_TAIL.pack(TYPE_OPT, UDP_PAYLOAD, EDNS_DO if dnssec else 0, 0)
    return header + question + opt


def read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """The (lower-case) name at ``offset`` and the offset just after it where it is written.

    Compression pointers (RFC 1035 §4.1.4) must each point before the previous one, so that a
    hostile message cannot make us loop."""
    labels: list[bytes] = []
    pos, end, limit, size = offset, -1, offset, 0
    while True:
        if pos >= len(msg):
            raise MalformedAnswer("a name runs past the end of the message")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise MalformedAnswer("a compression pointer runs past the end of the message")
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if target >= limit:
                raise MalformedAnswer("a compression pointer does not point backwards")
            if end < 0:
                end = pos + 2
            pos = limit = target
            continue
        if length & 0xC0:
            raise MalformedAnswer(f"unknown label type {length >> 6}")
        pos += 1
        if length == 0:
            break
        if pos + length > len(msg):
            raise MalformedAnswer("a label runs past the end of the message")
        size += length + 1
        if size > 255:
            raise MalformedAnswer("a name is longer than 255 bytes")
        labels.append(msg[pos : pos + length].lower())
        pos += length
    return b".".join(labels).decode("latin-1"), (end if end >= 0 else pos)


@dataclass(frozen=True, slots=True)
class Record:
    owner: str
    rtype: int
    value: str  # an address for A/AAAA, the target name for CNAME


@dataclass(frozen=True, slots=True)
class Reply:
    flags: int
    rcode: int
    answers: list[Record]

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def authenticated(self) -> bool:
        return bool(self.flags & FLAG_AD)


def matches(msg: bytes, ident: int, name: str, qtype: int) -> bool:
    """Whether ``msg`` is a reply to our query (its id and its question); anything else is
    dropped as stale or forged."""
    if len(msg) < HEADER.size:
        return False
    rid, flags, qdcount = HEADER.unpack_from(msg)[:3]
    if rid != ident or not flags & FLAG_QR:
        return False
    if qdcount == 0:  # FORMERR and the like may come without the question
        return bool(flags & 0xF != 0)
    try:
        qname, pos = read_name(msg, HEADER.size)
        qt, qc = QUESTION_TAIL.unpack_from(msg, pos)
    except (MalformedAnswer, struct.error):
        return False
    return bool(qdcount == 1 and qname == name and qt == qtype and qc == CLASS_IN)


def parse_reply(msg: bytes) -> Reply:
    """The flags, the rcode and the A, AAAA and CNAME records of the answer section."""
    try:
        _, flags, qdcount, ancount = HEADER.unpack_from(msg)[:4]
        pos = HEADER.size
        for _ in range(qdcount):
            pos = read_name(msg, pos)[1] + QUESTION_TAIL.size
        answers: list[Record] = []
        for _ in range(ancount):
            owner, pos = read_name(msg, pos)
            rtype, rclass, _ttl, rdlen = RR_TAIL.unpack_from(msg, pos)
            pos += RR_TAIL.size
            rdata = msg[pos : pos + rdlen]
            if len(rdata) != rdlen:
                raise MalformedAnswer("a record runs past the end of the message")
            if rclass == CLASS_IN:
                if rtype == TYPE_A and rdlen == 4:
                    answers.append(Record(owner, rtype, socket.inet_ntop(socket.AF_INET, rdata)))
                elif rtype == TYPE_AAAA and rdlen == 16:
                    answers.append(Record(owner, rtype, socket.inet_ntop(socket.AF_INET6, rdata)))
                elif rtype == TYPE_CNAME:
                    target, after = read_name(msg, pos)
                    if after > pos + rdlen:
                        raise MalformedAnswer("a CNAME runs past its record")
                    answers.append(Record(owner, rtype, target))
                elif rtype in (TYPE_A, TYPE_AAAA):
                    raise MalformedAnswer(f"an address record of {rdlen} bytes")
            pos += rdlen
    except struct.error:
        raise MalformedAnswer("the message is cut short") from None
    return Reply(flags, flags & 0xF, answers)


def follow(answers: Sequence[Record], name: str, qtype: int) -> tuple[list[str], str, int]:
    """The addresses of ``name`` after its CNAME chain, the name the chain ends at, and the
    number of CNAME hops taken."""
    cnames = {r.owner: r.value for r in answers if r.rtype == TYPE_CNAME}
    current, hops = name, 0
    while current in cnames:
        current = cnames[current]
        hops += 1
        if hops > MAX_CNAME_HOPS:
            raise ResolveError(f"the CNAME chain of {name!r} loops or is too long")
    return [r.value for r in answers if r.owner == current and r.rtype == qtype], current, hops


# --- the DNS client ------------------------------------------------------------------------------
class DnsResolver(NameResolver):
    """Asks one DNS server (an IP address) for A and AAAA records; IPv4 addresses come first."""

    def __init__(
        self,
        server: str,
        port: int = DEFAULT_PORT,
        *,
        dnssec: bool = False,
        timeout: float = 2.0,
        attempts: int = 2,
    ) -> None:
        try:
            ip = ipaddress.ip_address(server.strip().removeprefix("[").removesuffix("]"))
        except ValueError:
            raise ValueError(f"the DNS server must be an IP address, not {server!r}") from None
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"the DNS server's port {port} is out of range (1 to 65535)")
        self.server = (str(ip), port)
        self.family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.dnssec = dnssec
        self.timeout = timeout
        self.attempts = max(1, attempts)

    @property
    def where(self) -> str:
        host, port = self.server
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"

    def resolve_name(self, name: str, host: str, port: int) -> list[tuple[str, int]]:
        found = self._lookup(name, TYPE_A, 0) + self._lookup(name, TYPE_AAAA, 0)
        if not found:
            raise ResolveError(f"{host!r} has no address (no A or AAAA record at {self.where})")
        return [(a, port) for a in dict.fromkeys(found)]

    def _lookup(self, name: str, qtype: int, hops: int) -> list[str]:
        reply = self._ask(name, qtype)
        if reply.rcode not in (0, RCODE_NXDOMAIN):
            what = RCODES.get(reply.rcode, f"rcode {reply.rcode}")
            raise ResolveError(f"the DNS server {self.where} answered {what} for {name!r}")
        if self.dnssec and not reply.authenticated:
            raise ResolveError(
                f"the answer is not DNSSEC-validated: {self.where} did not set the AD flag for "
                f"{name!r} (--dns-sec needs a validating resolver)"
            )
        if reply.rcode == RCODE_NXDOMAIN:
            raise ResolveError(f"{name!r} does not exist (NXDOMAIN from {self.where})")
        addresses, end, taken = follow(reply.answers, name, qtype)
        if addresses or end == name:
            return addresses
        # the chain leaves the server's answer: ask for where it ends
        if hops + taken >= MAX_CNAME_HOPS:
            raise ResolveError(f"the CNAME chain of {name!r} loops or is too long")
        return self._lookup(end, qtype, hops + taken)

    def _ask(self, name: str, qtype: int) -> Reply:
        what = f"{TYPE_NAMES[qtype]} {name!r}"
        failures: list[str] = []
        for _ in range(self.attempts):
            ident = secrets.randbits(16)
            query = build_query(ident, name, qtype, self.dnssec)
            try:
                msg = self._udp(query, ident, name, qtype)
                reply = parse_reply(msg)
                if reply.truncated:
                    msg = self._tcp(query, ident, name, qtype)
                    reply = parse_reply(msg)
            except TimeoutError as exc:
                failures.append(str(exc))
                continue
            except OSError as exc:
                raise ResolveError(
                    f"cannot reach the DNS server {self.where} for {what}: {exc.strerror or exc}"
                ) from None
            except MalformedAnswer as exc:
                raise ResolveError(
                    f"the DNS server {self.where} sent a malformed answer for {what}: {exc}"
                ) from None
            return reply
        raise ResolveError(f"cannot resolve {what}: " + "; ".join(dict.fromkeys(failures)))

    def _udp(self, query: bytes, ident: int, name: str, qtype: int) -> bytes:
        with socket.socket(self.family, socket.SOCK_DGRAM) as sock:
            sock.connect(self.server)  # the kernel drops datagrams from anyone else
            sock.send(query)
            deadline = time.monotonic() + self.timeout
            ignored = 0
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    msg = sock.recv(0xFFFF)
                except TimeoutError:
                    break
                if matches(msg, ident, name, qtype):
                    return msg
                ignored += 1
        note = f" ({ignored} unrelated datagram(s) ignored)" if ignored else ""
        raise TimeoutError(f"no answer from {self.where} within {self.timeout:g} s{note}")

    def _tcp(self, query: bytes, ident: int, name: str, qtype: int) -> bytes:
        """The truncated query again over TCP (RFC 7766): a two-byte length before each message."""
        with socket.create_connection(self.server, timeout=self.timeout) as sock:
            sock.sendall(U16.pack(len(query)) + query)
            (length,) = U16.unpack(_read_exactly(sock, U16.size))
            msg = _read_exactly(sock, length)
        if not matches(msg, ident, name, qtype):
            raise MalformedAnswer("the answer over TCP is not an answer to the query")
        return msg


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise MalformedAnswer("the server closed the TCP connection mid-answer")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# --- construction --------------------------------------------------------------------------------
def parse_server(server: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353`` -> (address, port)."""
    text = server.strip()
    try:
        return str(ipaddress.ip_address(text)), DEFAULT_PORT
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        host, port = text, str(DEFAULT_PORT)
    host = host.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise ValueError(
            f"the DNS server must be an IP address, optionally with a port, not {server!r}"
        ) from None


def make_resolver(server: str | None, dnssec: bool, *, timeout: float = 2.0) -> Resolver:
    """The resolver for ``--dns-server``/``--dns-sec``: the system's resolver when no server is
    given, else ``DnsResolver``. ``ValueError`` (a message for the user) when the server is not
    an IP address, or when DNSSEC is asked for without a server (the system resolver does not
    say whether an answer was validated)."""
    if server is None:
        if dnssec:
            raise ValueError("--dns-sec needs --dns-server (a validating DNS resolver)")
        return SystemResolver()
    host, port = parse_server(server)
    return DnsResolver(host, port, dnssec=dnssec, timeout=timeout)
