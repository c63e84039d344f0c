"""The `wasmer-dfs` command line: the manual's command tree (see ../shared/seed). Each command
turns its options into a settings object and calls one module that does the work: mount
(entrypoints/mounting.py), verify (entrypoints/verifying.py), serve (entrypoints/serve.py); the
global options become ``GlobalSettings`` in typer's context (entrypoints/settings.py)."""

from __future__ import annotations

import dataclasses
import enum
import logging
import shutil
from pathlib import Path
from typing import Annotated

import typer

from application.replication import RecoveryMode
from domain.compaction import CompactMode
from domain.presets import Preset
from entrypoints.console import USAGE, fail, not_yet
from entrypoints.mount_guard import guarded
from entrypoints.passwords import PASSCODE_ENV
from entrypoints.serve import serve as serve_command
from entrypoints.settings import GlobalSettings, OptionError, global_settings

VERSION = "wasmer-dfs 1.3 (python 0.1.0)"

app = typer.Typer(
    name="wasmer-dfs",
    help="ATE File System: an encrypted, distributed, event-sourced FUSE file system.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
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
#: the commands that take --auth, --token and --token-path today (entrypoints/auth_commands.py)
AUTH_COMMANDS = ("user", "group", "token")


def _version(value: bool) -> None:
    if value:
        typer.echo(VERSION)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", "-d", help="Logs debug info to the console")] = False,
    dns_sec: Annotated[bool, typer.Option("--dns-sec", help="Use DNSSec rather than plain DNS: answers about the chain server's host must be DNSSEC-validated (needs --dns-server)")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", "-n", help="No authentication or passcode: the file system is NOT encrypted and anyone who reads its log reads its files")] = False,
    no_ntp: Annotated[bool, typer.Option("--no-ntp", help="Do not use NTP; the local clock stamps events")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Sets the level of log verbosity, can be used multiple times")] = 0,
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Prints version information")] = False,
    auth: Annotated[str | None, typer.Option("--auth", "-a", help="URL where the user is authenticated [default: ws://wasmer.sh/auth] (used by user, group and token; `wasmer-dfs serve` hosts one at ws://HOST:PORT/auth)")] = None,
    dns_server: Annotated[str | None, typer.Option("--dns-server", help="Address (IP[:PORT]) that DNS queries for the chain server's host will be sent to, e.g. 8.8.8.8 [default: the system's resolver]")] = None,
    ntp_pool: Annotated[str | None, typer.Option("--ntp-pool", help="NTP server address that the file-system will synchronize with")] = None,
    ntp_port: Annotated[int | None, typer.Option("--ntp-port", help="NTP server port that the file-system will synchronize with")] = None,
    token: Annotated[str | None, typer.Option("--token", "-t", help="Token used to access your encrypted file-system (the user, group and token commands, and mount: a chain of your own or, with --group, of a group)")] = None,
    token_path: Annotated[str | None, typer.Option("--token-path", help="Token file to read that holds a previously created token (mode 0600; the user, group and token commands, and mount)")] = None,
    token_passfile: Annotated[Path | None, typer.Option("--token-passfile", help="File whose first line is the passphrase of a sealed token (refused when its group or others may read it) [default: $WASMER_DFS_TOKEN_PASSPHRASE, or a prompt]")] = None,
    token_extpass: Annotated[str | None, typer.Option("--token-extpass", help="Command whose first line of output is the passphrase of a sealed token (like --extpass)")] = None,
    wire_encryption: Annotated[int | None, typer.Option("--wire-encryption", help="Quantum resistant wire encryption with remote chains: 128, 192 or 256 (ML-KEM-512/768/1024 + AES-256-GCM; the server's key is pinned in ~/.config/wasmer-dfs/known_servers; never falls back to plain)")] = None,
) -> None:  # fmt: skip
    """ATE File System: an encrypted, distributed, event-sourced FUSE file system."""
    try:
        ctx.obj = GlobalSettings(
            debug=debug, verbose=verbose, no_auth=no_auth, no_ntp=no_ntp, ntp_pool=ntp_pool,
            ntp_port=ntp_port, dns_server=dns_server, dns_sec=dns_sec,
            wire_encryption=wire_encryption, auth=auth, token=token, token_path=token_path,
            token_passfile=token_passfile, token_extpass=token_extpass,
        )  # fmt: skip
    except OptionError as exc:
        fail(str(exc), USAGE)
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="wasmer-dfs: %(levelname)s: %(name)s: %(message)s")
    tokened = token is not None or token_path is not None
    if tokened and ctx.invoked_subcommand not in (*AUTH_COMMANDS, "mount"):  # mount: chains
        not_yet(  # of users and groups
            f"{ctx.invoked_subcommand} with a token (--token/--token-path)",
            "users, groups and tokens",
        )
    if auth is not None and ctx.invoked_subcommand not in AUTH_COMMANDS:
        fail(
            f"--auth is for the user, group and token commands; {ctx.invoked_subcommand} does"
            " not use it (a mount's chain server checks its token against its own auth service)",
            USAGE,
        )


# --- mount -------------------------------------------------------------------------------------
class FormatName(enum.StrEnum):
    bincode = "bincode"
    json = "json"
    mpack = "mpack"


@app.command()
@guarded  # patched pyfuse3 or exit 4; a stop before mounting exits 5, never a traceback
def mount(
    ctx: typer.Context,
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
    compact_mode: Annotated[CompactMode, typer.Option("--compact-mode", help="Mode that the compaction will run under")] = CompactMode.FACTOR_OR_TIMER,
    compact_threshold_factor: Annotated[float, typer.Option("--compact-threshold-factor", help="Factor growth in the log file which will trigger compaction")] = 0.4,
    compact_threshold_size: Annotated[int, typer.Option("--compact-threshold-size", help="Size of growth in bytes in the log file which will trigger compaction")] = 104857600,
    compact_timer: Annotated[int, typer.Option("--compact-timer", help="Time in seconds between compactions of the log file")] = 3600,
    keep_history: Annotated[str, typer.Option("--keep-history", metavar="DURATION", help="What compaction keeps of the past: every version newer than DURATION, and deleted files for that long (0, 90m, 2h, 7d; --as-of reaches that far back)")] = "0",
    configured_for: Annotated[Preset | None, typer.Option("--configured-for", help="Configure the log file for barebone, speed, compatibility, balanced or security: formats, clock tolerance, DNSSEC (docs/adr/0014; raw is refused) [default: the preset the chain was created with, else speed]")] = None,
    data_format: Annotated[FormatName | None, typer.Option("--data-format", help="Format of the data in the log file [default: the preset's]")] = None,
    gid: Annotated[int | None, typer.Option("--gid", "-g", help="GID of the group that this file system will be mounted as: every file appears owned by this group (like sshfs -o gid=)")] = None,
    meta_format: Annotated[FormatName | None, typer.Option("--meta-format", help="Format of the metadata in the log file [default: the preset's]")] = None,
    passcode: Annotated[str | None, typer.Option("--passcode", "-p", help=f"Passcode that encrypts this file system (also ${PASSCODE_ENV}, or a prompt)")] = None,
    recovery_mode: Annotated[RecoveryMode, typer.Option("--recovery-mode", help="How the file-system reacts while nominal and while recovering from a communication failure")] = RecoveryMode.READONLY_ASYNC,
    uid: Annotated[int | None, typer.Option("--uid", "-u", help="UID of the user that this file system will be mounted as: every file appears owned by this user (like sshfs -o uid=)")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", "-n", help="Same as the global --no-auth: an UNENCRYPTED file system")] = False,
    passfile: Annotated[Path | None, typer.Option("--passfile", help="Read the passcode from the first line of FILE, which only its owner may read and write (like gocryptfs -passfile)")] = None,
    extpass: Annotated[str | None, typer.Option("--extpass", help="Run CMD (split like a shell, run without one) and take the first line it prints as the passcode (like gocryptfs -extpass)")] = None,
    view: Annotated[list[str] | None, typer.Option("--view", metavar="NAME[=ARG]", help="Turn on the installed view NAME (repeatable; `wasmer-dfs views` lists them), given ARG")] = None,
    background: Annotated[bool, typer.Option("--background", "-b", help="Run in the background: return once the file system is mounted and usable, or exit with the error; stop it with `wasmer-dfs umount MOUNT_PATH`")] = False,
    log: Annotated[Path | None, typer.Option("--log", help="Append the logs to FILE [in the background, default: syslog / the journal through /dev/log, else LOG_PATH/daemon.out]")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="Expose Prometheus metrics (operations, latencies, bytes, uploads pending, connection) at http://HOST:PORT/metrics")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", metavar="TIME", help="Mount the tree read-only as it was at TIME (ISO 8601, or a duration before now: 90s, 2h, 1d), replayed from the local log (a replica's too: the server is not contacted)")] = None,
    group: Annotated[str | None, typer.Option("--group", metavar="GROUP", help="With --token/--token-path: mount GROUP's chain NAME (ws://HOST:PORT/db/NAME) instead of your own; observers mount it read-only")] = None,
) -> None:  # fmt: skip
    """Mounts a local or remote file system (runs until unmounted, SIGINT or SIGTERM)."""
    from entrypoints import mounting

    settings = mounting.mount_settings(
        mount_path, remote, log_path,
        compaction=(compact_mode, compact_threshold_factor, compact_threshold_size, compact_timer),
        keep_history=keep_history, preset=configured_for, recovery_mode=recovery_mode,
        meta_format=None if meta_format is None else meta_format.value,
        data_format=None if data_format is None else data_format.value,
        compact_now=compact_now, read_only=read_only, passcode=passcode, uid=uid, gid=gid,
        allow_other=allow_other, allow_root=allow_root, impersonate_uid=impersonate_uid,
        non_empty=non_empty, temp=temp, write_back=write_back, no_auth=no_auth, metrics=metrics,
        views=view or (),
    )  # fmt: skip
    settings = dataclasses.replace(
        settings, passfile=None if passfile is None else passfile.expanduser().absolute(),
        extpass=extpass, background=background,
        log_file=None if log is None else log.expanduser().absolute(), group=group,
    )  # fmt: skip
    if as_of is not None:
        from entrypoints import timetravel

        timetravel.mount_as_of(settings, global_settings(ctx), timetravel.as_of_ms(as_of))
        return
    mounting.mount_and_serve(settings, global_settings(ctx))


@app.command()
def umount(
    mount_path: Annotated[Path, typer.Argument(help="Mount point of a wasmer-dfs file system")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the mount process to write out, upload and exit")] = 120.0,
) -> None:  # fmt: skip
    """Unmounts a wasmer-dfs file system: the mount process writes out what is buffered and
    uploads what is pending; waits for it to exit and reports what is left."""
    from entrypoints.unmounting import unmount

    unmount(mount_path, timeout)


@app.command("install-helpers")
def install_helpers(
    sbin_dir: Annotated[Path, typer.Option("--sbin-dir", help="Where mount(8) looks for mount.fuse.wasmer-dfs")] = Path("/sbin"),
    unit_dir: Annotated[Path, typer.Option("--unit-dir", help="Where the systemd units go")] = Path("/etc/systemd/system"),
) -> None:  # fmt: skip
    """Installs the fstab helper (mount -t fuse.wasmer-dfs) and the systemd units
    wasmer-dfs@.service and wasmer-dfs-serve.service for this installation."""
    from entrypoints.helpers import install

    install(sbin_dir, unit_dir)


@app.command()
def verify(
    ctx: typer.Context,
    log_path: Annotated[Path, typer.Argument(help="Directory of the local redo log (e.g. ~/wasmer/fs)")],
    passcode: Annotated[str | None, typer.Option("--passcode", "-p", help=f"Passcode of the chain (also ${PASSCODE_ENV}, or a prompt)")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Salvage every intact object of a damaged log into a new log (the damaged one is kept as local.log.damaged-TIME), say what was lost, then verify the new log")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", "-n", help="The chain is unencrypted (--no-auth)")] = False,
) -> None:  # fmt: skip
    """Checks a redo log end to end (checksums, seals, signatures, every page, the file tree)
    without changing it; with --repair, salvages a damaged log first."""
    from entrypoints.verifying import verify_log

    no_auth = no_auth or global_settings(ctx).no_auth
    verify_log(log_path.expanduser().resolve(), passcode, repair=repair, no_auth=no_auth)


@app.command()
def status(
    mount_path: Annotated[Path, typer.Argument(help="Mount point of a wasmer-dfs file system")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON of MOUNT_PATH/.wasmer-dfs/status as it is")] = False,
) -> None:  # fmt: skip
    """Shows a mount's state: chain, server, connection, recovery mode, positions, pending
    uploads, log size, last compaction (from MOUNT_PATH/.wasmer-dfs/status)."""
    from entrypoints.viewing import show_status

    show_status(mount_path, as_json)


@app.command()
def stats(
    mount_path: Annotated[Path, typer.Argument(help="Mount point of a wasmer-dfs file system")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one snapshot of the counters as JSON and exit")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between lines")] = 1.0,
    count: Annotated[int | None, typer.Option("--count", help="Stop after this many lines (default: until Ctrl-C)")] = None,
) -> None:  # fmt: skip
    """Shows a mount's operations live, a line per interval: operations and errors, bytes read
    and written, the busiest operations with their mean latency (from .wasmer-dfs/stats)."""
    from entrypoints.viewing import show_stats

    show_stats(mount_path, as_json, interval, count)


@app.command()
def history(
    path: Annotated[Path, typer.Argument(help="A file inside a mounted wasmer-dfs file system (a deleted one too)")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON (name, time, size, mode, author, conflict)")] = False,
) -> None:  # fmt: skip
    """Lists the versions of a file the log still holds: time, size, author (the signing key's
    hash) and whether it was a conflict copy (from MOUNT/.wasmer-dfs/history/PATH/)."""
    from entrypoints.past import show_history

    show_history(path, as_json)


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(help="A file inside a mounted wasmer-dfs file system (a deleted one too); with --recursive a directory (the mount's root too)")],
    as_of: Annotated[str, typer.Option("--as-of", metavar="TIME", help="The version to bring back: the newest at or before TIME (ISO 8601, or a duration before now: 90s, 2h, 1d)")],
    to: Annotated[Path | None, typer.Option("--to", metavar="NEW_PATH", help="Write it to NEW_PATH (in the same mount, not existing yet) instead of PATH")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Restore a whole directory as it was at TIME: deleted files and directories created again, changed ones rewritten (each file atomically), files created after TIME left alone (nothing is deleted)")] = False,
) -> None:  # fmt: skip
    """Brings a version of a file (or a deleted file) back as a new write on the live mount,
    seen by every mount of the chain; history is never rewritten. With --recursive, a whole
    directory as it was at TIME (files created after TIME are left alone)."""
    from entrypoints.past import restore as restore_version

    restore_version(path, as_of, to, recursive)


@app.command("views")
def views_command() -> None:
    """Lists the views installed (the wasmer_dfs.views entry points): name, module, what it
    shows. Turn one on with `mount --view NAME[=ARG]`."""
    from entrypoints.viewing import show_installed_views

    show_installed_views()


# --- users, groups and tokens (entrypoints/auth_commands.py) -----------------------------------
EmailOpt = Annotated[str, typer.Option("--email", "-e", help="Email address of the account")]
TokenOut = Annotated[
    Path | None,
    typer.Option(
        "--token-path",
        help="Write the token to this file, mode 0600 (default: the global --token-path, else standard output)",
    ),
]
Sealed = Annotated[
    bool,
    typer.Option(
        "--token-passphrase",
        help="Seal the token under a passphrase ($WASMER_DFS_TOKEN_PASSPHRASE, or asked twice)",
    ),
]


@user_app.command("create")
def user_create(ctx: typer.Context, email: EmailOpt) -> None:
    """Creates a new user and generates login credentials (the password is asked twice, or
    $WASMER_DFS_PASSWORD); prints the authenticator URI and a recovery code"""
    from entrypoints import auth_commands

    auth_commands.user_create(global_settings(ctx), email)


@user_app.command("details")
def user_details(
    ctx: typer.Context,
    email: Annotated[
        str | None,
        typer.Option("--email", "-e", help="Email address of the account (default: the token's)"),
    ] = None,
) -> None:
    """Returns all the details about a specific user (with your token: also your groups and
    the state of your authenticator codes)"""
    from entrypoints import auth_commands

    auth_commands.user_details(global_settings(ctx), email)


@group_app.command("add-user")
def group_add_user(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="Name of the group")],
    email: Annotated[str, typer.Argument(help="Email address of the user to add")],
    role: Annotated[
        str, typer.Option("--role", "-r", help="owner | delegate | contributor | observer")
    ] = "contributor",
) -> None:
    """Adds another user to an existing group (needs your token with an owner or delegate
    key of the group: `token gather GROUP`)"""
    from entrypoints import auth_commands

    auth_commands.group_add_user(global_settings(ctx), group, email, role)


@group_app.command("create")
def group_create(
    ctx: typer.Context, group: Annotated[str, typer.Argument(help="Name of the new group")]
) -> None:
    """Creates a new group (needs a sudo token: `token sudo`)"""
    from entrypoints import auth_commands

    auth_commands.group_create(global_settings(ctx), group)


@group_app.command("details")
def group_details(
    ctx: typer.Context, group: Annotated[str, typer.Argument(help="Name of the group")]
) -> None:
    """Display the details about a particular group (token is required to see role membership)"""
    from entrypoints import auth_commands

    auth_commands.group_details(global_settings(ctx), group)


@group_app.command("remove-user")
def group_remove_user(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="Name of the group")],
    email: Annotated[str, typer.Argument(help="Email address of the user to remove")],
) -> None:
    """Removes a user from an existing group (the keys of the roles they held are rotated)"""
    from entrypoints import auth_commands

    auth_commands.group_remove_user(global_settings(ctx), group, email)


