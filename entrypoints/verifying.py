"""`wasmer-dfs verify [--repair]`: check a redo log end to end without changing it
(application/fsck.py), after salvaging a damaged one into a new log (application/repair.py)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from application.compaction import HistorySpace, history_space
from application.mount import MountRequest
from application.ports import LogError
from application.repair import Repairer
from application.session import Formats, SessionError
from domain.timespec import iso_ms
from entrypoints import bootstrap
from entrypoints.console import REFUSED, USAGE, fail
from entrypoints.passwords import passcode_of
from entrypoints.progress import ProgressBar
from entrypoints.settings import LOCAL_CHAIN


def verify_log(logs_dir: Path, passcode: str | None, *, repair: bool, no_auth: bool) -> None:
    """Say what the log holds and every problem found (exit 1 when there is one)."""
    from application.fsck import verify as verify_chain

    container = bootstrap.bootstrap(logs_dir, bootstrap.fault_hook_from_env())
    mounts = container.mounts()
    if not mounts.logs.exists(LOCAL_CHAIN):
        fail(f"there is no redo log in {logs_dir}", USAGE)
    secret = None if no_auth else passcode_of(passcode, False)
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
            fail(f"verification failed: {exc}", REFUSED)
        try:
            refused = bootstrap.build_refusals(logs_dir, LOCAL_CHAIN).entries()
            report = verify_chain(mounted.fs, mounted.transactions, progress=bar, refused=refused)
            space = history_space(mounted.session)
        finally:
            mounted.close()
    typer.echo(
        f"{logs_dir}: {report.transactions} transactions, {report.objects} objects,"
        f" {report.inodes} inodes, {report.pages} pages, {report.log_bytes} bytes"
    )
    typer.echo(history_line(space))
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


def history_line(space: HistorySpace) -> str:
    """What the past takes, in words (``verify``)."""
    share = 100 * space.history_bytes / space.log_bytes if space.log_bytes else 0.0
    since = "" if space.oldest_ms is None else f", reaching back to {iso_ms(space.oldest_ms)}"
    return (
        f"history: {space.history_bytes} bytes ({share:.0f}% of the log) hold earlier versions,"
        f" deleted files and seals{since}; the newest versions take {space.live_bytes} bytes"
        " (what a compaction with --keep-history 0 would leave)"
    )


def _repair(repairer: Repairer, secret: bytes | None) -> None:
    with ProgressBar("repairing") as bar:
        repairer.progress = bar
        try:
            r = repairer.repair(LOCAL_CHAIN, secret, Formats())
        except (SessionError, LogError) as exc:
            fail(f"repair failed (nothing was changed): {exc}", REFUSED)
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
