"""`wasmer-dfs mount`, step by step: the options checked into ``MountSettings``, the mount point,
the chain server found and asked for its header (a replica), the passcode, the log opened
(application/mount.py), then the FUSE runner until unmount. Each step maps what goes wrong to a
message and an exit code (entrypoints/console.py); the adapters come from the composition root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from application.mount import Configuration, Mounted, MountRequest, MountService
from application.ports import LogError
from application.replication import RecoveryMode
from domain.compaction import CompactMode, CompactPolicy
from domain.formats import Format
from domain.fs.model import FsError, IdMap
from domain.presets import Preset, PresetError
from domain.presets import settings as preset_settings
from entrypoints import bootstrap, daemon
from entrypoints.console import CANNOT_MOUNT, REFUSED, STOPPED, UNSAVED, USAGE, fail, say
from entrypoints.opening import compact_now, open_log
from entrypoints.passwords import passcode_of
from entrypoints.replica_server import Server, find_server
from entrypoints.settings import (
    LOCAL_CHAIN,
    GlobalSettings,
    OptionError,
    host_port,
    keep_history_ms,
)

if TYPE_CHECKING:
    from adapters.fuse_runner import Replicated
    from adapters.metrics import MountSource
    from application.views import ViewService

DEFAULT_LOG_PATH = Path("~/wasmer/fs")
#: replicas of remote chains, one directory per chain name (a local chain keeps the default)
DEFAULT_REMOTE_LOGS = Path("~/wasmer/fs/remote")
#: seconds a replica with a tree waits for the chain server before it mounts disconnected
FIRST_SYNC_WAIT = 10.0

_log = logging.getLogger("wasmer_dfs")


@dataclass(frozen=True, slots=True)
class MountSettings:
    """The options of one `wasmer-dfs mount`, checked (``mount_settings`` builds it)."""

    mount_path: Path
    #: ws://HOST:PORT/db/NAME (None: a local chain)
    remote: str | None
    log_path: Path | None
    compaction: CompactPolicy
    preset: Preset | None
    meta_format: Format | None
    data_format: Format | None
    recovery_mode: RecoveryMode
    passcode: str | None = None
    uid: int | None = None
    gid: int | None = None
    allow_other: bool = False
    allow_root: bool = False
    compact_now: bool = False
    impersonate_uid: bool = False
    non_empty: bool = False
    read_only: bool = False
    temp: bool = False
    write_back: bool = False
    no_auth: bool = False
    #: --passfile FILE / --extpass CMD: the passcode's first line from a file or a command
    passfile: Path | None = None
    extpass: str | None = None
    #: --background: return once mounted, the daemon logging to log_file (--log) or syslog
    background: bool = False
    log_file: Path | None = None
    #: --metrics HOST:PORT: where Prometheus scrapes the mount's metrics (None: nowhere)
    metrics: tuple[str, int] | None = None
    #: --view NAME[=ARG]: installed views turned on (docs/views.md)
    views: tuple[tuple[str, str | None], ...] = ()
    #: --group GROUP: with a token, the group's chain (ADR 0018; None: the token user's own)
    group: str | None = None

    @property
    def chain_name(self) -> str | None:
        """The chain's name on its server (None: a local chain)."""
        return None if self.remote is None else checked_chain_name(self.remote)

    @property
    def logs_dir(self) -> Path:
        """Where the log lives: --log-path, else the default of a local chain or a replica."""
        name = self.chain_name
        default = DEFAULT_LOG_PATH if name is None else DEFAULT_REMOTE_LOGS / name
        return (self.log_path or default).expanduser().resolve()


