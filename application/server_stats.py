"""What a chain server has done, counted: connections, chains, commits, bytes, lock waits.

One ``ServerStats`` per ``ChainServer`` (``ChainServer.stats``); the server's connections
(``Peer``) count into it as they go. Readers (the Prometheus exporter of ``serve --metrics``)
read the fields at any moment: plain integers, updated from the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ServerStats:
    #: connections that said Hello or tried to, since the start
    connections_opened: int = 0
    connections_closed: int = 0
    chains_created: int = 0
    #: transactions stored (appended to a chain's log)
    commits: int = 0
    #: transactions refused (validation, a read-only server, a full disk)
    commits_refused: int = 0
    #: records (events and seals) of the stored transactions
    events: int = 0
    #: bytes of the stored records (metadata and data as they travelled)
    bytes_committed: int = 0
    #: lock, unlock, test and cancel requests received
    lock_requests: int = 0
    #: lock requests that could not be answered at once (a conflicting holder, the grace period)
    lock_waits: int = 0

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self.connections_opened - self.connections_closed
