"""Live fan-out between chain servers over a shared store (docs/adr/0022): a ``StoreFollower``
per chain hosted over a ``ChainStore`` takes in what other servers append to it. The store's
``watch`` wakes it (a JetStream subject's messages, from the NATS client's thread), and it also
looks every ``poll`` seconds (a wake lost while the connection to the cluster was down); then the
host ``pull``s off the loop, ``absorb``s on it and ``made_durable`` wakes its subscribers exactly
as a local commit does."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from application.chain_store_host import StoreHost
from application.ports.chain_store import StoreError

_log = logging.getLogger("wasmer_dfs.server")


class StoreFollower:
    def __init__(self, host: StoreHost, poll: float = 1.0) -> None:
        self.host = host
        self.poll = poll
        loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()

        def wake() -> None:  # any thread; the loop may be gone at shutdown
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._kick.set)

        host.store.watch(wake)
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        host = self.host
        while host.broken is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await asyncio.to_thread(host.pull)
            except StoreError as exc:
                _log.warning("chain %r: the store did not answer: %s", host.name, exc)
                continue
            if host.absorb():
                host.made_durable(host.committed_end)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
