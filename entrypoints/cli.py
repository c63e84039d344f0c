"""The `wasmer-dfs` command line: the manual's command tree (see ../shared/seed)."""

from __future__ import annotations

import contextlib
import enum
import gc
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from application.compaction import CompactionError, Hook
from application.mount import Configuration, Mounted, MountRequest, MountService
from application.ports import Clock, LogError, Resolver
from application.repair import Repairer
from application.session import Formats, SessionError
from domain.compaction import CompactMode as CompactPolicyMode
from domain.compaction import CompactPolicy
from domain.formats import Format
from domain.fs.model import FsError, IdMap
from domain.presets import Preset, PresetError, choose
from domain.presets import settings as preset_settings
from entrypoints.mount_guard import guarded

if TYPE_CHECKING:
    from adapters.secure_channel import ClientWire

VERSION = "wasmer-dfs 1.3 (python 0.1.0)"
PASSCODE_ENV = "WASMER_DFS_PASSCODE"
CRASH_ENV = "WASMER_DFS_COMPACT_CRASH_AT"
PAUSE_ENV = "WASMER_DFS_COMPACT_PAUSE_AT"
DEFAULT_LOG_PATH = Path("~/wasmer/fs")
#: replicas of remote chains, one directory per chain name (a local chain keeps the default)
DEFAULT_REMOTE_LOGS = Path("~/wasmer/fs/remote")
#: seconds a replica with a tree waits for the chain server before it mounts disconnected
FIRST_SYNC_WAIT = 10.0
LOCAL_CHAIN = "local"

app = typer.Typer(
    name="wasmer-dfs",
    help="ATE File System: an encrypted, distributed, event-sourced FUSE file system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: every option name in full, at any width
)
user_app = typer.Typer(
    help="Users are needed to access any remote file systems", no_args_is_help=True
)
group_app = typer.Typer(
    help="Groups are collections of users that share same remote file system",
    no_args_is_help=True,
    rich_markup_mode=None,
)
token_app = typer.Typer(
    help="Tokens are needed to mount file systems without prompting for credentials",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(user_app, name="user")
app.add_typer(group_app, name="group")
app.add_typer(token_app, name="token")


class _Globals:
    debug = False
    verbose = 0
    no_auth = False
    no_ntp = False
    ntp_pool: str | None = None
    ntp_port: int | None = None
    dns_server: str | None = None
    dns_sec = False
    wire_encryption: int | None = None


G = _Globals()


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"wasmer-dfs: error: {message}", err=True)
    raise typer.Exit(code)


def not_yet(what: str, issue: str) -> NoReturn:
    fail(f"{what} is not implemented yet (planned: {issue}); nothing was done.", 2)


