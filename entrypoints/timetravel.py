"""`wasmer-dfs mount MNT [SOURCE] --as-of TIME`: the tree as it was at TIME, read only
(issue 15, docs/adr/0023).

The local log is replayed up to TIME (application/history.py) and served read-only: every write
gets EROFS. A remote SOURCE (ws://...) names the replica whose local log is replayed: the chain
server is never contacted, nothing is uploaded, the replica's log is opened read-only (no lock,
so the live mount of the same log may run meanwhile), and no checkpoint is read or written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time

from application.mount import Configuration, MountRequest
from domain.compaction import CompactMode, CompactPolicy
from domain.fs.model import IdMap
from domain.timespec import TimeSpecError, duration_ms, iso_ms
from entrypoints import bootstrap, mounting
from entrypoints.console import USAGE, fail, say
from entrypoints.opening import open_log
from entrypoints.passwords import passcode_of
from entrypoints.settings import LOCAL_CHAIN, GlobalSettings


def parse_as_of(text: str, now_ms: int, local: dt.tzinfo) -> int:
    """The time ``text`` names, in ms since the epoch: a duration is ``now_ms`` minus it; an
    ISO 8601 time without an offset is in ``local`` time. ``TimeSpecError`` otherwise, and for
    a time in the future."""
    ago = duration_ms(text)
    if ago is not None:
        return now_ms - ago
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(s)
    except ValueError:
        raise TimeSpecError(
            f"{text!r} is not a time: give an ISO 8601 time (2026-12-03T13:50:00Z) or a duration"
            " before now (90s, 30m, 2h, 1d12h)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=local)
    ms = round(when.timestamp() * 1000)
    if ms > now_ms:
        raise TimeSpecError(f"{text!r} is in the future (now is {iso_ms(now_ms)})")
    return ms


def as_of_ms(text: str) -> int:
    """``--as-of``'s value in ms since the epoch (exit 2 with the reason when unreadable)."""
    local = dt.datetime.now().astimezone().tzinfo or dt.UTC
    try:
        return parse_as_of(text, int(time.time() * 1000), local)
    except TimeSpecError as exc:
        fail(f"--as-of: {exc}", USAGE)


def mount_as_of(s: mounting.MountSettings, g: GlobalSettings, as_of: int) -> None:
    """Mount the past as ``s`` says until unmounted."""
    refused = [
        name
        for name, given in (
            ("--background", s.background),
            ("--temp", s.temp),
            ("--compact-now", s.compact_now),
            ("--metrics", s.metrics is not None),
            ("--write-back", s.write_back),
        )
        if given
    ]
    if refused:
        fail(f"--as-of mounts the past read-only in the foreground: not with {refused[0]}", USAGE)
    s = dataclasses.replace(s, read_only=True, compaction=CompactPolicy(CompactMode.NEVER))
    mnt = mounting._check_mount_point(s)
    logs_dir = s.logs_dir
    if not (logs_dir / f"{LOCAL_CHAIN}.log").is_file():
        where = "replica of " + s.remote if s.remote else "log"
        fail(f"--as-of: there is no {where} at {logs_dir} to travel back in", USAGE)
    container = bootstrap.bootstrap(logs_dir)  # the system clock: nothing is stamped
    mounts = container.mounts()
    secret = (
        None if (s.no_auth or g.no_auth) else passcode_of(s.passcode, False, s.passfile, s.extpass)
    )
    request = MountRequest(
        chain=LOCAL_CHAIN,
        passcode=secret,
        formats=Configuration(s.preset, s.meta_format, s.data_format),
        uid=0,
        gid=0,
        read_only=True,
        use_checkpoint=False,
        compaction=s.compaction,
        remote=s.remote is not None,
        as_of_ms=as_of,
    )
    mounted = open_log(mounts, request)
    cut = mounted.as_of
    assert cut is not None
    say(
        f"the tree as of {iso_ms(as_of)}: {cut.transactions} transactions replayed, the last"
        f" sealed at {iso_ms(cut.at_ms)} (the log holds the past from {iso_ms(cut.oldest_ms)});"
        " read-only"
    )
    id_map = IdMap(
        uid=s.uid, gid=s.gid, local=(os.getuid(), os.getgid()) if s.impersonate_uid else None
    )
    if id_map.active:
        mounted.fs.id_map = id_map
    mounting._serve(s, mnt, logs_dir, mounts, mounted, None, None, encrypted=secret is not None)
