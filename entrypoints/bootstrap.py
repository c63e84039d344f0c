"""The composition root: the only place that builds adapters and wires them to services."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Sequence
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
from application.ports import Clock, Crypto, Resolver
from application.repair import Repairer
from entrypoints.settings import GlobalSettings, OptionError

if TYPE_CHECKING:
    from adapters.fuse_runner import Replicated
    from adapters.metrics import MetricsServer, MountSource
    from adapters.secure_channel import ClientWire
    from adapters.view_plugins import Installed
    from adapters.ws_auth import AuthHost
    from adapters.ws_server import WsChainServer
    from application.auth import AuthKeys
    from application.chain_token import ChainSigner
    from application.compaction import Compactor
    from application.mount import Mounted
    from application.ports import RefusalRecord
    from application.ports.auth import AuthConnector
    from application.replication import RecoveryMode
    from application.views import ViewService


#: the auth service's log directory inside `serve --data-dir` (chains are NAME.log beside it)
AUTH_DIR = "auth"


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


#: fault injection for the crash tests (never set in normal use)
CRASH_ENV = "WASMER_DFS_COMPACT_CRASH_AT"
PAUSE_ENV = "WASMER_DFS_COMPACT_PAUSE_AT"


def fault_hook_from_env() -> Hook | None:
    """Fault injection for the crash tests, from the environment (never set in normal use):
    ``WASMER_DFS_COMPACT_CRASH_AT=step[:n]`` kills the process (SIGKILL) at that step of a
    compaction or repair (at its n-th record for ``copy``); ``WASMER_DFS_COMPACT_PAUSE_AT=
    step:seconds`` sleeps there."""
    crash = os.environ.get(CRASH_ENV, "")
    pause = os.environ.get(PAUSE_ENV, "")
    if not crash and not pause:
        return None
    crash_step, _, crash_n = crash.partition(":")
    pause_step, _, pause_s = pause.partition(":")

    def hook(step: str, n: int) -> None:
        if step == pause_step:
            time.sleep(float(pause_s or 1))
        if step == crash_step and (not crash_n or n >= int(crash_n)):
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def build_client_wire(url: str, level: int | None) -> ClientWire | None:
    """The wire encryption (``level`` bits; None: plain) for the chain server of ``url`` as
    typed: the known-servers file names the server by it, not by the address it resolves to."""
    if level is None:
        return None
    from adapters.secure_channel import ClientWire, server_name

    return ClientWire(level, name=server_name(url))


def build_crypto() -> Crypto:
    """The quantum-resistant primitives (ML-DSA, ML-KEM, AES-256-GCM, Argon2id)."""
    return PqCrypto()


def build_mount_service(log_path: Path) -> MountService:
    """Mounts of the chains whose logs are in ``log_path``, with the system clock (benchmarks)."""
    return bootstrap(log_path).mounts()


def build_resolver(settings: GlobalSettings) -> Resolver:
    """The resolver of --dns-server/--dns-sec (``OptionError`` when they cannot be used)."""
    from adapters.dns import make_resolver

    try:
        return make_resolver(settings.dns_server, settings.dns_sec)
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def build_dnssec_resolver(settings: GlobalSettings) -> Resolver:
    """A DNSSEC-validating resolver through --dns-server (which the caller made sure is given)."""
    from adapters.dns import make_resolver

    return make_resolver(settings.dns_server, True)


def build_clock(settings: GlobalSettings, resolver: Resolver | None = None) -> Clock:
    """The clock that stamps and judges events: NTP-synchronised with --ntp-pool (unless
    --no-ntp), else the system clock. ``resolver`` finds the pool (by default the one of
    --dns-server, built only when a pool is given; ``OptionError`` when it cannot be)."""
    from adapters.ntp import make_clock

    if settings.no_ntp or settings.ntp_pool is None:
        return SystemClock()
    if resolver is None:
        resolver = build_resolver(settings)
    return make_clock(False, settings.ntp_pool, settings.ntp_port, resolver)


def build_server(
    data_dir: Path,
    config: ServerConfig,
    host: str,
    port: int,
    clock: Clock | None = None,
    wire_encryption: int | None = None,
    store: str | None = None,
    replicas: int = 3,
    allow_anonymous: bool = True,
) -> WsChainServer:
    """The chain server: the file redo logs of ``data_dir`` (one per chain, the same adapter as
    a mount's), the real ML-DSA verifier, the system clock (or ``clock``: NTP), behind the
    websocket adapter, with its wire encryption keys from ``data_dir`` (created on first start;
    ``wire_encryption``: the least level every client must offer, None: plain clients too).
    ``ServerKeyError`` when the keys cannot be read or created. ``store``
    (``nats://H:P[,H:P...]``): the chains live in that JetStream cluster instead, in a stream of
    at least ``replicas`` replicas (ADR 0022); ``NatsRefused`` when the cluster will not do.
    ``allow_anonymous``: chains without a token may be created and written (ADR 0018)."""
    from adapters.secure_channel import ServerWire, load_server_keys
    from adapters.ws_server import WsChainServer
    from application.chain_access import ChainAccess

    wire = ServerWire(load_server_keys(data_dir), required=wire_encryption)
    if store is not None:
        from adapters.chain_store_nats import NatsChainStoreFactory, parse_servers
        from application.chain_store_host import StoreChainServer

        stores = NatsChainStoreFactory(parse_servers(store), replicas=replicas)
        shared = StoreChainServer(stores, build_crypto(), clock or SystemClock(), config)
        shared.access = ChainAccess(None, shared.crypto, allow_anonymous)  # no auth service yet
        return WsChainServer(shared, host, port, wire=wire)
    app = ChainServer(
        FileRedoLogFactory(data_dir.expanduser()), build_crypto(), clock or SystemClock(), config
    )
    auth = build_auth(data_dir, clock)
    app.access = ChainAccess(auth.service, app.crypto, allow_anonymous)
    return WsChainServer(app, host, port, wire=wire, auth=auth)


def build_auth(data_dir: Path, clock: Clock | None = None) -> AuthHost:
    """The auth service of ``serve`` (issue 14): its event log in ``data_dir/auth/`` (the file
    redo log, apart from the chains' logs), the real ML-DSA verifier, the system clock (or
    ``clock``). ``LogError`` when its log cannot be opened (e.g. another server holds it)."""
    from adapters.ws_auth import AuthHost
    from application.auth_server import AuthService

    logs = FileRedoLogFactory(data_dir.expanduser() / AUTH_DIR)
    return AuthHost(AuthService(logs, build_crypto(), clock or SystemClock()))


def build_auth_client(url: str) -> tuple[AuthConnector, AuthKeys]:
    """The `user`, `token` and `group` commands' way to the auth service at ``url`` (the
    websocket adapter) and the keys they make and open (the real algorithms, the default
    Argon2id cost for passwords and token passphrases)."""
    from adapters.ws_auth import WsAuthConnector
    from application.auth import AuthKeys

    return WsAuthConnector(url), AuthKeys(build_crypto())


def build_replica(
    mounted: Mounted,
    url: str,
    mode: RecoveryMode,
    clock_tolerance_ms: int | None = None,
    wire: ClientWire | None = None,
    refusals: RefusalRecord | None = None,
    signer: ChainSigner | None = None,
) -> Replicated:
    """A replicated mount's services: replication through the chain server at ``url`` (the
    websocket adapter; streamed events stamped more than ``clock_tolerance_ms`` ahead are
    refused), distributed locks through the same server, the kernel's caches. ``wire``: both
    connections encrypted (docs/adr/0013), never plain. ``refusals``: where a forged or forked
    history the replica refuses is recorded (``build_refusals``, docs/adr/0016). ``signer``: a
    token's, for a chain of a user or group (ADR 0018)."""
    from adapters.fuse_runner import Replicated
    from adapters.remote import FuseKernelCache, WsConnector
    from adapters.ws_locks import WsLockCoordinator
    from application.locks import LockService
    from application.replica_log import ReplicaLog
    from application.replication import ReplicationService

    session, fs = mounted.session, mounted.fs
    replication = ReplicationService(
        session, ReplicaLog(session), fs, WsConnector(url, wire=wire, signer=signer), mode,
        clock_tolerance_ms=clock_tolerance_ms, refusals=refusals,
    )  # fmt: skip
    coordinator = WsLockCoordinator(url, header=session.header.encode(), wire=wire, signer=signer)
    locks = LockService(coordinator, fs.inode_of, replication)
    return Replicated(replication, locks, FuseKernelCache(), coordinator.start)