def _version(value: bool) -> None:
    if value:
        typer.echo(VERSION)
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", "-d", help="Logs debug info to the console")] = False,
    dns_sec: Annotated[bool, typer.Option("--dns-sec", help="Use DNSSec rather than plain DNS: answers about the chain server's host must be DNSSEC-validated (needs --dns-server)")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", "-n", help="No authentication or passcode: the file system is NOT encrypted and anyone who reads its log reads its files")] = False,
    no_ntp: Annotated[bool, typer.Option("--no-ntp", help="Do not use NTP; the local clock stamps events")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Sets the level of log verbosity, can be used multiple times")] = 0,
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Prints version information")] = False,
    auth: Annotated[str | None, typer.Option("--auth", "-a", help="URL where the user is authenticated [default: ws://wasmer.sh/auth] (users and authentication: not yet, giving it is refused)")] = None,
    dns_server: Annotated[str | None, typer.Option("--dns-server", help="Address (IP[:PORT]) that DNS queries for the chain server's host will be sent to, e.g. 8.8.8.8 [default: the system's resolver]")] = None,
    ntp_pool: Annotated[str | None, typer.Option("--ntp-pool", help="NTP server address that the file-system will synchronize with")] = None,
    ntp_port: Annotated[int | None, typer.Option("--ntp-port", help="NTP server port that the file-system will synchronize with")] = None,
    token: Annotated[str | None, typer.Option("--token", "-t", help="Token used to access your encrypted file-system (users and tokens: not yet)")] = None,
    token_path: Annotated[str | None, typer.Option("--token-path", help="Token file to read that holds a previously created token (not yet)")] = None,
    wire_encryption: Annotated[int | None, typer.Option("--wire-encryption", help="Quantum resistant wire encryption with remote chains: 128, 192 or 256 (ML-KEM-512/768/1024 + AES-256-GCM; the server's key is pinned in ~/.config/wasmer-dfs/known_servers; never falls back to plain)")] = None,
) -> None:  # fmt: skip
    """ATE File System: an encrypted, distributed, event-sourced FUSE file system."""
    G.debug, G.verbose, G.no_auth = debug, verbose, no_auth
    G.no_ntp, G.ntp_pool, G.ntp_port = no_ntp, ntp_pool, ntp_port
    G.dns_server, G.dns_sec = dns_server, dns_sec
    if ntp_port is not None and not 0 < ntp_port < 65536:
        fail("--ntp-port must be 1 to 65535", 2)
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="wasmer-dfs: %(levelname)s: %(name)s: %(message)s")
    if wire_encryption is not None and wire_encryption not in (128, 192, 256):
        fail("--wire-encryption must be 128, 192 or 256", 2)
    G.wire_encryption = wire_encryption
    if token is not None or token_path is not None:
        not_yet("authentication with tokens", "users, groups and tokens")
    if auth is not None:
        not_yet(f"authentication at {auth} (--auth)", "users, groups and tokens")


# --- mount -------------------------------------------------------------------------------------
class CompactMode(enum.StrEnum):
    never = "never"
    modified = "modified"
    timer = "timer"
    factor = "factor"
    size = "size"
    factor_or_timer = "factor-or-timer"
    size_or_timer = "size-or-timer"


class ConfiguredFor(enum.StrEnum):
    raw = "raw"
    barebone = "barebone"
    speed = "speed"
    compatibility = "compatibility"
    balanced = "balanced"
    security = "security"


class FormatName(enum.StrEnum):
    bincode = "bincode"
    json = "json"
    mpack = "mpack"


class RecoveryMode(enum.StrEnum):
    async_ = "async"
    readonly_async = "readonly-async"
    readonly_sync = "readonly-sync"
    sync = "sync"


def _passcode(given: str | None, creating: bool) -> bytes:
    if given is not None:
        return given.encode()
    env = os.environ.get(PASSCODE_ENV)
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        fail(
            f"a passcode is needed: give --passcode, set {PASSCODE_ENV}, run interactively,"
            " or use --no-auth for an unencrypted file system",
            2,
        )
    value = typer.prompt("Passcode", hide_input=True, confirmation_prompt=creating)
    return str(value).encode()


def _split_positionals(remote: str | None, log_path: Path | None) -> tuple[str | None, Path | None]:
    """A second positional without a URL scheme is the log path (a local-only mount)."""
    if remote is not None and "://" not in remote:
        if log_path is not None:
            fail(f"{remote!r} is not a URL (ws://HOST:PORT/db/NAME) and a log path is given too", 2)
        return None, Path(remote)
    return remote, log_path


def _chain_of(url: str) -> str:
    """The chain name of ``ws://HOST:PORT/db/NAME`` (exit 2 with the reason otherwise)."""
    from urllib.parse import urlsplit

    from adapters.ws_client import chain_of

    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        fail(f"{url!r} is not a chain URL: expected ws://HOST:PORT/db/NAME", 2)
    try:
        name = chain_of(url)
    except ValueError as exc:
        fail(f"{url!r} is not a chain URL ({exc}): expected ws://HOST:PORT/db/NAME", 2)
    if "/" in name or name in (".", "..") or "\0" in name:
        fail(f"{name!r} is not a chain name (no '/', not '.' or '..')", 2)
    return name