def mount_settings(
    mount_path: Path,
    remote: str | None,
    log_path: Path | None,
    *,
    compaction: tuple[CompactMode, float, int, int],
    keep_history: str = "0",
    preset: Preset | None,
    meta_format: str | None,
    data_format: str | None,
    recovery_mode: RecoveryMode,
    compact_now: bool,
    read_only: bool,
    passcode: str | None,
    uid: int | None,
    gid: int | None,
    allow_other: bool,
    allow_root: bool,
    impersonate_uid: bool,
    non_empty: bool,
    temp: bool,
    write_back: bool,
    no_auth: bool,
    metrics: str | None = None,
    views: Sequence[str] = (),
) -> MountSettings:
    """The options checked (exit 2 with the reason for one that cannot be used). A second
    positional without a URL scheme is the log path (a local-only mount)."""
    if remote is not None and "://" not in remote:
        if log_path is not None:
            fail(f"{remote!r} is not a URL (ws://HOST:PORT/db/NAME) and a log path is given too", 2)
        log_path, remote = Path(remote), None
    if preset is not None:
        try:
            preset_settings(preset)
        except PresetError as exc:
            fail(str(exc), USAGE)
    policy = _compact_policy(*compaction, keep_history=keep_history)
    if remote is not None:
        checked_chain_name(remote)  # exit 2 for a URL that names no chain
        # a replica compacts too (--compact-now, the policy): its compaction keeps the
        # bookkeeping with the server (docs/adr/0007, application/replica_compaction.py)
    if compact_now and read_only:
        fail("--compact-now rewrites the log: it cannot be combined with --read-only", USAGE)
    try:
        metrics_at = None if metrics is None else host_port(metrics, "--metrics")
    except OptionError as exc:
        fail(str(exc), USAGE)
    view_specs = _view_specs(views)
    return MountSettings(
        mount_path.expanduser(), remote, log_path, policy, preset,
        Format.parse(meta_format) if meta_format is not None else None,
        Format.parse(data_format) if data_format is not None else None,
        recovery_mode, passcode=passcode, uid=uid, gid=gid, allow_other=allow_other,
        allow_root=allow_root, compact_now=compact_now, impersonate_uid=impersonate_uid,
        non_empty=non_empty, read_only=read_only, temp=temp, write_back=write_back,
        no_auth=no_auth, metrics=metrics_at, views=view_specs,
    )  # fmt: skip


