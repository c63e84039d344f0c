"""A tiny SNTP server on 127.0.0.1 whose clock runs ahead or behind by a chosen offset, for the
clock contract (tests/contract/test_clock_contract.py) and the SNTP client's tests
(tests/test_ntp.py); no internet needed."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time

NS = 1_000_000_000
MS = 1_000_000
HOUR = 3600 * NS
YEAR = 365 * 86400 * NS
NTP_UNIX_DELTA = 2_208_988_800


def ntp_timestamp(unix_ns: int) -> int:
    """Written out again here rather than imported, so that a mistake is not made twice."""
    seconds, rest = divmod(unix_ns, NS)
    return (((seconds + NTP_UNIX_DELTA) & 0xFFFF_FFFF) << 32) | ((rest << 32) // NS)


class SntpServer:
    """An SNTP server on 127.0.0.1 whose clock is the system's plus ``offset_ns``.

    ``mode``: "answer", "silent", "kiss" (stratum 0, "RATE"), "alarm" (leap indicator 3),
    "stratum16", "client-mode", "version2", "no-time" (transmit timestamp 0), "backwards"
    (transmit before receive). ``noise``: None, "short" (a 20-byte datagram) or "wrong-origin"
    (the answer to another request), sent before the answer. ``hold`` seconds pass between
    receiving a request and stamping it (a slow path from client to server)."""

    def __init__(self, offset_ns: int = 0, mode: str = "answer") -> None:
        self.offset_ns = offset_ns
        self.mode = mode
        self.noise: str | None = None
        self.hold = 0.0
        self.requests: list[bytes] = []
        self._received = threading.Condition()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="test-sntp", daemon=True)

    def __enter__(self) -> SntpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(5)
        assert not self._thread.is_alive()
        for sock in (self.sock, self._wake_r, self._wake_w):
            sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(1.0):
                    if key.fileobj is self.sock:
                        data, peer = self.sock.recvfrom(1024)
                        for reply in self.handle(data):
                            self.sock.sendto(reply, peer)

    def wait_for(self, n: int) -> int:
        """The number of requests received once there are ``n`` (or after 5 s)."""
        with self._received:
            self._received.wait_for(lambda: len(self.requests) >= n, timeout=5)
            return len(self.requests)

    def handle(self, request: bytes) -> list[bytes]:
        """The datagrams to send back for one request."""
        time.sleep(self.hold)
        received = time.time_ns() + self.offset_ns
        with self._received:
            self.requests.append(request)
            self._received.notify_all()
        (origin,) = struct.unpack_from("!Q", request, 40)
        reply = self.answer(origin, received)
        noise = {
            "short": [b"\x24" + bytes(19)],
            "wrong-origin": [self.answer(origin ^ 1, received)],
        }.get(self.noise or "", [])
        return noise + ([] if self.mode == "silent" else [reply])

    def answer(self, origin: int, received: int) -> bytes:
        leap, version, mode, stratum, ref = 0, 4, 4, 2, b"TEST"
        if self.mode == "kiss":
            stratum, ref = 0, b"RATE"
        elif self.mode == "alarm":
            leap = 3
        elif self.mode == "stratum16":
            stratum = 16
        elif self.mode == "client-mode":
            mode = 3
        elif self.mode == "version2":
            version = 2
        transmitted = time.time_ns() + self.offset_ns
        receive, transmit = ntp_timestamp(received), ntp_timestamp(transmitted)
        if self.mode == "no-time":
            transmit = 0
        elif self.mode == "backwards":
            receive, transmit = transmit + (1 << 32), receive
        return struct.pack(
            "!BBbbII4sQQQQ",
            (leap << 6) | (version << 3) | mode,
            stratum,
            6,
            -20,
            0,
            0,
            ref,
            receive,
            origin,
            receive,
            transmit,
        )
