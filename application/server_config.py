"""The chain server's settings (``ServerConfig``): limits told to clients, timeouts, whether it
creates chains or is read-only, the protocol versions it speaks and the lock settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from application.lock_server import LockConfig
from domain.wire import PROTOCOL_VERSIONS, ServerLimits


@dataclass(frozen=True, slots=True)
class ServerConfig:
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: a subscriber whose live stream lags the durable end by more than this is disconnected
    max_lag_bytes: int = 64 * 1024 * 1024
    #: seconds a single frame may take to leave before the client counts as too slow
    send_timeout: float = 30.0
    #: seconds a new connection has to send its Hello
    hello_timeout: float = 10.0
    #: whether a client may create a chain (header + genesis) on this server
    create_chains: bool = True
    #: serve history and live events, but refuse every commit
    read_only: bool = False
    versions: tuple[int, ...] = PROTOCOL_VERSIONS
    #: leases, grace period and limits of distributed locks (docs/adr/0010)
    locks: LockConfig = field(default_factory=LockConfig)

    @property
    def welcome_limits(self) -> ServerLimits:
        """The limits told in ``Welcome`` (with the lock lease)."""
        return msgspec.structs.replace(
            self.limits, lock_lease_ms=max(1, round(self.locks.lease * 1000))
        )