def build_refusals(log_dir: Path, chain: str) -> RefusalRecord:
    """The record, beside the chain's log in ``log_dir``, of what the replica refused from its
    chain server (docs/adr/0016)."""
    from adapters.refusals import FileRefusalRecord

    return FileRefusalRecord(FileRedoLogFactory(log_dir).path(chain).with_suffix(".refused"))


def build_mount_metrics(host: str, port: int) -> tuple[MetricsServer, MountSource]:
    """``mount --metrics HOST:PORT``: prometheus_client's HTTP server, listening now, and the
    source its collector reads (the caller fills in the mount's stats and replication as they
    come up). ``OSError`` when it cannot listen."""
    from adapters.metrics import MetricsServer, MountCollector, MountSource

    source = MountSource()
    return MetricsServer(host, port, MountCollector(source)), source


def build_server_metrics(host: str, port: int, server: WsChainServer) -> MetricsServer:
    """``serve --metrics HOST:PORT``: the chain server's counters (``ChainServer.stats``) and
    open chains, served by prometheus_client. ``OSError`` when it cannot listen."""
    from adapters.metrics import MetricsServer, ServerCollector

    app = server.app
    return MetricsServer(host, port, ServerCollector(app.stats, lambda: len(app.hosts)))


def installed_views() -> list[Installed]:
    """The views of the ``wasmer_dfs.views`` entry-point group (``wasmer-dfs views``)."""
    from adapters.view_plugins import installed

    return installed()


