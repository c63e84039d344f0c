"""The chain server's logic over ports: chains hosted by name, each a redo log the server
validates every transaction into, and the protocol state of each client connection.

Synchronous and free of any event loop (ADR 0002): the websocket adapter
(``adapters/ws_server.py``) reads frames, calls a ``Peer``, sends what ``Peer.next_output``
hands it, runs ``ChainHost.sync`` off the loop and reports its end with ``made_durable``.

Its rooms: ``ChainServer`` here (the chains a server hosts, opened on first use, and their lock
tables); ``ServerConfig`` in application/server_config.py (re-exported here); the admission of a
transaction (``check_header``, ``ChainState``, ``Refused``, ``TransactionRefused``) in
application/chain_admission.py; one hosted chain (``ChainHost``) in application/chain_host.py;
one client connection (``Peer``) in application/server_peer.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from application.chain_admission import Refused
from application.chain_host import Appended, ChainHost
from application.lock_server import ChainLocks
from application.ports import Clock, Crypto, RedoLogFactory
from application.server_config import ServerConfig
from application.server_stats import ServerStats
from domain.wire import CommitRecord

if TYPE_CHECKING:
    from application.chain_access import ChainAccess

_log = logging.getLogger("wasmer_dfs.server")

__all__ = ["ChainServer", "ServerConfig"]


class ChainServer:
    """The chains a server hosts: opened on first use, closed when their last client leaves."""

    def __init__(
        self, logs: RedoLogFactory | None, crypto: Crypto, clock: Clock, config: ServerConfig
    ) -> None:
        #: the chains' redo logs (None: a subclass keeps its chains elsewhere and overrides
        #: ``load`` and ``create``, application/chain_store_host.py)
        self.logs = logs
        self.crypto = crypto
        self.clock = clock
        self.config = config
        self.hosts: dict[str, ChainHost] = {}
        self._users: dict[ChainHost, int] = {}
        #: lock state by chain name: it outlives the chain's host (a client's locks stay for
        #: its lease after its connection ended, even when nobody else uses the chain)
        self.locks: dict[str, ChainLocks] = {}
        #: after a (re)start, only reclaims are granted until then (ADR 0010)
        self.grace_until = clock.monotonic() + config.locks.grace_seconds
        #: what the server has done, counted (serve --metrics)
        self.stats = ServerStats()
        #: who may use which chain (user and group chains, ADR 0018; None: anyone, passcode
        #: chains only)
        self.access: ChainAccess | None = None

    def loaded(self, name: str) -> ChainHost | None:
        host = self.hosts.get(name)
        if host is not None and host.broken is not None:
            self._drop(name)
            return None
        return host

    def exists(self, name: str) -> bool:
        """Whether the chain exists (blocking)."""
        return self.logs is not None and self.logs.exists(name)

    def load(self, name: str) -> ChainHost | None:
        """Open the chain's log (blocking); register the host with ``adopt``."""
        assert self.logs is not None
        return ChainHost.open(self.logs, name, self.crypto, self.clock, self.config)

    def adopt(self, host: ChainHost) -> ChainHost:
        """Register a loaded host, unless another was registered meanwhile (then that one)."""
        current = self.loaded(host.name)
        if current is not None:
            host.close()
            return current
        self.hosts[host.name] = host
        return host

    def create(
        self, name: str, header_body: bytes, records: Sequence[CommitRecord]
    ) -> tuple[ChainHost, Appended]:
        if not self.config.create_chains:
            raise Refused("this server does not create chains")
        if self.config.read_only:
            raise Refused("the server is read-only: it creates no chains")
        assert self.logs is not None
        host, appended = ChainHost.create(
            self.logs, name, header_body, records, self.crypto, self.clock, self.config
        )
        self.hosts[name] = host
        self.stats.chains_created += 1
        _log.info("created chain %s (chain id %s)", name, host.header.chain_id.hex())
        return host, appended

    def attach(self, host: ChainHost) -> None:
        self._users[host] = self._users.get(host, 0) + 1

    def detach(self, host: ChainHost) -> bool:
        """One user of the chain left; True when it has none now (the adapter then makes it
        durable and calls ``close_host``)."""
        left = self._users.get(host, 0) - 1
        if left > 0:
            self._users[host] = left
            return False
        self._users.pop(host, None)
        return True

    def in_use(self, host: ChainHost) -> bool:
        return self._users.get(host, 0) > 0

    def close_host(self, host: ChainHost) -> None:
        """Close a chain nobody uses (a broken one is closed whoever still holds it)."""
        if self.in_use(host) and host.broken is None:
            return
        if self.hosts.get(host.name) is host:
            del self.hosts[host.name]
        host.close()

    # -- locks ---------------------------------------------------------------------------------
    def chain_locks(self, name: str) -> ChainLocks:
        state = self.locks.get(name)
        if state is None:

            def durable_end() -> int | None:
                host = self.hosts.get(name)
                return host.durable_end if host is not None and host.broken is None else None

            state = self.locks[name] = ChainLocks(
                self.clock, self.config.locks, grace_until=self.grace_until, durable_end=durable_end
            )
        return state

    def lock_tick(self) -> None:
        """Expire lock leases, end the grace period; forget the lock state of chains nobody
        holds a session of (called every fraction of a lease by the adapter)."""
        for name, state in list(self.locks.items()):
            state.tick()
            if state.empty:
                del self.locks[name]

    def _drop(self, name: str) -> None:
        host = self.hosts.pop(name, None)
        if host is not None:
            host.close()

    def close(self) -> None:
        for name in list(self.hosts):
            self._drop(name)
