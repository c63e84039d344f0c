"""Replicas of one chain driven directly, without the kernel: each a session, a file-system
service and a ``ReplicationService`` on an in-process chain server (tests/server, tests/contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapters.redolog import FileRedoLogFactory
from adapters.remote import WsConnector, fetch_header
from application.filesystem import FileSystemService
from application.mount import Mounted, MountRequest, MountService
from application.ports import Clock, RemoteConnector
from application.replica_log import ReplicaLog
from application.replication import RecoveryMode, ReplicationService
from application.session import Formats
from domain.fs.model import ROOT_INO
from tests.fakes import FAST_KDF, FastCrypto

PASSCODE = b"replication service"


@dataclass
class Replica:
    logdir: Path
    mounted: Mounted
    service: ReplicationService
    task: asyncio.Task[None]

    @property
    def fs(self) -> FileSystemService:
        return self.mounted.fs

    def read(self, name: bytes) -> bytes:
        attr = self.fs.lookup(ROOT_INO, name)
        fh = self.fs.open(attr.ino)
        try:
            return self.fs.read(fh, 0, attr.size + 1)
        finally:
            self.fs.release(fh)

    def write(self, name: bytes, data: bytes, offset: int = 0) -> None:
        try:
            ino = self.fs.lookup(ROOT_INO, name).ino
            fh = self.fs.open(ino)
        except Exception:
            fh, _ = self.fs.create(ROOT_INO, name, stat.S_IFREG | 0o644, 0, 0)
        try:
            self.fs.write(fh, offset, data)
        finally:
            self.fs.release(fh)

    async def stop(self) -> None:
        await self.service.stop()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.mounted.close()


@dataclass
class Rig:
    tmp: Path
    url: str
    replicas: list[Replica] = field(default_factory=list)

    async def replica(
        self,
        name: str,
        *,
        connector: Callable[[str], RemoteConnector] = WsConnector,
        batch: int | None = None,
        checkpoint: bool = True,
        clock: Clock | None = None,
        clock_tolerance_ms: int | None = None,
    ) -> Replica:
        logdir = self.tmp / name
        logdir.mkdir(exist_ok=True)
        logs = FileRedoLogFactory(logdir)
        header = None if logs.exists("local") else await fetch_header(self.url)
        from adapters.clock import SystemClock

        request = MountRequest(
            "local", PASSCODE, Formats(), 0, 0, kdf=FAST_KDF, remote=True, replica_header=header,
            use_checkpoint=checkpoint,
        )  # fmt: skip
        mounted = MountService(logs, FastCrypto(), clock or SystemClock()).open(request)
        service = ReplicationService(
            mounted.session, ReplicaLog(mounted.session), mounted.fs, connector(self.url),
            RecoveryMode.ASYNC, clock_tolerance_ms=clock_tolerance_ms,
        )  # fmt: skip
        if batch is not None:
            service.UPLOAD_BATCH_BYTES = batch
        replica = Replica(logdir, mounted, service, asyncio.create_task(service.run()))
        self.replicas.append(replica)
        assert await service.wait_synced(30), service.state.last_error
        return replica


async def settled(replicas: Sequence[Replica], timeout: float = 30.0) -> None:
    """Every local change confirmed and every replica at the same server position."""
    async with asyncio.timeout(timeout):
        while True:
            for r in replicas:
                r.fs.flush_all()
                r.mounted.session.commit()
            cursors = {r.service.replica.remote_cursor for r in replicas}
            if len(cursors) == 1 and all(r.service.replica.pending == 0 for r in replicas):
                return
            await asyncio.sleep(0.02)
