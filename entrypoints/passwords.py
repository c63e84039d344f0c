"""Secrets without a terminal, as gocryptfs takes them: ``--passfile FILE`` (the file's first
line) and ``--extpass CMD`` (the first line a command prints). One helper for every secret the
CLI asks for (the passcode of a mount today, the passphrase of a token later).

* A passfile must be a regular file that neither its group nor others may read or write (as ssh
  refuses a private key others can read); the first line is the secret, its line end stripped.
* An extpass command is split like a shell would split it (``shlex``) and run without a shell;
  its standard error and input are the caller's (an askpass program may ask on the terminal).
  It must exit 0 and print a non-empty first line.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import typer

from entrypoints.console import USAGE, fail

#: the longest secret read from a file or a command (a passcode is a line, not a data file)
MAX_SECRET = 64 * 1024


class SecretError(ValueError):
    """A passfile or extpass that cannot give the secret (the message says why)."""


def _first_line(data: bytes, where: str) -> bytes:
    line = data.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        raise SecretError(f"{where} gave an empty first line: no secret")
    return line


def read_passfile(path: Path, what: str = "passfile") -> bytes:
    """The first line of ``path``; ``SecretError`` for a file group or others may read or
    write, a missing file, a directory, or an empty first line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretError(f"cannot open the {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"the {what} {path} is not a regular file")
        loose = st.st_mode & 0o077
        if loose:
            raise SecretError(
                f"the {what} {path} is readable or writable by its group or others"
                f" (mode {stat.S_IMODE(st.st_mode):04o}): make it private with"
                f" chmod 600 {shlex.quote(str(path))}"
            )
        data = os.read(fd, MAX_SECRET + 1)
    except OSError as exc:
        raise SecretError(f"cannot read the {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return _first_line(data, f"the {what} {path}")


def run_extpass(command: str, what: str = "extpass") -> bytes:
    """The first line ``command`` prints (run without a shell); ``SecretError`` when it cannot
    be run, exits non-zero, or prints nothing."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SecretError(f"the {what} command {command!r} cannot be split: {exc}") from None
    if not argv:
        raise SecretError(f"the {what} command is empty")
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise SecretError(f"cannot run the {what} command {argv[0]!r}: {exc.strerror}") from None
    if done.returncode != 0:
        raise SecretError(f"the {what} command {command!r} exited with {done.returncode}")
    return _first_line(done.stdout[: MAX_SECRET + 1], f"the {what} command {command!r}")


def secret_from(
    given: str | None,
    passfile: Path | None,
    extpass: str | None,
    what: str = "passcode",
    options: tuple[str, str, str] = ("--passcode", "--passfile", "--extpass"),
) -> bytes | None:
    """The secret from the one source given (None: none of them, the caller falls back to the
    environment or a prompt); ``SecretError`` for more than one source or a bad one.
    ``options``: the names of the three sources, for the messages."""
    sources = [
        name
        for name, value in zip(options, (given, passfile, extpass), strict=True)
        if value is not None
    ]
    if len(sources) > 1:
        raise SecretError(f"give the {what} one way, not {' and '.join(sources)}")
    if given is not None:
        return given.encode()
    if passfile is not None:
        return read_passfile(passfile, options[1].lstrip("-"))
    if extpass is not None:
        return run_extpass(extpass, options[2].lstrip("-"))
    return None


#: the passcode of a chain, when neither --passcode, --passfile nor --extpass gives it
PASSCODE_ENV = "WASMER_DFS_PASSCODE"


def passcode_of(
    given: str | None, creating: bool, passfile: Path | None = None, extpass: str | None = None
) -> bytes:
    """--passcode, --passfile or --extpass (one of them), else $WASMER_DFS_PASSCODE, else a
    prompt on a terminal (exit 2 without one); in a background daemon, what its parent read."""
    from entrypoints import daemon

    inherited = daemon.inherited_secret()
    if inherited is not None:
        return inherited
    try:
        secret = secret_from(given, passfile, extpass)
    except SecretError as exc:
        fail(str(exc), USAGE)
    if secret is not None:
        return secret
    env = os.environ.get(PASSCODE_ENV)
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        fail(
            f"a passcode is needed: give --passcode, --passfile or --extpass, set {PASSCODE_ENV},"
            " run interactively,"
            " or use --no-auth for an unencrypted file system",
            USAGE,
        )
    value = typer.prompt("Passcode", hide_input=True, confirmation_prompt=creating)
    return str(value).encode()
