"""systemd's readiness protocol (sd_notify(3)) in a few lines of socket code: one datagram of
``KEY=VALUE`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
an abstract socket). Without ``$NOTIFY_SOCKET`` (not started by systemd as Type=notify) nothing
is sent."""

from __future__ import annotations

import os
import socket

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``); True when it was sent. Never raises:
    a service must not fail because its supervisor cannot be told."""
    where = (os.environ if environ is None else environ).get(NOTIFY_SOCKET)
    if not where or where[0] not in "/@":
        return False
    address = "\0" + where[1:] if where.startswith("@") else where
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