def _resolver() -> Resolver:
    from adapters.dns import make_resolver

    try:
        return make_resolver(G.dns_server, G.dns_sec)
    except ValueError as exc:
        fail(str(exc), 2)


def _clock(resolver: Resolver) -> Clock:
    """The clock that stamps events: NTP-synchronised with --ntp-pool (unless --no-ntp)."""
    from adapters.ntp import make_clock

    return make_clock(G.no_ntp, G.ntp_pool, G.ntp_port, resolver)


def _resolved(url: str, resolver: Resolver) -> str:
    """``url`` with its host name replaced by an address from ``resolver`` (the DNS port)."""
    from urllib.parse import urlsplit, urlunsplit

    from application.ports import ResolveError

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        addr = resolver.resolve(host, port)[0][0]
    except ResolveError as exc:
        fail(f"cannot resolve {host!r}: {exc}", 3)
    if addr == host:
        return url
    netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _explicit_preset(configured_for: ConfiguredFor | None) -> Preset | None:
    """The preset given with --configured-for (exit 2 for one refused: raw)."""
    if configured_for is None:
        return None
    preset = Preset(configured_for.value)
    try:
        preset_settings(preset)
    except PresetError as exc:
        fail(str(exc), 2)
    return preset


def _wants_dnssec(mounts: MountService, explicit: Preset | None, header: bytes | None) -> bool:
    """Whether the preset of this mount (explicit, or recorded in the local log's header or in
    the server's ``header``) resolves the chain server's host with DNSSEC (security)."""
    try:
        preset, _ = choose(explicit, mounts.recorded_preset(LOCAL_CHAIN, header))
    except (PresetError, SessionError, LogError) as exc:
        fail(str(exc), 3)
    return preset_settings(preset).dnssec


def _server_resolver(url: str, resolver: Resolver, dnssec: bool) -> Resolver:
    """The resolver for the chain server's host: the global one, or a DNSSEC-validating one when
    the preset asks for DNSSEC (exit 2 when it cannot: no --dns-server for a host name)."""
    import ipaddress
    from urllib.parse import urlsplit

    from adapters.dns import make_resolver

    if not dnssec or G.dns_sec:
        return resolver
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return resolver  # an address: no DNS query is made, nothing to validate
    if host == "localhost" or host.endswith(".localhost"):
        return resolver  # the loopback (RFC 6761): answered without a query
    if G.dns_server is None:
        fail(
            f"--configured-for security resolves the chain server's host {host!r} with DNSSEC,"
            " which needs --dns-server (a validating DNS resolver reached over a trusted path;"
            " the system's resolver does not say whether an answer was validated): give"
            " --dns-server, the server's IP address, or another preset",
            2,
        )
    return make_resolver(G.dns_server, True)


def _client_wire(url: str) -> ClientWire | None:
    """The wire encryption of --wire-encryption for the chain server of ``url`` (as typed: the
    known-servers file names the server by it, not by the address it resolves to)."""
    if G.wire_encryption is None:
        return None
    from adapters.secure_channel import ClientWire, server_name

    return ClientWire(G.wire_encryption, name=server_name(url))


def _check_wire(url: str, wire: ClientWire) -> None:
    """One encrypted handshake with the server of an existing replica before mounting: a server
    that refuses the wire encryption, or a changed key, stops the mount (exit 3) rather than
    leaving it disconnected; an unreachable server does not (the mount starts disconnected)."""
    import asyncio

    from adapters.remote import fetch_header
    from application.ports import RemoteError, RemoteRefused

    try:
        asyncio.run(fetch_header(url, wire=wire))
    except RemoteRefused as exc:
        fail(f"the chain server refused: {exc}", 3)
    except RemoteError as exc:
        logging.getLogger("wasmer_dfs").warning("%s", exc)


