"""The composition root: the only place that builds adapters and wires them to services."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from dependency_injector import containers, providers

from adapters.clock import SystemClock
from adapters.crypto import PqCrypto
from adapters.redolog import FileRedoLogFactory
from adapters.system import disk_space
from application.chain_server import ChainServer, ServerConfig
from application.compaction import Hook
from application.mount import MountService
from application.ports import Clock
from application.repair import Repairer

if TYPE_CHECKING:
    from adapters.fuse_runner import Replicated
    from adapters.secure_channel import ClientWire
    from adapters.ws_server import WsChainServer
    from application.mount import Mounted
    from application.ports import RefusalRecord
    from application.replication import RecoveryMode


class Container(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    clock = providers.Singleton(SystemClock)
    crypto = providers.Singleton(PqCrypto)
    log_dir = providers.Callable(Path, config.log_path)
    logs = providers.Singleton(FileRedoLogFactory, log_dir)
    space = providers.Callable(functools.partial, disk_space, log_dir)
    hook: providers.Object[Hook | None] = providers.Object(None)
    mounts = providers.Factory(
        MountService, logs=logs, crypto=crypto, clock=clock, space=space, hook=hook
    )
    repairer = providers.Factory(Repairer, logs=logs, crypto=crypto, clock=clock, hook=hook)


def bootstrap(log_path: Path, hook: Hook | None = None, clock: Clock | None = None) -> Container:
    """``hook`` observes every step of compaction and repair (tests inject crashes with it);
    ``clock`` replaces the system clock (an NTP-synchronised one, adapters/ntp.py)."""
    container = Container()
    container.config.from_dict({"log_path": str(log_path)})
    container.hook.override(providers.Object(hook))
    if clock is not None:
        container.clock.override(providers.Object(clock))
    container.check_dependencies()
    return container


def build_server(
    data_dir: Path,
    config: ServerConfig,
    host: str,
    port: int,
    clock: Clock | None = None,
    wire_encryption: int | None = None,
) -> WsChainServer:
    """The chain server: the file redo logs of ``data_dir`` (one per chain, the same adapter as
    a mount's), the real ML-DSA verifier, the system clock (or ``clock``: NTP), behind the
    websocket adapter, with its wire encryption keys from ``data_dir`` (created on first start;
    ``wire_encryption``: the least level every client must offer, None: plain clients too).
    ``ServerKeyError`` when the keys cannot be read or created."""
    from adapters.secure_channel import ServerWire, load_server_keys
    from adapters.ws_server import WsChainServer

    wire = ServerWire(load_server_keys(data_dir), required=wire_encryption)
    app = ChainServer(
        FileRedoLogFactory(data_dir.expanduser()), PqCrypto(), clock or SystemClock(), config
    )
    return WsChainServer(app, host, port, wire=wire)


def build_replica(
    mounted: Mounted,
    url: str,
    mode: RecoveryMode,
    clock_tolerance_ms: int | None = None,
    wire: ClientWire | None = None,
    refusals: RefusalRecord | None = None,
) -> Replicated:
    """A replicated mount's services: replication through the chain server at ``url`` (the
    websocket adapter; streamed events stamped more than ``clock_tolerance_ms`` ahead are
    refused), distributed locks through the same server, the kernel's caches. ``wire``: both
    connections encrypted (docs/adr/0013), never plain. ``refusals``: where a forged or forked
    history the replica refuses is recorded (``build_refusals``, docs/adr/0016)."""
    from adapters.fuse_runner import Replicated
    from adapters.remote import FuseKernelCache, WsConnector
    from adapters.ws_locks import WsLockCoordinator
    from application.locks import LockService
    from application.replica_log import ReplicaLog
    from application.replication import ReplicationService

    session, fs = mounted.session, mounted.fs
    replication = ReplicationService(
        session, ReplicaLog(session), fs, WsConnector(url, wire=wire), mode,
        clock_tolerance_ms=clock_tolerance_ms, refusals=refusals,
    )  # fmt: skip
    coordinator = WsLockCoordinator(url, header=session.header.encode(), wire=wire)
    locks = LockService(coordinator, fs.inode_of, replication)
    return Replicated(replication, locks, FuseKernelCache(), coordinator.start)


def build_refusals(log_dir: Path, chain: str) -> RefusalRecord:
    """The record, beside the chain's log in ``log_dir``, of what the replica refused from its
    chain server (docs/adr/0016)."""
    from adapters.refusals import FileRefusalRecord

    return FileRefusalRecord(FileRedoLogFactory(log_dir).path(chain).with_suffix(".refused"))