@token_app.command("gather")
def token_gather(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="Name of the group")],
    token_path: TokenOut = None,
    sealed: Sealed = False,
) -> None:
    """Gather the permissions needed to access a specific group into the token (read from
    --token or the global --token-path, written back)"""
    from entrypoints import auth_commands

    auth_commands.token_gather(global_settings(ctx), group, token_path, sealed)


@token_app.command("generate")
def token_generate(
    ctx: typer.Context, email: EmailOpt, token_path: TokenOut = None, sealed: Sealed = False
) -> None:
    """Generate a token with normal permissions from the supplied username and password"""
    from entrypoints import auth_commands

    auth_commands.token_generate(global_settings(ctx), email, token_path, sealed)


@token_app.command("sudo")
def token_sudo(
    ctx: typer.Context,
    email: EmailOpt,
    code: Annotated[
        str | None, typer.Option("--code", "-c", help="Code of your authenticator app (6 digits)")
    ] = None,
    recovery_code: Annotated[
        str | None,
        typer.Option(
            "--recovery-code",
            help="The recovery code printed by `user create`, instead of --code (good once; it also ends a lock)",
        ),
    ] = None,
    token_path: TokenOut = None,
    sealed: Sealed = False,
) -> None:
    """Generate a token with extra permissions with elevated rights to modify groups (needs a
    code of your authenticator app)"""
    from entrypoints import auth_commands

    auth_commands.token_sudo(global_settings(ctx), email, code, recovery_code, token_path, sealed)


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


app.command("serve")(serve_command)


def main() -> None:
    if shutil.which("fusermount3") is None:
        logging.getLogger("wasmer_dfs").debug("fusermount3 not found on PATH")
    app()
