"""Opening a mount's log and what is said about it (a torn tail cut, the checkpoint used, the
preset), and `--compact-now` before mounting: shared by `mount` (entrypoints/mounting.py) and a
mount of the past (entrypoints/timetravel.py)."""

from __future__ import annotations

import logging

from application.compaction import CompactionError
from application.mount import Mounted, MountRequest, MountService
from application.ports import LogError
from application.session import SessionError
from entrypoints.console import REFUSED, fail, say, warn

_log = logging.getLogger("wasmer_dfs")


def open_log(mounts: MountService, request: MountRequest) -> Mounted:
    """Open the chain's log for a mount (exit 3 with the reason when it is refused) and say what
    the open found: a preset warning, a torn tail cut, a checkpoint used."""
    try:
        mounted = mounts.open(request)
    except (SessionError, LogError) as exc:
        fail(str(exc), REFUSED)
    if mounted.preset_warning:
        warn(mounted.preset_warning)
    if mounted.cut_bytes:
        cut_from = mounted.session.log.open_report.cut_from
        _log.warning(
            "the log ended in a torn transaction (writes that were never made durable):"
            " %d bytes cut, offsets %d to %d",
            mounted.cut_bytes,
            cut_from,
            cut_from + mounted.cut_bytes,
        )
    if mounted.from_checkpoint:
        _log.info(
            "state loaded from the checkpoint; %d transactions replayed after it",
            mounted.transactions,
        )
    else:
        _log.info("%d transactions replayed", mounted.transactions)
    return mounted


def compact_now(mounted: Mounted) -> None:
    """--compact-now: compact the log before mounting, with a progress bar (exit 3 on failure,
    the log unchanged)."""
    from entrypoints.progress import ProgressBar

    assert mounted.compactor is not None
    with ProgressBar("compacting") as bar:
        mounted.compactor.progress = bar
        try:
            r = mounted.compactor.compact()
        except (SessionError, LogError, CompactionError) as exc:
            mounted.close()
            fail(f"compaction failed (the log is unchanged): {exc}", REFUSED)
        finally:
            mounted.compactor.progress = lambda phase, done, total: None
    say(
        f"compacted the log from {r.before} to {r.after} bytes"
        f" ({r.kept} of {r.events} events kept) in {r.seconds:.2f} s"
    )
    mounted.unchecked_until = None  # the compaction read every record of the old log
