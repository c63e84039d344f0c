"""Byte-range and whole-file locks: a pure lock table with POSIX semantics (docs/adr/0010).

One ``LockTable`` holds the locks of many *keys* (whatever the caller locks: the server uses
``(object key, flock?)``, a mount the same) and *owners* (any hashable: the kernel's lock owner on
a mount, ``(session, owner)`` on the server). It is used in two places:

* on the chain server (and in the in-process coordinator of a local-only mount), with waiters:
  the one table that decides every grant;
* on a mount, without waiters, as the mirror of what the server granted to this mount's owners
  (fast answers to local conflicts and F_GETLK, and what to reclaim after a reconnect).

Semantics (those of Linux's ``fs/locks.c`` for POSIX locks):

* a lock is a range ``[start, end)`` (``end == EOF``: to the end of the file, however far it
  grows) of a kind: ``READ`` (shared) or ``WRITE`` (exclusive). Two locks conflict when their
  owners differ, their ranges overlap and at least one is a WRITE lock. An owner never conflicts
  with itself;
* ``set(owner, kind, range)`` replaces whatever the owner held in the range: a new kind converts,
  ``UNLOCK`` removes; pieces of the owner's locks outside the range stay (an unlock in the middle
  splits a lock in two). Afterwards the owner's locks are sorted, never overlap, and adjacent or
  overlapping locks of one kind are merged into one;
* a request is all or nothing: when any part conflicts, nothing changes (``try_acquire``);
* waiters (``wait`` / ``wake``) are served first come, first served: after a change of a key,
  every waiter of that key that no longer conflicts is granted, in the order they arrived, each
  seeing the grants before it. A request is never held back by a waiter that arrived before it
  but cannot be granted yet: that is the local-disk behaviour, and holding it back could create
  deadlocks a local disk does not have;
* deadlock detection (``would_deadlock``, for POSIX locks: flock locks have none on Linux either):
  a request whose blocker waits, directly or through at most ``MAX_DEADLOCK_STEPS`` other
  waiting owners, for the requester is refused (EDEADLK).

flock(2) locks use the same table under their own keys, always over ``[0, EOF)``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # what is locked
O = TypeVar("O", bound=Hashable)  # who holds it  # noqa: E741

#: the exclusive end of a range that runs to the end of the file: the kernel's OFFSET_MAX
#: (2**63 - 1; a finite range never reaches it, as no byte of a file lies at OFFSET_MAX)
EOF = (1 << 63) - 1
#: how many waiting owners deadlock detection follows (Linux: MAX_DEADLK_ITERATIONS)
MAX_DEADLOCK_STEPS = 10


class Kind(enum.IntEnum):
    UNLOCK = 0
    READ = 1
    WRITE = 2


def check_range(start: int, end: int) -> None:
    """``ValueError`` unless ``0 <= start < end <= EOF``."""
    if not 0 <= start < end <= EOF:
        raise ValueError(f"not a lock range: [{start}, {end})")


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


@dataclass(frozen=True, slots=True)
class Held(Generic[O]):
    """A lock an owner holds: ``[start, end)`` of ``kind``; ``pid`` is reported by F_GETLK."""

    owner: O
    kind: Kind
    start: int
    end: int
    pid: int = 0

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end

    def conflicts(self, owner: O, kind: Kind, start: int, end: int) -> bool:
        return (
            self.owner != owner
            and (self.kind is Kind.WRITE or kind is Kind.WRITE)
            and self.overlaps(start, end)
        )


@dataclass(eq=False, slots=True)
class Waiter(Generic[K, O]):
    """A request waiting for a key; ``token`` is the caller's (who to tell when granted)."""

    key: K
    owner: O
    kind: Kind
    start: int
    end: int
    pid: int = 0
    token: object = None
    #: whether this owner's wait counts in deadlock detection (POSIX locks; not flock)
    posix: bool = True
    waiting: bool = field(default=False, init=False)


@dataclass(slots=True)
class _KeyState(Generic[K, O]):
    held: dict[O, list[Held[O]]] = field(default_factory=dict)  # owner -> sorted, merged
    waiters: list[Waiter[K, O]] = field(default_factory=list)  # arrival order


