"""What a compaction keeps when the order must stay (the chain server's log and replicas';
docs/adr/0007, "The chain server's and replicas' logs"): the server may neither reorder nor
re-seal the events it holds, so ``InOrderPlanner`` keeps, in log order, what replays to the same
state, and ``check_in_order`` checks such a plan. Pure. The server's compaction that will use it
is not built yet (issue 15)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from domain.chain import ChainIndex, Located
from domain.compaction import Planner
from domain.events import (
    Authorization,
    EventHeader,
    Parent,
    Tombstone,
    Type,
    WriteOption,
)


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
                stack.extend(index.children_of(k))
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
