"""The options of `wasmer-dfs` as settings objects: one frozen object per command line, built
once from the options and handed to what needs it (no mutable module-level state).

The global options (those before the command: `wasmer-dfs --no-ntp mount ...`) are parsed by the
CLI's callback into ``GlobalSettings`` and kept in typer's context object, where every command
reads them with ``global_settings(ctx)``; a command run on its own (``python -m
entrypoints.serve``) gets the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from domain.timespec import duration_ms

#: the name of a mount's chain in its own log directory (local.log: a local chain or a replica)
LOCAL_CHAIN = "local"
#: where users are authenticated unless --auth says otherwise (the manual's default)
DEFAULT_AUTH_URL = "ws://wasmer.sh/auth"
#: the levels of --wire-encryption (ML-KEM-512/768/1024)
WIRE_LEVELS = (128, 192, 256)


class OptionError(ValueError):
    """An option's value that cannot be used (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class GlobalSettings:
    debug: bool = False
    verbose: int = 0
    #: an unencrypted file system (no passcode)
    no_auth: bool = False
    no_ntp: bool = False
    ntp_pool: str | None = None
    ntp_port: int | None = None
    dns_server: str | None = None
    dns_sec: bool = False
    #: the least wire encryption (bits) with chain servers; None: plain
    wire_encryption: int | None = None
    #: the auth service (--auth; None: the manual's default, DEFAULT_AUTH_URL)
    auth: str | None = None
    #: a token's text (--token) or the file that holds one (--token-path)
    token: str | None = None
    token_path: str | None = None
    #: where a sealed token's passphrase comes from (--token-passfile / --token-extpass; None:
    #: $WASMER_DFS_TOKEN_PASSPHRASE or a prompt)
    token_passfile: Path | None = None
    token_extpass: str | None = None

    def __post_init__(self) -> None:
        if self.ntp_port is not None and not 0 < self.ntp_port < 65536:
            raise OptionError("--ntp-port must be 1 to 65535")
        check_wire_level(self.wire_encryption)


def check_wire_level(level: int | None) -> None:
    if level is not None and level not in WIRE_LEVELS:
        raise OptionError("--wire-encryption must be 128, 192 or 256")


def global_settings(ctx: typer.Context | None) -> GlobalSettings:
    """The global options of this command line (the defaults when none were parsed)."""
    obj = None if ctx is None else ctx.find_object(GlobalSettings)
    return obj if obj is not None else GlobalSettings()


def host_port(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); ``OptionError`` naming ``option``
    otherwise (a port from 0, any free one, to 65535)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionError(f"{option} must be HOST:PORT, not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or "[" in host or "]" in host:
        raise OptionError(f"{option} must be HOST:PORT, not {value!r}")
    return host, int(port)


def keep_history_ms(value: str, option: str = "--keep-history") -> int:
    """``--keep-history DURATION`` in milliseconds: ``0`` (no history) or a duration such as
    ``7d``, ``2h``, ``90m``, ``1d12h``; ``OptionError`` naming ``option`` otherwise."""
    text = value.strip()
    ms = 0 if text == "0" else duration_ms(text)
    if ms is None:
        raise OptionError(
            f"{option} must be 0 or a duration (90s, 30m, 2h, 7d, 1d12h), not {value!r}"
        )
    return ms