def _view_specs(views: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """--view NAME[=ARG] ...: each NAME installed (exit 2 with the reason otherwise)."""
    from adapters.view_plugins import ViewPluginError

    specs = []
    for spec in views:
        name, eq, arg = spec.partition("=")
        if not name:
            fail(f"--view {spec!r}: NAME[=ARG] expected", USAGE)
        specs.append((name, arg if eq else None))
    try:
        bootstrap.check_views(specs)
    except ViewPluginError as exc:
        fail(f"--view: {exc}", USAGE)
    return tuple(specs)


def _compact_policy(
    mode: CompactMode, factor: float, size: int, timer: int, *, keep_history: str = "0"
) -> CompactPolicy:
    try:
        history_ms = keep_history_ms(keep_history)
    except OptionError as exc:
        fail(str(exc), USAGE)
    if factor < 0:
        fail("--compact-threshold-factor must not be negative", USAGE)
    if size < 0:
        fail("--compact-threshold-size must not be negative", USAGE)
    if timer < 0:
        fail("--compact-timer must not be negative", USAGE)
    return CompactPolicy(mode, factor, size, float(timer), history_ms)


def checked_chain_name(url: str) -> str:
    """The chain name of ``ws://HOST:PORT/db/NAME`` (exit 2 with the reason otherwise)."""
    from urllib.parse import urlsplit

    from adapters.ws_client import chain_of as name_in

    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        fail(f"{url!r} is not a chain URL: expected ws://HOST:PORT/db/NAME", USAGE)
    try:
        name = name_in(url)
    except ValueError as exc:
        fail(f"{url!r} is not a chain URL ({exc}): expected ws://HOST:PORT/db/NAME", USAGE)
    if "/" in name or name in (".", "..") or "\0" in name:
        fail(f"{name!r} is not a chain name (no '/', not '.' or '..')", USAGE)
    return name


def _check_mount_point(s: MountSettings) -> Path:
    mnt = s.mount_path
    if not mnt.is_dir():
        fail(f"mount path {mnt} is not a directory", USAGE)
    if os.path.ismount(mnt):
        fail(f"{mnt} is already a mount point", USAGE)
    if not s.non_empty and any(mnt.iterdir()):
        fail(f"mount path {mnt} is not empty (use --non-empty to mount over it)", USAGE)
    return mnt


def _replica(s: MountSettings, mounted: Mounted, server: Server, logs_dir: Path) -> Replicated:
    """A replicated mount's services. A new replica has no tree before its first catch-up with
    the server, and a new chain exists only once the server holds it: both wait for that.
    Otherwise the mount waits a moment (in async mode not at all), then mounts disconnected."""
    from domain.fs.model import ROOT_INO

    tolerance = preset_settings(mounted.preset).tolerance_ms
    refusals = bootstrap.build_refusals(logs_dir, LOCAL_CHAIN)
    mode = s.recovery_mode
    replicated = bootstrap.build_replica(
        mounted, server.url, mode, tolerance, server.wire, refusals, server.signer
    )
    new = ROOT_INO not in mounted.fs.view.inodes or mounted.created
    replicated.wait_first_sync = new or mode is not RecoveryMode.ASYNC
    replicated.first_sync_timeout = None if new else FIRST_SYNC_WAIT
    return replicated


# --- the whole command ---------------------------------------------------------------------------
def mount_and_serve(s: MountSettings, g: GlobalSettings) -> None:
    """Mount, serve until unmounted (or SIGINT/SIGTERM), unmount."""
    from entrypoints.token_mount import choose_secret, token_mount

    # a token's mount (None: a passcode mount)
    tm = token_mount(
        g, name=s.chain_name, group=s.group, log_path=s.log_path, read_only=s.read_only,
        passcode_given=bool(s.passcode or s.passfile or s.extpass or s.no_auth),
        remote_logs=DEFAULT_REMOTE_LOGS, crypto=bootstrap.build_crypto(),
    )  # fmt: skip
    if tm is not None:
        s = dataclasses.replace(s, log_path=tm.log_path, read_only=tm.read_only)
    mnt = _check_mount_point(s)
    logs_dir = s.logs_dir
    logs_dir.mkdir(parents=True, exist_ok=True)
    if s.background and not daemon.is_daemon():  # the secret here (a prompt), the rest there
        no_secret = s.no_auth or g.no_auth
        creating_here = not (logs_dir / f"{LOCAL_CHAIN}.log").exists()
        secret = (
            None if no_secret else passcode_of(s.passcode, creating_here, s.passfile, s.extpass)
        ) if tm is None else None  # fmt: skip
        daemon.start(secret, s.log_file, logs_dir)
    daemon.begin(s.log_file, logs_dir)
    metrics = _metrics(s)  # in the daemon, not in a --background parent (which only waits)
    try:
        resolver = bootstrap.build_resolver(g)
    except OptionError as exc:
        fail(str(exc), USAGE)
    container = bootstrap.bootstrap(
        logs_dir, bootstrap.fault_hook_from_env(), clock=bootstrap.build_clock(g, resolver)
    )
    mounts = container.mounts()
    creating = not mounts.logs.exists(LOCAL_CHAIN)
    server = None
    if s.remote is not None:
        signer = None if tm is None else tm.signer
        server = find_server(s.remote, s.preset, g, mounts, resolver, creating, signer)
        creating = creating and server.header is None
    if tm is not None:
        header = None if creating or server is None else server.header
        if header is None and not creating and len(tm.secrets) > 1:
            header = mounts.logs.read_header(LOCAL_CHAIN)  # which epoch's key opens it
        secret = choose_secret(tm, header, mounts.crypto)
    else:
        secret = (
            None
            if (s.no_auth or g.no_auth)
            else passcode_of(s.passcode, creating, s.passfile, s.extpass)
        )
    mounted = open_log(mounts, _request(s, secret, server))
    if metrics is not None:
        metrics.stats = mounted.fs.stats
        metrics.compactor = mounted.compactor
    if s.compact_now and mounted.compactor is not None:
        compact_now(mounted)
    # The index and the tree are long-lived and hold no cycles: keep the cyclic collector from
    # walking them again and again while the file system serves.
    gc.collect()
    gc.freeze()
    # --uid/--gid: every file appears owned by them (as sshfs -o uid=,gid=); --impersonate-uid:
    # files of the file system's owner (global ids) appear as the mounting user's local ids.
    id_map = IdMap(
        uid=s.uid, gid=s.gid, local=(os.getuid(), os.getgid()) if s.impersonate_uid else None
    )
    if id_map.active:
        mounted.fs.id_map = id_map
    replicated = None if server is None else _replica(s, mounted, server, logs_dir)
    if metrics is not None and replicated is not None:
        metrics.replication = replicated.replication
    _serve(s, mnt, logs_dir, mounts, mounted, server, replicated, encrypted=secret is not None)


def _metrics(s: MountSettings) -> MountSource | None:
    """--metrics: prometheus_client's HTTP server listening before anything is opened (exit 2
    when it cannot); it serves until the process ends (a daemon thread)."""
    if s.metrics is None:
        return None
    host, port = s.metrics
    try:
        server, source = bootstrap.build_mount_metrics(host, port)
    except OSError as exc:
        fail(f"--metrics: cannot listen on {host}:{port}: {exc.strerror or exc}", USAGE)
    _log.info("metrics at http://%s:%d/metrics", host, server.port)
    return source


def _request(s: MountSettings, secret: bytes | None, server: Server | None) -> MountRequest:
    return MountRequest(
        chain=LOCAL_CHAIN,
        passcode=secret,
        formats=Configuration(s.preset, s.meta_format, s.data_format),
        uid=s.uid if s.uid is not None else os.getuid(),
        gid=s.gid if s.gid is not None else os.getgid(),
        read_only=s.read_only and server is None,  # a read-only replica still follows the server
        compaction=s.compaction,
        remote=server is not None,
        replica_header=None if server is None else server.header,
    )


def _views(
    s: MountSettings, mounted: Mounted, server: Server | None, replicated: Replicated | None
) -> ViewService:
    """The mount's emulated files: the built-in ones and those of --view (exit 2 when one of
    those cannot be built, e.g. its ARG is refused)."""
    from adapters.view_plugins import ViewPluginError

    try:
        return bootstrap.build_views(
            mounted, replicated=replicated, server=server.url if server else None,
            compactor=mounted.compactor, read_only=s.read_only, specs=s.views,
        )  # fmt: skip
    except ViewPluginError as exc:
        fail(f"--view: {exc}", USAGE)


def _serve(
    s: MountSettings,
    mnt: Path,
    logs_dir: Path,
    mounts: MountService,
    mounted: Mounted,
    server: Server | None,
    replicated: Replicated | None,
    *,
    encrypted: bool,
) -> None:
    """Run the FUSE file system until it is unmounted; close the log on every way out."""
    from adapters.fuse_runner import NotSynced, PrefixDamaged, fuse_options, run

    options = fuse_options(
        allow_other=s.allow_other,
        allow_root=s.allow_root,
        read_only=s.read_only,
        fsname=str(logs_dir),
    )

    def ready() -> None:
        kind = "encrypted" if encrypted else "unencrypted"
        where = f"{server.url}, replica: {logs_dir}" if server else f"log: {logs_dir}"
        say(f"mounted {kind} file system at {mnt} ({where})")
        daemon.mounted(str(mnt))  # systemd's READY=1; a background mount's parent returns

    unsaved: str | None = None  # buffered writes a full disk kept from being saved at unmount
    try:
        views = _views(s, mounted, server, replicated)
        run(
            mounted.fs,
            str(mnt),
            options,
            writeback=s.write_back,
            read_only=s.read_only,
            on_mounted=ready,
            compactor=mounted.compactor if s.compaction.mode is not CompactMode.NEVER else None,
            unchecked_until=mounted.unchecked_until,
            replicated=replicated,
            views=views,
        )
    except NotSynced as exc:
        if server is None:
            fail(f"{mnt} was not mounted: {exc}", STOPPED)
        fail(f"stopped before the replica caught up with {server.url}: {exc}", STOPPED)
    except PrefixDamaged as exc:
        mounted.save_checkpoint = False  # the next open reads the whole log, and refuses it
        mounted.close()
        with contextlib.suppress(OSError, LogError):
            mounts.logs.remove_checkpoint(LOCAL_CHAIN)
        fail(f"the mount was stopped: {exc}", REFUSED)
    except RuntimeError as exc:
        fail(f"cannot mount at {mnt}: {exc}", CANNOT_MOUNT)
    finally:
        try:
            mounted.close()
        except FsError as exc:
            unsaved = str(exc)
        if s.temp:
            mounts.logs.remove(LOCAL_CHAIN)
    if unsaved is not None:
        fail(f"unmounted {mnt}, but {unsaved}", UNSAVED)
    say(f"unmounted {mnt}")