def check_views(specs: Sequence[tuple[str, str | None]]) -> None:
    """``ViewPluginError`` when a view of ``--view`` is not installed (before anything mounts)."""
    from adapters.view_plugins import load

    for name, _ in specs:
        load(name)


def build_views(
    mounted: Mounted,
    *,
    replicated: Replicated | None = None,
    server: str | None = None,
    compactor: Compactor | None = None,
    read_only: bool = False,
    specs: Sequence[tuple[str, str | None]] = (),
) -> ViewService:
    """The emulated files of a mount: the built-in ``/.wasmer-dfs`` views with everything
    ``status`` shows (the server's URL, the compactor, read-only), and the views of ``--view
    NAME[=ARG]`` (found through their entry points, their data stored in the chain through
    ``ChainViewStore``). ``ViewPluginError`` when one cannot be built."""
    from adapters.view_plugins import build
    from application.ports.views import ViewContext
    from application.views.builtin import default_views
    from application.views.service import VIEWS_DIR
    from application.views.store import ChainViewStore

    fs = mounted.fs
    context = ViewContext(functools.partial(ChainViewStore, fs), fs.clock, read_only)
    extra = [(v.place or (VIEWS_DIR, v.name), v) for v in build(specs, context)]
    return default_views(
        fs, fs.stats, server=server, compactor=compactor, read_only=read_only, extra=extra,
        as_of=mounted.as_of, remote=replicated.replication if replicated is not None else None,
        locks=replicated.locks if replicated is not None else None,
    )  # fmt: skip
