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

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from domain.chain import ChainIndex, Located
from domain.events import (
    Authorization,
    EventHeader,
    Parent,
    PublicKey,
    Tombstone,
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


# --- what stays when the order must stay (the chain server; docs/adr/0007) -----------------------
@dataclass(frozen=True, slots=True)
class _Version:
    key: int
    incarnation: int  # position of the first event of this life of the object
    parent: int | None  # the object's parent once this event applied
    last_auth: int  # newest event of this life up to here carrying each inheritable kind
    last_parent: int
    last_type: int


class InOrderPlanner:
    """What a compaction keeps when it may neither reorder nor re-seal the kept events (a chain
    server's log: signatures cover whole transactions, the server-order head every event):
    ``add`` the events in log order, then ``plan`` gives the positions to keep, ascending.

    It keeps the plan of ``Planner`` (the newest version of every live object, what it
    inherits, public keys) and closes it over log order, so that the kept events replayed in
    order meet every check they met the first time:

    * for a kept event of an object at position p: the version of each of its ancestors live at
      p (its parent exists, its authorisation is found up the same chain), and the older events
      of its own life carrying a kind it inherits (Authorization, Parent, Type);
    * for a kept event of a life that a deletion ended (its own tombstone or an ancestor's): the
      last version of that life and the tombstone that ended it (and what that one needs);
    * for a kept tombstone at t: the version live at t of every object that has a kept event
      before t and lives on after it (so the deletion cascades over exactly what it did).

    ``check_in_order`` verifies a plan; a caller compacts only when it holds.
    """

    def __init__(self, chain_id: bytes, root_write: WriteOption) -> None:
        self._planner = Planner(chain_id, root_write)
        self._versions: dict[int, _Version] = {}  # position -> version (puts)
        self._history: dict[int, list[int]] = {}  # key -> positions of its puts, ascending
        self._ended: dict[tuple[int, int], int] = {}  # (key, incarnation) -> tombstone position
        self._tombstones: dict[int, int] = {}  # tombstone position -> key it deletes
        self._life: dict[int, int] = {}  # key -> incarnation of its current life

    def add(self, position: int, hdr: EventHeader) -> None:
        index = self._planner.index
        key = hdr.key
        tomb = hdr.find(Tombstone)
        if tomb is not None and tomb.key in index.objects:
            self._tombstones[position] = tomb.key
            stack = [tomb.key]
            while stack:  # the life of every object the deletion cascades over ends here
                k = stack.pop()
                life = self._life.pop(k, None)
                if life is not None:
                    self._ended[(k, life)] = position
                stack.extend(index.children.get(k, ()))
        prev = self._versions.get(index.objects[key].position) if key in index.objects else None
        self._planner.add(position, hdr)
        if key is None or tomb is not None:
            return
        info = index.objects.get(key)
        if info is None:
            return
        life = self._life.setdefault(key, position)
        if prev is not None and prev.incarnation != life:
            prev = None
        self._versions[position] = _Version(
            key,
            life,
            info.parent,
            position if hdr.find(Authorization) is not None else (prev.last_auth if prev else -1),
            position if hdr.find(Parent) is not None else (prev.last_parent if prev else -1),
            position if hdr.find(Type) is not None else (prev.last_type if prev else -1),
        )
        self._history.setdefault(key, []).append(position)

    def _before(self, key: int, position: int) -> int:
        """The position of ``key``'s newest put before ``position`` (-1: none)."""
        puts = self._history.get(key)
        if not puts:
            return -1
        i = bisect.bisect_left(puts, position)
        return puts[i - 1] if i else -1

    def _needs(self, position: int) -> set[int]:
        """What a kept event at ``position`` needs before (or as) it."""
        out: set[int] = set()
        v = self._versions.get(position)
        key = v.key if v is not None else self._tombstones.get(position)
        if key is None:
            return out
        if v is not None:
            out.update(p for p in (v.last_auth, v.last_parent, v.last_type) if p >= 0)
            end = self._ended.get((v.key, v.incarnation))
            if end is not None:
                out.add(end)
                last = self._before(v.key, end)
                if last >= 0:
                    out.add(last)
            parent = v.parent
        else:  # a tombstone: the object it deletes, as it was then, and its chain
            own = self._before(key, position)
            if own >= 0:
                out.add(own)
            parent = self._versions[own].parent if own >= 0 else None
        seen = 0
        while parent is not None and seen <= len(self._history):
            at = self._before(parent, position)
            if at < 0:
                break
            out.add(at)
            parent = self._versions[at].parent
            seen += 1
        out.discard(position)
        return out

    def plan(self) -> list[int]:
        kept = set(self._planner.plan().positions)
        work = list(kept)
        while True:
            while work:
                for p in self._needs(work.pop()):
                    if p not in kept:
                        kept.add(p)
                        work.append(p)
            # a kept deletion must cascade over what it did: the state at it of every object
            # kept before it and living on after it
            for t in sorted(p for p in kept if p in self._tombstones):
                for key, puts in self._history.items():
                    at = self._before(key, t)
                    if at < 0 or at in kept or not any(p in kept for p in puts if p < t):
                        continue
                    if any(p in kept for p in puts if p > t):
                        kept.add(at)
                        work.append(at)
            if not work:
                return sorted(kept)


def check_in_order(
    chain_id: bytes,
    root_write: WriteOption,
    events: Sequence[tuple[int, EventHeader]],
    kept: Iterable[int],
) -> str | None:
    """Whether replaying only the ``kept`` events of ``events`` (position, header; log order)
    in order finds every parent it names and ends with the same live objects (key, parent,
    collection, authorisation, type) and public keys as replaying them all: None, or what
    differs."""
    full = ChainIndex(chain_id=chain_id, root_write=root_write)
    part = ChainIndex(chain_id=chain_id, root_write=root_write)
    keep = set(kept)
    for position, hdr in events:
        full.apply(Located(hdr, None, position=position))
        if position not in keep:
            continue
        parent = hdr.find(Parent)
        if hdr.key is not None and parent is not None and parent.parent not in part.objects:
            return f"the event at {position} names parent {parent.parent}, which is missing"
        part.apply(Located(hdr, None, position=position))

    def shape(index: ChainIndex) -> dict[int, tuple[object, ...]]:
        return {k: (i.parent, i.collection, i.auth, i.type_name) for k, i in index.objects.items()}

    a, b = shape(full), shape(part)
    if a != b:
        diff = sorted(set(a) ^ set(b)) or sorted(k for k in a if a[k] != b[k])
        return f"the live objects differ (keys {diff[:8]})"
    if full.public_keys != part.public_keys:
        return "the public keys differ"
    return None
