"""Compaction rules: which events of a chain a compacted log keeps, in which order it replays
them, and when to compact. Pure: the caller reads the log and writes the new one.

What is kept (see docs/adr/0007):

* the newest event of every live object;
* an older event of a live object when it carries metadata that the newest one inherits without
  restating (``Authorization``, ``Parent``, ``Type``: the index carries them over from the
  previous version) or a ``PublicKey`` that the newest one does not restate (signatures need it);
* key-less events that carry a ``PublicKey``.

Everything else goes: superseded versions, tombstones, and every event of an object that is no
longer live (deleted, or below a deleted object). Seals are not events: the new log seals the
kept events anew.

Order: a replay must see a parent before its children (the validator refuses a creation under a
missing parent), so kept events are replayed by the depth of their object in the final parent
tree, then by collection, then in log order. At each depth collections replay in ascending
number: the file model numbers inodes before dentries before pages, so every inode exists before
a dentry names it (the view counts sub-directories when a dentry names a directory).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from domain.chain import ChainIndex, Located
from domain.events import (
    Authorization,
    EventHeader,
    Parent,
    PublicKey,
    Type,
    WriteOption,
)

MiB = 1 << 20
#: the growth-factor trigger needs a log of at least this size (as the original)
FACTOR_MIN_LOG = 2 * MiB


# --- when -----------------------------------------------------------------------------------------
class CompactMode(enum.StrEnum):
    NEVER = "never"
    MODIFIED = "modified"
    TIMER = "timer"
    FACTOR = "factor"
    SIZE = "size"
    FACTOR_OR_TIMER = "factor-or-timer"
    SIZE_OR_TIMER = "size-or-timer"


@dataclass(frozen=True, slots=True)
class CompactPolicy:
    mode: CompactMode = CompactMode.FACTOR_OR_TIMER
    #: compact when the log grew by this factor of its size after the last compaction
    factor: float = 0.4
    #: compact when the log grew by this many bytes since the last compaction
    size: int = 100 * MiB
    #: compact when this many seconds passed since the last compaction
    timer: float = 3600.0
    #: the history window (``--keep-history``, ms): what a compaction keeps of the past
    keep_history_ms: int = 0

    def __post_init__(self) -> None:
        if self.factor < 0 or self.size < 0 or self.timer < 0 or self.keep_history_ms < 0:
            raise ValueError("compaction thresholds must not be negative")

    @property
    def window(self) -> HistoryWindow:
        return HistoryWindow(self.keep_history_ms)


def compaction_due(
    policy: CompactPolicy,
    *,
    log_size: int,
    base_size: int,
    seconds_since: float,
    modified: bool,
) -> bool:
    """Whether to compact now.

    ``base_size`` is the log's size right after the last compaction (or when it was opened, when
    no compaction is known), ``seconds_since`` the time since then, ``modified`` whether any
    event was written since. A log that did not change is never compacted again: the result
    would be the same.
    """
    mode = policy.mode
    if mode is CompactMode.NEVER or not modified:
        return False
    growth = log_size - base_size
    by_factor = log_size >= FACTOR_MIN_LOG and growth > policy.factor * max(base_size, 0)
    by_size = growth >= policy.size
    by_timer = seconds_since >= policy.timer
    if mode is CompactMode.MODIFIED:
        return True
    if mode is CompactMode.TIMER:
        return by_timer
    if mode is CompactMode.FACTOR:
        return by_factor
    if mode is CompactMode.SIZE:
        return by_size
    if mode is CompactMode.FACTOR_OR_TIMER:
        return by_factor or by_timer
    if mode is CompactMode.SIZE_OR_TIMER:
        return by_size or by_timer
    raise ValueError(f"unknown compaction mode {mode!r}")


# --- how far back: the history window -----------------------------------------------------------
DAY_MS = 86_400_000
#: what a chain server keeps of the past unless told (``serve --keep-history``): a week
SERVE_HISTORY_MS = 7 * DAY_MS
#: what a mount keeps unless told (``mount --keep-history``): nothing (docs/adr/0007)
MOUNT_HISTORY_MS = 0


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """The past a compaction keeps (docs/adr/0007, "History window"): every version newer than
    ``now - ms``, and deleted objects for that long. The one rule both compaction (what to
    drop) and time travel (how far back a log reaches) follow.

    A transaction's time is its seal's ``Timestamp`` (one without takes the time of the
    transaction before it). A compaction folds the *prefix* of the log up to the last
    transaction whose time is at most ``now - ms`` into the state it left (the newest version
    of every object live then), and keeps every transaction after it as it was, in order, with
    its time. So the tree at any time from the cutoff on replays exactly as before the
    compaction: a version written, superseded or deleted after the cutoff is still there, and
    so is an object deleted after it (it was live at the cutoff). Time travel picks the same
    prefix (``folded``) for a time, so both agree on what "as of T" means.
    """

    ms: int = 0

    def __post_init__(self) -> None:
        if self.ms < 0:
            raise ValueError("a history window must not be negative")

    def cutoff(self, now_ms: int) -> int:
        """The oldest time the window reaches at ``now_ms``."""
        return now_ms - self.ms

    def keeps(self, at_ms: int, now_ms: int) -> bool:
        """Whether a version written (or an object deleted) at ``at_ms`` lies in the window:
        newer than ``now_ms - ms``. A window of 0 keeps nothing."""
        return self.ms > 0 and at_ms > self.cutoff(now_ms)

    def folded(self, times: Sequence[int | None], now_ms: int) -> int:
        """How many leading transactions (their times in log order) a compaction at ``now_ms``
        folds into the state they leave: all with a window of 0, else ``prefix_at`` the
        cutoff."""
        if self.ms == 0:
            return len(times)
        return prefix_at(times, self.cutoff(now_ms))


def prefix_at(times: Sequence[int | None], at_ms: int) -> int:
    """How many leading transactions make the state as of ``at_ms``: those up to the last whose
    time is at most ``at_ms`` (a transaction without a time takes the time of the one before;
    a later one may depend on an earlier one, so the state as of a time is always a prefix)."""
    count = 0
    last: int | None = None
    for i, t in enumerate(times, 1):
        t = t if t is not None else last
        if t is not None and t <= at_ms:
            count = i
        last = t
    return count


# --- what -----------------------------------------------------------------------------------------
_AUTH, _PARENT, _TYPE = 1, 2, 4


@dataclass(slots=True)
class _History:
    """What the older events of one live object carry that its newest event may inherit."""

    flags: int  # which inheritable kinds the newest event carries
    pubs: frozenset[bytes]  # public keys the newest event carries
    last_auth: int = -1  # position of the newest older event carrying each kind
    last_parent: int = -1
    last_type: int = -1
    older_pubs: list[tuple[int, frozenset[bytes]]] = field(default_factory=list)


def _flags(hdr: EventHeader) -> int:
    f = 0
    if hdr.find(Authorization) is not None:
        f |= _AUTH
    if hdr.find(Parent) is not None:
        f |= _PARENT
    if hdr.find(Type) is not None:
        f |= _TYPE
    return f


_NO_KEYS: frozenset[bytes] = frozenset()


def _pubs(hdr: EventHeader) -> frozenset[bytes]:
    if hdr.find(PublicKey) is None:  # (nearly every event)
        return _NO_KEYS
    return frozenset(m.key for m in hdr.meta if isinstance(m, PublicKey))


@dataclass(frozen=True, slots=True)
class Plan:
    #: positions of the events to keep, in the order a replay must see them
    positions: list[int]
    #: live objects the kept events make
    objects: int
    #: event records read (kept or not)
    events: int
    #: live objects left out because an ancestor is missing (only with ``require_parents``)
    orphans: list[int]


class Planner:
    """Folds a chain's events in log order (``add``), then says which to keep (``plan``).

    Feed it only events of committed (accepted) transactions, never seals. For a salvage of a
    damaged log, feed it the intact events and plan with ``require_parents``.
    """

    def __init__(self, chain_id: bytes, root_write: WriteOption) -> None:
        self.index = ChainIndex(chain_id=chain_id, root_write=root_write)
        self._history: dict[int, _History] = {}
        self._keyless: list[int] = []
        self.events = 0

    def add(self, position: int, hdr: EventHeader) -> None:
        self.events += 1
        objects = self.index.objects
        key = hdr.key
        prev = objects.get(key) if key is not None else None
        prev_pos = prev.position if prev is not None else -1
        change = self.index.apply(Located(hdr, None, position=position))
        if change is None:
            if _pubs(hdr):
                self._keyless.append(position)
            return
        what, key = change
        if what != "put":
            if len(self._history) > 2 * len(objects) + 4096:
                self._history = {k: v for k, v in self._history.items() if k in objects}
            return
        flags, pubs = _flags(hdr), _pubs(hdr)
        hist = self._history.get(key) if prev is not None else None
        if hist is None:  # a new object (or one created again after its deletion)
            self._history[key] = _History(flags, pubs)
            return
        # the previous newest event becomes an older one
        if hist.flags & _AUTH:
            hist.last_auth = prev_pos
        if hist.flags & _PARENT:
            hist.last_parent = prev_pos
        if hist.flags & _TYPE:
            hist.last_type = prev_pos
        if hist.pubs:
            hist.older_pubs.append((prev_pos, hist.pubs))
        hist.flags, hist.pubs = flags, pubs

    def plan(self, *, require_parents: bool = False) -> Plan:
        objects = self.index.objects
        depth: dict[int, int] = {}

        def depth_of(key: int) -> int:
            """Depth of ``key`` in the parent tree; -1 when an ancestor is missing (or cycles)."""
            path: list[int] = []
            k: int | None = key
            d = 0
            while k is not None:
                known = depth.get(k)
                if known is not None:
                    d = known + 1 if known >= 0 else -1
                    break
                info = objects.get(k)
                if info is None:
                    d = -1
                    break
                path.append(k)
                if len(path) > len(objects):
                    d = -1  # a cycle of parent links
                    break
                k = info.parent
            else:
                d = 0
            # assign depths back down the path: the topmost gets d, each child one more
            for i, pk in enumerate(reversed(path)):
                depth[pk] = -1 if d < 0 else d + i
            return depth[key]

        order: list[tuple[int, int, int]] = [(-1, 0, p) for p in self._keyless]
        orphans: list[int] = []
        for key, info in objects.items():
            d = depth_of(key)
            if d < 0:
                if require_parents:
                    orphans.append(key)
                    continue
                d = 0
            coll = info.collection
            order.append((d, coll, info.position))
            hist = self._history.get(key)
            if hist is None:
                continue
            older: set[int] = set()
            if not hist.flags & _AUTH and info.auth is not None and hist.last_auth >= 0:
                older.add(hist.last_auth)
            if not hist.flags & _PARENT and info.parent is not None and hist.last_parent >= 0:
                older.add(hist.last_parent)
            if not hist.flags & _TYPE and info.type_name is not None and hist.last_type >= 0:
                older.add(hist.last_type)
            for pos, pubs in hist.older_pubs:
                if not pubs <= hist.pubs:
                    older.add(pos)
            order.extend((d, coll, p) for p in older)
        order.sort()
        return Plan(
            positions=[p for _, _, p in order],
            objects=len(objects) - len(orphans),
            events=self.events,
            orphans=orphans,
        )


def plan_compaction(
    chain_id: bytes,
    root_write: WriteOption,
    events: Iterable[tuple[int, EventHeader]],
    *,
    require_parents: bool = False,
) -> Plan:
    """The plan for ``events`` (position, header) in log order."""
    planner = Planner(chain_id, root_write)
    for position, hdr in events:
        planner.add(position, hdr)
    return planner.plan(require_parents=require_parents)


#: a compaction is worth its work when at least this share of the log is garbage, and this much
GARBAGE_SHARE = 0.1
GARBAGE_MIN = 2 * 1024 * 1024


#: what one live object's newest event takes in the log besides page data: the frame, its
#: metadata and, for inodes and names, their small encrypted payloads (measured: 250-400 bytes)
LIVE_EVENT_BYTES = 300


def live_estimate(page_bytes: int, objects: int) -> int:
    """What a compaction must keep: the live pages' data and one event per live object."""
    return page_bytes + LIVE_EVENT_BYTES * objects


def worth_compacting(log_size: int, live_bytes: int) -> bool:
    """Whether a compaction would reclaim enough to be worth its work: ``live_bytes`` is what it
    must keep (``live_estimate``). A log that only grew with new data - a large file or many
    small ones just written - is left as it is."""
    garbage = log_size - live_bytes
    return garbage >= GARBAGE_MIN and garbage >= GARBAGE_SHARE * log_size
