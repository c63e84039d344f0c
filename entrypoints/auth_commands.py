"""The steps of `wasmer-dfs user ...`, `token ...` and `group ...` (issue 14, docs/adr/0018): each
command of entrypoints/cli.py turns its options into arguments and calls one function here.

Secrets without a terminal: the password from ``$WASMER_DFS_PASSWORD``, a token passphrase from
``$WASMER_DFS_TOKEN_PASSPHRASE``; otherwise a hidden prompt on a terminal (twice where a new one
is chosen), and never a wait on a standard input that is not one. A token is read from
``--token`` or ``--token-path`` (a file of mode 0600) and written to the command's
``--token-path`` (else the global one, else standard output). Exit codes: 1 the service cannot
be reached, 2 bad input (a malformed, sealed or expired token, a bad email or role), 3 the
service or the keys refused (no account, wrong password, locked until, not a member, role too
low)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import msgspec
import typer

from application.auth import AuthKeys, NoRoleKeys, WrongPassword
from application.auth_client import AuthClient
from application.ports.auth import AuthUnavailable
from domain.auth.errors import AuthError, TokenError
from domain.auth.records import check_email, check_group_name
from domain.auth.roles import parse_role
from domain.auth.token import Token
from domain.auth.totp import otpauth_uri
from entrypoints.console import REFUSED, USAGE, fail, say
from entrypoints.settings import DEFAULT_AUTH_URL, GlobalSettings

PASSWORD_ENV = "WASMER_DFS_PASSWORD"
PASSPHRASE_ENV = "WASMER_DFS_TOKEN_PASSPHRASE"

_T = TypeVar("_T")


def _auth_url(settings: GlobalSettings) -> str:
    return settings.auth or DEFAULT_AUTH_URL


def _refused(exc: Exception) -> NoReturn:
    if isinstance(exc, AuthUnavailable):
        fail(str(exc), 1)
    if isinstance(exc, TokenError):
        fail(str(exc), USAGE)
    fail(str(exc), REFUSED)


def _run(settings: GlobalSettings, steps: Callable[[AuthClient], Awaitable[_T]]) -> _T:
    """``steps`` on a connection to the auth service; every refusal a message and an exit."""
    from entrypoints.bootstrap import build_auth_client

    async def go() -> _T:
        connector, keys = build_auth_client(_auth_url(settings))
        link = await connector.open()
        try:
            return await steps(AuthClient(link, keys))
        finally:
            await link.close()

    try:
        return asyncio.run(go())
    except (AuthError, WrongPassword, NoRoleKeys) as exc:
        _refused(exc)


# --- secrets ----------------------------------------------------------------------------------
def _secret(env: str, prompt: str, confirm: bool) -> bytes:
    given = os.environ.get(env)
    if given is not None:
        if not given:
            fail(f"${env} is empty", USAGE)
        return given.encode()
    if not sys.stdin.isatty():
        fail(f"no terminal to ask for the {prompt.lower()}: set ${env}", USAGE)
    value: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    if not value:
        fail(f"the {prompt.lower()} is empty", USAGE)
    return value.encode()


def password(confirm: bool = False) -> bytes:
    return _secret(PASSWORD_ENV, "Password", confirm)


def passphrase(settings: GlobalSettings, confirm: bool = False) -> bytes:
    """A sealed token's passphrase: --token-passfile or --token-extpass (as --passfile and
    --extpass for a passcode), else $WASMER_DFS_TOKEN_PASSPHRASE, else a prompt."""
    from entrypoints.passwords import SecretError, secret_from

    try:
        given = secret_from(
            None, settings.token_passfile, settings.token_extpass, "token passphrase",
            ("--token", "--token-passfile", "--token-extpass"),
        )  # fmt: skip
    except SecretError as exc:
        fail(str(exc), USAGE)
    return given if given is not None else _secret(PASSPHRASE_ENV, "Token passphrase", confirm)


# --- tokens -----------------------------------------------------------------------------------
def _keys(settings: GlobalSettings) -> AuthKeys:
    from entrypoints.bootstrap import build_auth_client

    return build_auth_client(_auth_url(settings))[1]


def read_token(settings: GlobalSettings, path: Path | None = None) -> Token:
    """The token of ``--token`` / ``--token-path`` (or ``path``): read, opened with the
    passphrase when sealed, not expired; exit 2 with the reason otherwise."""
    from adapters.token_file import read_token_file

    where = path or (None if settings.token_path is None else Path(settings.token_path))
    try:
        if settings.token is not None:
            text = settings.token
        elif where is not None:
            text = read_token_file(where.expanduser())
        else:
            fail(
                "this command needs a token: give --token-path FILE (made by `wasmer-dfs token"
                " generate --email EMAIL --token-path FILE`) or --token TEXT",
                USAGE,
            )
        keys = _keys(settings)
        try:
            return keys.read_token(text, time.time())
        except TokenError as exc:
            if "sealed under a passphrase" not in str(exc):
                raise
            return keys.read_token(text, time.time(), passphrase(settings))
    except TokenError as exc:
        fail(str(exc), USAGE)


def write_token(settings: GlobalSettings, token: Token, path: Path | None, sealed: bool) -> None:
    """Write ``token`` to ``path`` (else the global --token-path, else standard output)."""
    from adapters.token_file import write_token_file

    keys = _keys(settings)
    text = keys.token_text(token, passphrase(settings, confirm=True) if sealed else None)
    where = path or (None if settings.token_path is None else Path(settings.token_path))
    if where is None:
        typer.echo(text)
        return
    try:
        write_token_file(where.expanduser(), text)
    except TokenError as exc:
        fail(str(exc), 1)
    say(f"token of {token.email} written to {where} (mode 0600)")


def _email(email: str) -> str:
    try:
        return check_email(email)
    except AuthError as exc:
        fail(str(exc), USAGE)


def _group(name: str) -> str:
    try:
        return check_group_name(name)
    except AuthError as exc:
        fail(str(exc), USAGE)


# --- users ------------------------------------------------------------------------------------
def user_create(settings: GlobalSettings, email: str) -> None:
    email = _email(email)
    secret = password(confirm=True)
    created = _run(settings, lambda c: c.create_user(email, secret))
    typer.echo(f"created the account {email} at {_auth_url(settings)}")
    typer.echo("add this to your authenticator app (token sudo asks for its codes):")
    typer.echo(otpauth_uri(created.account.totp_secret, email))
    typer.echo(
        f"recovery code (keep it offline; it stands in for one code): {created.recovery_code}"
    )


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:32]


def user_details(settings: GlobalSettings, email: str | None) -> None:
    token = None
    if settings.token is not None or settings.token_path is not None:
        token = read_token(settings)
    if email is None:
        if token is None:
            fail("give --email EMAIL, or a token (--token-path) for your own account", USAGE)
        email = token.email
    email = _email(email)
    info = _run(settings, lambda c: c.details(email, token))
    typer.echo(f"email: {info.email}")
    typer.echo(f"signing key (normal): sha256 {_fingerprint(info.normal.sign)}")
    typer.echo(f"signing key (sudo): sha256 {_fingerprint(info.sudo.sign)}")
    if info.groups is not None:
        typer.echo(f"groups: {', '.join(info.groups) or '(none)'}")
        lock = info.locked_until
        state = "open" if lock is None else f"waiting until unix time {lock:.0f}"
        typer.echo(f"authenticator codes: {info.failures} wrong in a row, {state}")


# --- tokens -----------------------------------------------------------------------------------
def token_generate(settings: GlobalSettings, email: str, path: Path | None, sealed: bool) -> None:
    email = _email(email)
    secret = password()

    async def steps(client: AuthClient) -> Token:
        _, normal = await client.login(email, secret)
        return client.keys.build_token(email, _auth_url(settings), time.time(), normal)

    write_token(settings, _run(settings, steps), path, sealed)


def token_sudo(
    settings: GlobalSettings,
    email: str,
    code: str | None,
    recovery: str | None,
    path: Path | None,
    sealed: bool,
) -> None:
    email = _email(email)
    if not code and not recovery:
        fail("give --code CODE (from your authenticator app) or --recovery-code CODE", USAGE)
    secret = password()

    async def steps(client: AuthClient) -> Token:
        record, normal = await client.login(email, secret)
        share = await client.sudo_share(email, normal, code=code or "", recovery=recovery or "")
        sudo = client.keys.unseal_sudo(record, secret, share)
        return client.keys.build_token(email, _auth_url(settings), time.time(), normal, sudo)

    write_token(settings, _run(settings, steps), path, sealed)


def token_gather(settings: GlobalSettings, group: str, path: Path | None, sealed: bool) -> None:
    name = _group(group)
    token = read_token(settings)
    found = _run(settings, lambda c: c.gather(name, token))
    kept = tuple(r for r in token.roles if r.group != name)
    token = msgspec.structs.replace(token, roles=(*kept, *found))
    roles = sorted({f"{r.role.value} (epoch {r.epoch})" for r in found})
    say(f"gathered the keys of group {name}: {', '.join(roles)}")
    write_token(settings, token, path, sealed)


# --- groups -----------------------------------------------------------------------------------
def group_create(settings: GlobalSettings, group: str) -> None:
    name = _group(group)
    token = read_token(settings)
    _run(settings, lambda c: c.create_group(name, token))
    typer.echo(
        f"created group {name}, owned by {token.email}; run `wasmer-dfs token gather {name}`"
        " to add its keys to your token"
    )


def group_add_user(settings: GlobalSettings, group: str, email: str, role: str) -> None:
    name, email = _group(group), _email(email)
    try:
        chosen = parse_role(role)
    except ValueError as exc:
        fail(str(exc), USAGE)
    token = read_token(settings)
    _run(settings, lambda c: c.add_member(name, token, email, chosen))
    typer.echo(f"added {email} to group {name} as {chosen.value}")


def group_remove_user(settings: GlobalSettings, group: str, email: str) -> None:
    name, email = _group(group), _email(email)
    token = read_token(settings)
    _run(settings, lambda c: c.remove_member(name, token, email))
    typer.echo(
        f"removed {email} from group {name}; the keys of the roles they held are rotated:"
        f" members run `wasmer-dfs token gather {name}` for the new ones"
    )


def group_details(settings: GlobalSettings, group: str) -> None:
    name = _group(group)
    token = read_token(settings)
    reply = _run(settings, lambda c: c.group(name, token))
    typer.echo(f"group: {name}")
    if not reply.whole:
        typer.echo(
            f"members: shown to holders of a current role key: run `wasmer-dfs token gather"
            f" {name}` first"
        )
        return
    for member, role in sorted(reply.group.members.items()):
        typer.echo(f"  {role.value:<12} {member}")
    latest: dict[str, int] = {}
    for epoch in reply.group.epochs:
        latest[epoch.role.value] = max(latest.get(epoch.role.value, 0), epoch.epoch)
    typer.echo("key epochs: " + ", ".join(f"{r} {e}" for r, e in sorted(latest.items())))
