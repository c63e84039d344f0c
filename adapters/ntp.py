"""A clock set by NTP: a small SNTP v4 client (RFC 4330) of our own.

``NtpClock.sync()`` asks the pool's servers for the time over UDP and keeps the offset between
their clock and the local one; ``now_ms``/``now_ns`` are then the local clock plus that offset
and never touch the network, so they are safe on the event loop. ``sync()`` blocks (up to
``attempts * timeout``): call it at start-up or from a thread (``asyncio.to_thread``) to
re-synchronise. See ADR 0011.
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from adapters.clock import SystemClock
from adapters.dns import SystemResolver
from application.ports import Clock, ResolveError, Resolver

log = logging.getLogger("wasmer_dfs.clock")

DEFAULT_PORT = 123
#: seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01)
NTP_UNIX_DELTA = 2_208_988_800
ERA_SECONDS = 1 << 32
NS = 1_000_000_000

#: LI/VN/mode, stratum, poll, precision, root delay, root dispersion, reference id,
#: reference, originate, receive and transmit timestamps (RFC 4330 §4)
PACKET = struct.Struct("!BBbbII4sQQQQ")
MODE_CLIENT = 3
MODE_SERVER = 4
VERSION = 4
LI_ALARM = 3


class ClockSyncError(Exception):
    """No NTP server gave a usable time; the message is meant for a human."""


class _Failed(Exception):
    """One exchange with one server failed (the reason is the message)."""


class _KissOfDeath(_Failed):
    """The server told us to go away (stratum 0): do not ask it again in this sync."""


def to_ntp(unix_ns: int) -> int:
    """Unix nanoseconds as a 64-bit NTP timestamp (seconds modulo the era, 32-bit fraction)."""
    seconds, rest = divmod(unix_ns, NS)
    return (((seconds + NTP_UNIX_DELTA) % ERA_SECONDS) << 32) | ((rest << 32) // NS)


def from_ntp(timestamp: int, near_ns: int) -> int:
    """A 64-bit NTP timestamp as Unix nanoseconds, in the era (136 years) that puts it nearest
    to ``near_ns``: right across the 2036 roll-over as long as the local clock is within 68
    years of the truth."""
    seconds, fraction = timestamp >> 32, timestamp & 0xFFFF_FFFF
    near = near_ns // NS + NTP_UNIX_DELTA
    era = (near - seconds + ERA_SECONDS // 2) // ERA_SECONDS
    unix_seconds = seconds + era * ERA_SECONDS - NTP_UNIX_DELTA
    return unix_seconds * NS + ((fraction * NS) >> 32)


@dataclass(frozen=True, slots=True)
class Sample:
    """One exchange: the server's clock minus ours, and the round trip on the network."""

    offset_ns: int
    delay_ns: int