class LockTable(Generic[K, O]):
    def __init__(self) -> None:
        self._keys: dict[K, _KeyState[K, O]] = {}
        self._waiting_owners: dict[O, list[Waiter[K, O]]] = {}  # posix waiters by owner
        #: locks held in the whole table (a server caps it)
        self.span_count = 0

    # -- reading ---------------------------------------------------------------------------------
    def keys(self) -> list[K]:
        return list(self._keys)

    def holders(self, key: K) -> list[Held[O]]:
        """Every lock on ``key``, by owner then start."""
        st = self._keys.get(key)
        if st is None:
            return []
        return [h for spans in st.held.values() for h in spans]

    def owned(self, key: K, owner: O) -> list[Held[O]]:
        """The owner's locks on ``key``, sorted by start."""
        st = self._keys.get(key)
        if st is None:
            return []
        return list(st.held.get(owner, ()))

    def within(self, key: K, owner: O, start: int, end: int) -> list[Held[O]]:
        """The owner's locks on ``key`` clipped to ``[start, end)``, sorted."""
        return [
            replace(h, start=max(h.start, start), end=min(h.end, end))
            for h in self.owned(key, owner)
            if h.overlaps(start, end)
        ]

    def owners(self, key: K) -> list[O]:
        st = self._keys.get(key)
        return list(st.held) if st is not None else []

    def holds_write(self, key: K, owner: O, start: int = 0, end: int = EOF) -> bool:
        """Whether the owner holds a WRITE lock overlapping ``[start, end)``."""
        return any(h.kind is Kind.WRITE and h.overlaps(start, end) for h in self.owned(key, owner))

    def conflict(self, key: K, owner: O, kind: Kind, start: int, end: int) -> Held[O] | None:
        """The first lock of another owner that conflicts with the request (lowest start)."""
        st = self._keys.get(key)
        if st is None or kind is Kind.UNLOCK:
            return None
        found: Held[O] | None = None
        for other, spans in st.held.items():
            if other == owner:
                continue
            for h in spans:
                if h.start >= end:
                    break
                if h.conflicts(owner, kind, start, end):
                    if found is None or h.start < found.start:
                        found = h
                    break
        return found

    def idle(self, key: K) -> bool:
        """No lock and no waiter on ``key``."""
        return key not in self._keys

    def waiters(self, key: K) -> list[Waiter[K, O]]:
        st = self._keys.get(key)
        return list(st.waiters) if st is not None else []

    def __iter__(self) -> Iterator[tuple[K, Held[O]]]:
        for key, st in self._keys.items():
            for spans in st.held.values():
                for h in spans:
                    yield key, h

    # -- changing --------------------------------------------------------------------------------
    def set(self, key: K, owner: O, kind: Kind, start: int, end: int, pid: int = 0) -> None:
        """The owner's locks in ``[start, end)`` become ``kind`` (``UNLOCK``: none), whatever
        other owners hold: check ``conflict`` first (or use ``try_acquire``)."""
        check_range(start, end)
        st = self._keys.get(key)
        if st is None:
            if kind is Kind.UNLOCK:
                return
            st = self._keys[key] = _KeyState()
        old = st.held.get(owner, [])
        out: list[Held[O]] = []
        for h in old:
            if not h.overlaps(start, end):
                out.append(h)
                continue
            if h.start < start:
                out.append(replace(h, end=start))
            if h.end > end:
                out.append(replace(h, start=end))
        if kind is not Kind.UNLOCK:
            out.append(Held(owner, kind, start, end, pid))
        merged = _merge(
            sorted(out, key=lambda h: h.start), pid if kind is not Kind.UNLOCK else None
        )
        self.span_count += len(merged) - len(old)
        if merged:
            st.held[owner] = merged
        else:
            st.held.pop(owner, None)
        self._forget_if_idle(key, st)

    def try_acquire(
        self, key: K, owner: O, kind: Kind, start: int, end: int, pid: int = 0
    ) -> Held[O] | None:
        """Set the lock unless it conflicts; the conflicting lock (nothing changed) or None."""
        blocker = self.conflict(key, owner, kind, start, end)
        if blocker is None:
            self.set(key, owner, kind, start, end, pid)
        return blocker

    def release_owner(self, key: K, owner: O) -> list[Held[O]]:
        """Drop every lock of the owner on ``key``; what it held."""
        st = self._keys.get(key)
        if st is None:
            return []
        old = st.held.pop(owner, [])
        self.span_count -= len(old)
        self._forget_if_idle(key, st)
        return old

    def release_where(self, pred: Callable[[O], bool]) -> dict[K, list[Held[O]]]:
        """Drop every lock whose owner matches ``pred``; what was dropped, by key."""
        dropped: dict[K, list[Held[O]]] = {}
        for key in list(self._keys):
            st = self._keys[key]
            for owner in [o for o in st.held if pred(o)]:
                dropped.setdefault(key, []).extend(self.release_owner(key, owner))
        return dropped

    def _forget_if_idle(self, key: K, st: _KeyState[K, O]) -> None:
        if not st.held and not st.waiters:
            self._keys.pop(key, None)

    # -- waiting ---------------------------------------------------------------------------------
    def wait(self, waiter: Waiter[K, O]) -> None:
        """Queue a request that conflicts (see ``wake``)."""
        check_range(waiter.start, waiter.end)
        st = self._keys.get(waiter.key)
        if st is None:
            st = self._keys[waiter.key] = _KeyState()
        st.waiters.append(waiter)
        waiter.waiting = True
        if waiter.posix:
            self._waiting_owners.setdefault(waiter.owner, []).append(waiter)

    def cancel(self, waiter: Waiter[K, O]) -> bool:
        """Withdraw a waiting request; False when it is not waiting (granted or withdrawn)."""
        if not waiter.waiting:
            return False
        self._unqueue(waiter)
        st = self._keys.get(waiter.key)
        if st is not None:
            self._forget_if_idle(waiter.key, st)
        return True

    def _unqueue(self, waiter: Waiter[K, O]) -> None:
        waiter.waiting = False
        st = self._keys.get(waiter.key)
        if st is not None and waiter in st.waiters:
            st.waiters.remove(waiter)
        if waiter.posix:
            mine = self._waiting_owners.get(waiter.owner)
            if mine is not None and waiter in mine:
                mine.remove(waiter)
                if not mine:
                    del self._waiting_owners[waiter.owner]

    def wake(self, key: K) -> list[Waiter[K, O]]:
        """Grant (and apply) every waiter of ``key`` that no longer conflicts, first come first
        served; the waiters granted, in order."""
        st = self._keys.get(key)
        if st is None or not st.waiters:
            return []
        granted: list[Waiter[K, O]] = []
        for w in list(st.waiters):
            if self.conflict(key, w.owner, w.kind, w.start, w.end) is None:
                self._unqueue(w)
                self.set(key, w.owner, w.kind, w.start, w.end, w.pid)
                granted.append(w)
        st2 = self._keys.get(key)
        if st2 is not None:
            self._forget_if_idle(key, st2)
        return granted

    def would_deadlock(self, owner: O, blocker: Held[O]) -> bool:
        """Whether ``owner`` waiting for ``blocker`` closes a cycle of waiting owners."""
        current: O = blocker.owner
        for _ in range(MAX_DEADLOCK_STEPS):
            if current == owner:
                return True
            waiting = self._waiting_owners.get(current)
            if not waiting:
                return False
            w = waiting[0]
            next_blocker = self.conflict(w.key, w.owner, w.kind, w.start, w.end)
            if next_blocker is None:
                return False
            current = next_blocker.owner
        return False

    def owner_waiting(self, owner: O) -> bool:
        return owner in self._waiting_owners


def _merge(spans: list[Held[O]], pid: int | None) -> list[Held[O]]:
    """Merge touching or overlapping locks of one kind (``spans`` sorted, of one owner)."""
    out: list[Held[O]] = []
    for h in spans:
        if out and out[-1].kind is h.kind and out[-1].end >= h.start:
            last = out[-1]
            out[-1] = Held(
                last.owner,
                last.kind,
                last.start,
                max(last.end, h.end),
                pid if pid is not None else last.pid,
            )
        else:
            out.append(h)
    return out


def gaps(start: int, end: int, covered: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[start, end)`` not covered by the sorted, disjoint ranges ``covered``."""
    out: list[tuple[int, int]] = []
    at = start
    for s, e in covered:
        if e <= at:
            continue
        if s >= end:
            break
        if s > at:
            out.append((at, s))
        at = max(at, e)
        if at >= end:
            break
    if at < end:
        out.append((at, end))
    return out