def _server_header(url: str, wire: ClientWire | None = None) -> bytes | None:
    """The chain's header from the server, for a replica without a local log (None: the server
    does not hold the chain, this mount creates it). Retries with back-off until the server
    answers; exits when it refuses."""
    import asyncio

    from adapters.remote import fetch_header
    from application.ports import RemoteError, RemoteRefused

    delay = 0.2
    while True:
        try:
            return asyncio.run(fetch_header(url, wire=wire))
        except RemoteRefused as exc:
            fail(f"the chain server refused: {exc}", 3)
        except RemoteError as exc:
            logging.getLogger("wasmer_dfs").warning("%s (retrying in %.1f s)", exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _compact_policy(mode: CompactMode, factor: float, size: int, timer: int) -> CompactPolicy:
    if factor < 0:
        fail("--compact-threshold-factor must not be negative", 2)
    if size < 0:
        fail("--compact-threshold-size must not be negative", 2)
    if timer < 0:
        fail("--compact-timer must not be negative", 2)
    return CompactPolicy(CompactPolicyMode(mode.value), factor, size, float(timer))


def fault_hook() -> Hook | None:
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


def _compact_now(mounted: Mounted) -> None:
    from entrypoints.progress import ProgressBar

    assert mounted.compactor is not None
    with ProgressBar("compacting") as bar:
        mounted.compactor.progress = bar
        try:
            r = mounted.compactor.compact()
        except (SessionError, LogError, CompactionError) as exc:
            mounted.close()
            fail(f"compaction failed (the log is unchanged): {exc}", 3)
        finally:
            mounted.compactor.progress = lambda phase, done, total: None
    typer.echo(
        f"wasmer-dfs: compacted the log from {r.before} to {r.after} bytes"
        f" ({r.kept} of {r.events} events kept) in {r.seconds:.2f} s",
        err=True,
    )


@app.command()
@guarded  # patched pyfuse3 or exit 4; a stop before mounting exits 5, never a traceback
def mount(
    mount_path: Annotated[Path, typer.Argument(help="Path to directory that the file system will be mounted at")],
    remote: Annotated[str | None, typer.Argument(help="URL where the data is remotely stored on a distributed commit log (e.g. ws://wasmer.sh/db/myfs). If this URL is not specified then data will only be stored locally")] = None,
    log_path: Annotated[Path | None, typer.Argument(help="(Optional) Location of the local persistent redo log (default ~/wasmer/fs)")] = None,
    allow_other: Annotated[bool, typer.Option("--allow-other", help="Allow other users on the machine to have access to this file system")] = False,
    allow_root: Annotated[bool, typer.Option("--allow-root", help="Allow the root user to have access to this file system")] = False,
    compact_now: Annotated[bool, typer.Option("--compact-now", help="Forces the compaction of the local redo-log before it streams in the latest values")] = False,
    impersonate_uid: Annotated[bool, typer.Option("--impersonate-uid", "-i", help="For files and directories the authenticated user owns, show the local machine ids instead of the global ones (without users: the global ids are the owner of the root directory)")] = False,
    non_empty: Annotated[bool, typer.Option("--non-empty", help="Allow fuse filesystem mount on a non-empty directory, default is not allowed")] = False,
    read_only: Annotated[bool, typer.Option("--read-only", "-r", help="Mount the file system in readonly mode (`ro` mount option)")] = False,
    temp: Annotated[bool, typer.Option("--temp", help="Local redo log file will be deleted when the file system is unmounted")] = False,
    write_back: Annotated[bool, typer.Option("--write-back", "-w", help="Enable write back cache for buffered writes")] = False,
    compact_mode: Annotated[CompactMode, typer.Option("--compact-mode", help="Mode that the compaction will run under")] = CompactMode.factor_or_timer,
    compact_threshold_factor: Annotated[float, typer.Option("--compact-threshold-factor", help="Factor growth in the log file which will trigger compaction")] = 0.4,
    compact_threshold_size: Annotated[int, typer.Option("--compact-threshold-size", help="Size of growth in bytes in the log file which will trigger compaction")] = 104857600,
    compact_timer: Annotated[int, typer.Option("--compact-timer", help="Time in seconds between compactions of the log file")] = 3600,
    configured_for: Annotated[ConfiguredFor | None, typer.Option("--configured-for", help="Configure the log file for barebone, speed, compatibility, balanced or security: formats, clock tolerance, DNSSEC (docs/adr/0014; raw is refused) [default: the preset the chain was created with, else speed]")] = None,
    data_format: Annotated[FormatName | None, typer.Option("--data-format", help="Format of the data in the log file [default: the preset's]")] = None,
    gid: Annotated[int | None, typer.Option("--gid", "-g", help="GID of the group that this file system will be mounted as: every file appears owned by this group (like sshfs -o gid=)")] = None,
    meta_format: Annotated[FormatName | None, typer.Option("--meta-format", help="Format of the metadata in the log file [default: the preset's]")] = None,
    passcode: Annotated[str | None, typer.Option("--passcode", "-p", help=f"Passcode that encrypts this file system (also ${PASSCODE_ENV}, or a prompt)")] = None,
    recovery_mode: Annotated[RecoveryMode, typer.Option("--recovery-mode", help="How the file-system reacts while nominal and while recovering from a communication failure")] = RecoveryMode.readonly_async,
    uid: Annotated[int | None, typer.Option("--uid", "-u", help="UID of the user that this file system will be mounted as: every file appears owned by this user (like sshfs -o uid=)")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", "-n", help="Same as the global --no-auth: an UNENCRYPTED file system")] = False,
) -> None:  # fmt: skip
    """Mounts a local or remote file system (runs until unmounted, SIGINT or SIGTERM)."""
    from adapters.fuse_runner import NotSynced, PrefixDamaged, fuse_options, run
    from application.ports import LogError
    from entrypoints.bootstrap import bootstrap

    remote, log_path = _split_positionals(remote, log_path)
    explicit = _explicit_preset(configured_for)
    policy = _compact_policy(
        compact_mode, compact_threshold_factor, compact_threshold_size, compact_timer
    )
    chain_name = None
    if remote is not None:
        chain_name = _chain_of(remote)
        if compact_now:
            not_yet("--compact-now on a replicated mount", "compaction of replicas")
        # A replica's log positions are its bookkeeping with the server (docs/adr/0009):
        # compacting it is not supported yet, so it never runs on its own.
        policy = CompactPolicy(CompactPolicyMode.NEVER)
    if compact_now and read_only:
        fail("--compact-now rewrites the log: it cannot be combined with --read-only", 2)
    mnt = mount_path.expanduser()
    if not mnt.is_dir():
        fail(f"mount path {mnt} is not a directory", 2)
    if os.path.ismount(mnt):
        fail(f"{mnt} is already a mount point", 2)
    if not non_empty and any(mnt.iterdir()):
        fail(f"mount path {mnt} is not empty (use --non-empty to mount over it)", 2)
    default_logs = DEFAULT_LOG_PATH if chain_name is None else DEFAULT_REMOTE_LOGS / chain_name
    logs_dir = (log_path or default_logs).expanduser().resolve()
    logs_dir.mkdir(parents=True, exist_ok=True)
    resolver = _resolver()
    container = bootstrap(logs_dir, fault_hook(), clock=_clock(resolver))
    mounts = container.mounts()
    creating = not mounts.logs.exists(LOCAL_CHAIN)
    replica_header = None
    wire = None
    if remote is not None:
        url = remote
        wire = _client_wire(url)
        dnssec = _wants_dnssec(mounts, explicit, None)
        remote = _resolved(url, _server_resolver(url, resolver, dnssec))
        if wire is not None and not creating:
            _check_wire(remote, wire)
        if creating:
            replica_header = _server_header(remote, wire)
            creating = replica_header is None
            if not dnssec and _wants_dnssec(mounts, explicit, replica_header):
                # the chain was created --configured-for security: find its server with DNSSEC
                # from now on (the header itself is checked against the passcode)
                remote = _resolved(url, _server_resolver(url, resolver, True))
    secret = None if (no_auth or G.no_auth) else _passcode(passcode, creating)
    request = MountRequest(
        chain=LOCAL_CHAIN,
        passcode=secret,
        formats=Configuration(
            explicit,
            Format.parse(meta_format.value) if meta_format is not None else None,
            Format.parse(data_format.value) if data_format is not None else None,
        ),
        uid=uid if uid is not None else os.getuid(),
        gid=gid if gid is not None else os.getgid(),
        read_only=read_only and remote is None,  # a read-only replica still follows the server
        compaction=policy,
        remote=remote is not None,
        replica_header=replica_header,
    )
    try:
        mounted = mounts.open(request)
    except (SessionError, LogError) as exc:
        fail(str(exc), 3)
    if mounted.preset_warning:
        typer.echo(f"wasmer-dfs: warning: {mounted.preset_warning}", err=True)
    if mounted.cut_bytes:
        cut_from = mounted.session.log.open_report.cut_from
        logging.getLogger("wasmer_dfs").warning(
            "the log ended in a torn transaction (writes that were never made durable):"
            " %d bytes cut, offsets %d to %d",
            mounted.cut_bytes,
            cut_from,
            cut_from + mounted.cut_bytes,
        )
    if mounted.from_checkpoint:
        logging.getLogger("wasmer_dfs").info(
            "state loaded from the checkpoint; %d transactions replayed after it",
            mounted.transactions,
        )
    else:
        logging.getLogger("wasmer_dfs").info("%d transactions replayed", mounted.transactions)
    if compact_now and mounted.compactor is not None:
        _compact_now(mounted)
        mounted.unchecked_until = None  # the compaction read every record of the old log
    # The index and the tree are long-lived and hold no cycles: keep the cyclic collector from
    # walking them again and again while the file system serves.
    gc.collect()
    gc.freeze()
    # --uid/--gid: every file appears owned by them (as sshfs -o uid=,gid=); --impersonate-uid:
    # files of the file system's owner (global ids) appear as the mounting user's local ids.
    id_map = IdMap(uid=uid, gid=gid, local=(os.getuid(), os.getgid()) if impersonate_uid else None)
    if id_map.active:
        mounted.fs.id_map = id_map
    options = fuse_options(
        allow_other=allow_other, allow_root=allow_root, read_only=read_only, fsname=str(logs_dir)
    )

    def ready() -> None:
        kind = "unencrypted" if secret is None else "encrypted"
        where = f"{remote}, replica: {logs_dir}" if remote is not None else f"log: {logs_dir}"
        typer.echo(f"wasmer-dfs: mounted {kind} file system at {mnt} ({where})", err=True)

    replicated = None
    if remote is not None:
        from application.replication import RecoveryMode as Mode
        from domain.fs.model import ROOT_INO
        from entrypoints.bootstrap import build_replica

        mode = Mode(recovery_mode.value)
        tolerance = preset_settings(mounted.preset).tolerance_ms
        from entrypoints.bootstrap import build_refusals

        refusals = build_refusals(logs_dir, LOCAL_CHAIN)
        replicated = build_replica(mounted, remote, mode, tolerance, wire, refusals)
        # A new replica has no tree before its first catch-up with the server, and a new chain
        # exists only once the server holds it: both wait for that. Otherwise the mount waits a
        # moment (in async mode not at all), then mounts disconnected.
        new = ROOT_INO not in mounted.fs.view.inodes or mounted.created
        replicated.wait_first_sync = new or mode is not Mode.ASYNC
        replicated.first_sync_timeout = None if new else FIRST_SYNC_WAIT
    unsaved: str | None = None  # buffered writes a full disk kept from being saved at unmount
    try:
        run(
            mounted.fs,
            str(mnt),
            options,
            writeback=write_back,
            read_only=read_only,
            on_mounted=ready,
            compactor=mounted.compactor if policy.mode is not CompactPolicyMode.NEVER else None,
            unchecked_until=mounted.unchecked_until,
            replicated=replicated,
        )
    except NotSynced as exc:
        if remote is None:
            fail(f"{mnt} was not mounted: {exc}", 5)
        fail(f"stopped before the replica caught up with {remote}: {exc}", 5)
    except PrefixDamaged as exc:
        mounted.save_checkpoint = False  # the next open reads the whole log, and refuses it
        mounted.close()
        with contextlib.suppress(OSError, LogError):
            mounts.logs.remove_checkpoint(LOCAL_CHAIN)
        fail(f"the mount was stopped: {exc}", 3)
    except RuntimeError as exc:
        fail(f"cannot mount at {mnt}: {exc}", 4)
    finally:
        try:
            mounted.close()
        except FsError as exc:
            unsaved = str(exc)
        if temp:
            mounts.logs.remove(LOCAL_CHAIN)
    if unsaved is not None:
        fail(f"unmounted {mnt}, but {unsaved}", 6)
    typer.echo(f"wasmer-dfs: unmounted {mnt}", err=True)


@app.command()
def verify(
    log_path: Annotated[Path, typer.Argument(help="Directory of the local redo log (e.g. ~/wasmer/fs)")],
    passcode: Annotated[str | None, typer.Option("--passcode", "-p", help=f"Passcode of the chain (also ${PASSCODE_ENV}, or a prompt)")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Salvage every intact object of a damaged log into a new log (the damaged one is kept as local.log.damaged-TIME), say what was lost, then verify the new log")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", "-n", help="The chain is unencrypted (--no-auth)")] = False,
) -> None:  # fmt: skip
    """Checks a redo log end to end (checksums, seals, signatures, every page, the file tree)
    without changing it; with --repair, salvages a damaged log first."""
    from application.fsck import verify as verify_chain
    from entrypoints.bootstrap import bootstrap, build_refusals
    from entrypoints.progress import ProgressBar

    logs_dir = log_path.expanduser().resolve()
    container = bootstrap(logs_dir, fault_hook())
    mounts = container.mounts()
    if not mounts.logs.exists(LOCAL_CHAIN):
        fail(f"there is no redo log in {logs_dir}", 2)
    secret = None if (no_auth or G.no_auth) else _passcode(passcode, False)
    if repair:
        _repair(container.repairer(), secret)
    request = MountRequest(
        LOCAL_CHAIN, secret, Formats(), os.getuid(), os.getgid(), read_only=True,
        use_checkpoint=False,
    )  # fmt: skip
    with ProgressBar("verifying") as bar:
        try:
            mounted = mounts.open(request, progress=bar)
        except (SessionError, LogError) as exc:
            fail(f"verification failed: {exc}", 3)
        try:
            refused = build_refusals(logs_dir, LOCAL_CHAIN).entries()
            report = verify_chain(mounted.fs, mounted.transactions, progress=bar, refused=refused)
        finally:
            mounted.close()
    typer.echo(
        f"{logs_dir}: {report.transactions} transactions, {report.objects} objects,"
        f" {report.inodes} inodes, {report.pages} pages, {report.log_bytes} bytes"
    )
    if report.torn_bytes:
        typer.echo(
            f"torn tail: {report.torn_bytes} bytes after the last commit (cut at next mount)"
        )
    typer.echo(
        "head signed: " + ("yes" if report.attested else "no (newest writes are sealed locally)")
    )
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if not report.ok:
        fail(f"{len(report.problems)} problems found", 1)
    typer.echo("ok")


def _repair(repairer: Repairer, secret: bytes | None) -> None:
    from entrypoints.progress import ProgressBar

    with ProgressBar("repairing") as bar:
        repairer.progress = bar
        try:
            r = repairer.repair(LOCAL_CHAIN, secret, Formats())
        except (SessionError, LogError) as exc:
            fail(f"repair failed (nothing was changed): {exc}", 3)
    damaged = sum(end - start for start, end in r.damaged)
    typer.echo(f"repair: read {r.records} intact records of a {r.log_bytes}-byte log")
    if r.damaged:
        spans = ", ".join(f"{a}-{b}" for a, b in r.damaged[:8])
        more = f" and {len(r.damaged) - 8} more" if len(r.damaged) > 8 else ""
        typer.echo(f"repair: {damaged} damaged bytes in {len(r.damaged)} places ({spans}{more})")
    if r.dropped_transactions:
        typer.echo(
            f"repair: dropped {r.dropped_transactions} transactions ({r.dropped_events} events)"
            " that the damage touched or that were never finished; what they changed keeps"
            " its previous version"
        )
    if r.bad_versions:
        typer.echo(f"repair: {r.bad_versions} versions of objects failed their checks")
    for line in r.lost:
        typer.echo(f"lost: {line}")
    for line in r.older:
        typer.echo(f"older: {line}")
    for line in r.saved:
        typer.echo(f"saved: {line}")
    for line in r.problems:
        typer.echo(f"problem after repair: {line}", err=True)
    typer.echo(
        f"repair: salvaged {r.objects} objects into a new log of {r.new_bytes} bytes;"
        f" the damaged log is kept as {r.kept_as}"
        + ("" if r.lost else "; nothing was lost that could be read")
    )


# --- commands later issues build ----------------------------------------------------------------
@user_app.command("create")
def user_create() -> None:
    """Creates a new user and generates login credentials"""
    not_yet("user create", "users, groups and tokens")


@user_app.command("details")
def user_details() -> None:
    """Returns all the details about a specific user"""
    not_yet("user details", "users, groups and tokens")


@group_app.command("add-user")
def group_add_user() -> None:
    """Adds another user to an existing group"""
    not_yet("group add-user", "users, groups and tokens")


@group_app.command("create")
def group_create() -> None:
    """Creates a new group"""
    not_yet("group create", "users, groups and tokens")


@group_app.command("details")
def group_details() -> None:
    """Display the details about a particular group (token is required to see role membership)"""
    not_yet("group details", "users, groups and tokens")


@group_app.command("remove-user")
def group_remove_user() -> None:
    """Removes a user from an existing group"""
    not_yet("group remove-user", "users, groups and tokens")


@token_app.command("gather")
def token_gather() -> None:
    """Gather the permissions needed to access a specific group into the token"""
    not_yet("token gather", "users, groups and tokens")


@token_app.command("generate")
def token_generate() -> None:
    """Generate a token with normal permissions from the supplied username and password"""
    not_yet("token generate", "users, groups and tokens")


@token_app.command("sudo")
def token_sudo() -> None:
    """Generate a token with extra permissions with elevated rights to modify groups"""
    not_yet("token sudo", "users, groups and tokens")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Benchmarks this file system side by side with gocryptfs, CryFS, sshfs and a plain directory;
    `bench replication` measures propagation between two mounts and initial sync"""
    args = list(ctx.args)
    try:
        if args[:1] == ["replication"]:
            from bench.replication import main as bench_main

            args = args[1:]
        else:
            from bench.fsbench import main as bench_main
    except ImportError:
        fail("the benchmark suite (bench/) is not installed with this copy", 2)
    raise typer.Exit(bench_main(args))


from entrypoints.serve import serve as serve_command  # noqa: E402

app.command("serve")(serve_command)


def main() -> None:
    if shutil.which("fusermount3") is None:
        logging.getLogger("wasmer_dfs").debug("fusermount3 not found on PATH")
    app()