class NtpClock(Clock):
    """The ``base`` clock (the system's by default) plus the offset measured by ``sync()``.

    Until the first successful ``sync()`` the offset is 0."""

    def __init__(
        self,
        pool: str,
        port: int = DEFAULT_PORT,
        resolver: Resolver | None = None,
        *,
        timeout: float = 1.0,
        attempts: int = 3,
        base: Clock | None = None,
    ) -> None:
        self.pool = pool
        self.port = port
        self.resolver = resolver if resolver is not None else SystemResolver()
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.base = base if base is not None else SystemClock()
        self._sample: Sample | None = None  # replaced whole, so readers on other threads are safe

    # -- Clock ------------------------------------------------------------------------------------
    def now_ns(self) -> int:
        return self.base.now_ns() + self.offset_ns

    def now_ms(self) -> int:
        return self.now_ns() // 1_000_000

    def monotonic(self) -> float:
        return self.base.monotonic()

    # -- synchronisation --------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return self._sample is not None

    @property
    def offset_ns(self) -> int:
        """The server's clock minus the base clock, as last measured (0 before any sync)."""
        sample = self._sample
        return sample.offset_ns if sample is not None else 0

    @property
    def delay_ns(self) -> int | None:
        """The round trip of the last successful exchange: the offset is right within half of
        it (None before any sync)."""
        sample = self._sample
        return sample.delay_ns if sample is not None else None

    @property
    def where(self) -> str:
        return f"{self.pool}:{self.port}"

    def sync(self) -> int:
        """Ask the pool for the time (blocking; up to ``attempts`` exchanges, one server after
        the other) and return the new offset in nanoseconds. ``ClockSyncError`` when no
        server answered usefully; the previous offset then stays."""
        try:
            addresses = self.resolver.resolve(self.pool, self.port)
        except ResolveError as exc:
            raise ClockSyncError(f"cannot find the NTP server {self.where}: {exc}") from None
        failures: list[str] = []
        for attempt in range(self.attempts):
            if not addresses:
                break
            address = addresses[attempt % len(addresses)]
            try:
                sample = self._exchange(address)
            except _KissOfDeath as exc:
                failures.append(f"{_show(address)}: {exc}")
                addresses = [a for a in addresses if a != address]
                continue
            except _Failed as exc:
                failures.append(f"{_show(address)}: {exc}")
                continue
            self._sample = sample
            log.debug(
                "NTP %s: offset %+.3f ms, round trip %.3f ms",
                _show(address),
                sample.offset_ns / 1e6,
                sample.delay_ns / 1e6,
            )
            return sample.offset_ns
        raise ClockSyncError(
            f"cannot synchronise the clock with the NTP server {self.where}: " + "; ".join(failures)
        )

    def _exchange(self, address: tuple[str, int]) -> Sample:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        cookie = secrets.randbits(64) | 1
        # RFC 4330 §5: the transmit timestamp comes back as the originate timestamp. A random
        # one (as RFC 9109 clients do) tells the real answer from a forged or stale one and says
        # nothing about our clock; t0 stays here.
        request = PACKET.pack(
            (VERSION << 3) | MODE_CLIENT, 0, 0, 0, 0, 0, b"\0" * 4, 0, 0, 0, cookie
        )
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect(address)  # the kernel drops datagrams from anyone else
                t0 = self.base.now_ns()
                m0 = time.monotonic_ns()
                sock.send(request)
                reply, m3 = self._receive(sock, cookie, m0)
        except OSError as exc:
            raise _Failed(f"unreachable ({exc.strerror or exc})") from None
        # t3 by the monotonic clock, so that a step of the wall clock mid-exchange does no harm
        t3 = t0 + (m3 - m0)
        return self._sample_of(reply, t0, t3)

    def _receive(self, sock: socket.socket, cookie: int, m0: int) -> tuple[bytes, int]:
        """The first datagram that answers our request, and when it came (monotonic ns)."""
        deadline = m0 + int(self.timeout * NS)
        ignored = 0
        while (remaining := deadline - time.monotonic_ns()) > 0:
            sock.settimeout(remaining / NS)
            try:
                data = sock.recv(1024)
            except TimeoutError:
                break
            m3 = time.monotonic_ns()
            if len(data) >= PACKET.size and PACKET.unpack_from(data)[8] == cookie:
                return data, m3
            ignored += 1
        note = f" ({ignored} unrelated datagram(s) ignored)" if ignored else ""
        raise _Failed(f"no answer within {self.timeout:g} s{note}")

    @staticmethod
    def _sample_of(reply: bytes, t0: int, t3: int) -> Sample:
        """Check an answer (RFC 4330 §5) and compute offset and delay from t0..t3."""
        first, stratum, _, _, _, _, ref_id, _, _, receive, transmit = PACKET.unpack_from(reply)
        leap, version, mode = first >> 6, (first >> 3) & 7, first & 7
        if mode != MODE_SERVER:
            raise _Failed(f"the answer is not a server's (mode {mode})")
        if version not in (3, 4):
            raise _Failed(f"the answer is NTP version {version}, not 3 or 4")
        if stratum == 0:
            code = ref_id.rstrip(b"\0").decode("ascii", "replace")
            raise _KissOfDeath(f"the server refused us (kiss-o'-death {code!r})")
        if leap == LI_ALARM or stratum > 15:
            raise _Failed("the server's own clock is not synchronised")
        if transmit == 0 or receive == 0:
            raise _Failed("the answer carries no time")
        t1 = from_ntp(receive, t0)
        t2 = from_ntp(transmit, t0)
        if t2 < t1:
            raise _Failed("the server says it answered before it received the request")
        offset = ((t1 - t0) + (t2 - t3)) // 2
        delay = max(0, (t3 - t0) - (t2 - t1))
        return Sample(offset, delay)


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_clock(
    no_ntp: bool,
    pool: str | None,
    port: int | None,
    resolver: Resolver | None = None,
    *,
    timeout: float = 1.0,
) -> Clock:
    """The clock for ``--no-ntp``/``--ntp-pool``/``--ntp-port``: the system clock with
    ``--no-ntp`` or without a pool; else an ``NtpClock`` synchronised once (blocking), or the
    system clock with a warning in the log when the pool cannot be reached."""
    if no_ntp or pool is None:
        return SystemClock()
    clock = NtpClock(pool, port if port is not None else DEFAULT_PORT, resolver, timeout=timeout)
    try:
        clock.sync()
    except ClockSyncError as exc:
        log.warning("%s; events are stamped by the local clock", exc)
        return SystemClock()
    log.info("clock synchronised with %s (offset %+.3f ms)", clock.where, clock.offset_ns / 1e6)
    return clock
