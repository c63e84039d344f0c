"""`wasmer-dfs --token-path F mount MNT ws://HOST:PORT/db/NAME [--group GROUP]` (issue 14 phase 3,
docs/adr/0018 "Chains of users and groups"): the token's signature tells the chain server who
connects, and the token's keys give the chain's secret in place of a passcode
(application/chain_token.py). This module turns the global token options and the mount's into
what mounting.py needs; bad input exits 2, a token without the chain's keys 3."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from application import chain_token
from application.keys import ChainKeys
from application.session_errors import SessionError
from domain.auth.chains import stored_name
from entrypoints.console import REFUSED, USAGE, fail, say
from entrypoints.settings import GlobalSettings

if TYPE_CHECKING:
    from application.chain_token import ChainSigner
    from application.ports import Crypto


@dataclass(frozen=True, slots=True)
class TokenMount:
    """A mount with a token: the replica's own directory (``user.HASH.NAME`` or
    ``group.GROUP.NAME`` under the default directory of replicas, unless a log path is given),
    whether it mounts read-only (an observer), the signer of its connections, and the secrets
    that may open the chain."""

    log_path: Path
    read_only: bool
    signer: ChainSigner
    secrets: list[bytes]


def token_mount(
    g: GlobalSettings,
    *,
    name: str | None,
    group: str | None,
    log_path: Path | None,
    read_only: bool,
    passcode_given: bool,
    remote_logs: Path,
    crypto: Crypto,
) -> TokenMount | None:
    """The token side of a mount of the chain ``name`` (None: a local chain); None without
    --token/--token-path (a passcode mount). ``passcode_given``: a passcode option or
    --no-auth was given too (refused)."""
    from entrypoints import auth_commands

    if g.token is None and g.token_path is None:
        if group is not None:
            fail("--group names a group's chain: give --token or --token-path too", USAGE)
        return None
    if name is None:
        fail("a token mounts a chain of a server: give its URL, ws://HOST:PORT/db/NAME", USAGE)
    if passcode_given:
        fail("a token replaces the passcode: give either, not both (nor --no-auth)", USAGE)
    token = auth_commands.read_token(g)  # exit 2 with the reason for a bad or expired token
    try:
        secrets = chain_token.secrets(token, group, name)
    except chain_token.NoChainKey as exc:
        fail(exc.reason, REFUSED)
    log_path = log_path or remote_logs / stored_name(name, token.email, group)
    if not chain_token.may_write(token, group):
        if not read_only:
            say(f"{token.email} is an observer of group {group}: mounting read-only")
        read_only = True
    return TokenMount(log_path, read_only, chain_token.signer(token, group, crypto), secrets)


def choose_secret(tm: TokenMount, header_body: bytes | None, crypto: Crypto) -> bytes:
    """The token's secret that opens the chain of ``header_body`` (None: a new chain, the
    newest); exit 3 when none does."""
    from application.chain_header import ChainHeader

    if header_body is None or len(tm.secrets) == 1:
        return tm.secrets[0]
    try:
        header = ChainHeader.decode(header_body)
        for secret in tm.secrets:
            try:
                ChainKeys.check_passcode(header, secret, crypto)
            except SessionError:
                continue
            return secret
    except SessionError as exc:
        fail(f"the chain's header: {exc}", REFUSED)
    fail(
        "none of the token's keys opens this chain: gather the group's keys again"
        " (`wasmer-dfs token gather GROUP`)",
        REFUSED,
    )
