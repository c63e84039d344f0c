"""What `wasmer-dfs mount` makes sure of before its body runs: a pyfuse3 it can run on, and stop
signals that end it with a message and an exit code instead of killing it.

* The plain pyfuse3 from PyPI is refused (exit 4) before anything mounts, connects or starts a
  thread (adapters/fuse_binding.py): on it, a remote mount died with SIGSEGV as it started.
* SIGTERM and SIGHUP act like Ctrl-C (KeyboardInterrupt) until the FUSE runner takes the three
  signals over; a stop before the file system was mounted (waiting for the chain server, opening
  the log) exits 5 with a message, without a traceback. Once the runner has them, a stop ends the
  wait for the first sync or unmounts; after it they are ignored (adapters/fuse_runner.py).
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from types import FrameType
from typing import ParamSpec

import typer

# STOPPED: a mount stopped before it was mounted (also: a new replica stopped before its first
# sync, adapters.fuse_runner.NotSynced); CANNOT_MOUNT: here, no patched pyfuse3
from entrypoints.console import CANNOT_MOUNT, STOPPED

P = ParamSpec("P")


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"wasmer-dfs: error: {message}", err=True)
    return typer.Exit(code)


class _Interrupts:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt; the last one's name is kept."""

    def __init__(self) -> None:
        self.name = "SIGINT"

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.name = signal.Signals(signum).name
        raise KeyboardInterrupt

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self)


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """Wrap a mount command (see the module's docstring)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        interrupts = _Interrupts()
        interrupts.install()
        try:
            from adapters.fuse_binding import FuseBindingError, check_pyfuse3

            try:
                check_pyfuse3()
            except FuseBindingError as exc:
                raise _fail(str(exc), CANNOT_MOUNT) from None
            command(*args, **kwargs)
        except KeyboardInterrupt:
            raise _fail(
                f"stopped by {interrupts.name} before the file system was mounted"
                " (nothing was mounted)",
                STOPPED,
            ) from None

    return wrapper
