"""What the CLI says to a person: errors with an exit code, warnings, progress lines (stderr).

Exit codes: 1 a check failed, 2 bad usage (nothing done), 3 the chain or server refused, 4 the
file system cannot be mounted, 5 stopped before mounting, 6 unmounted with unsaved writes.
"""

from __future__ import annotations

from typing import NoReturn

import typer

USAGE = 2
REFUSED = 3
CANNOT_MOUNT = 4
STOPPED = 5
UNSAVED = 6


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"wasmer-dfs: error: {message}", err=True)
    raise typer.Exit(code)


def not_yet(what: str, issue: str) -> NoReturn:
    fail(f"{what} is not implemented yet (planned: {issue}); nothing was done.", USAGE)


def warn(message: str) -> None:
    typer.echo(f"wasmer-dfs: warning: {message}", err=True)


def say(message: str) -> None:
    typer.echo(f"wasmer-dfs: {message}", err=True)
