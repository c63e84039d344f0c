"""What a compaction keeps when it may neither reorder nor re-seal (the chain server's case,
docs/adr/0007 "The chain server's and replicas' logs"): ``InOrderPlanner`` and its check
``check_in_order`` in domain/compaction_in_order.py. The server's compaction is not built yet;
this is the rule it will use, checked on a file system's real history and on random histories."""

from __future__ import annotations

import random

import pytest

from domain.compaction import Planner
from domain.compaction_in_order import InOrderPlanner, check_in_order
from domain.events import (
    Authorization,
    DataKey,
    EventHeader,
    Parent,
    ReadEveryone,
    Tombstone,
    Type,
    WriteEveryone,
    make_header,
)
from domain.formats import Format

from .conftest import Rig
from .test_compaction import busy_tree

CHAIN = b"c" * 16
ROOT = WriteEveryone()


def plan(events: list[tuple[int, EventHeader]]) -> list[int]:
    p = InOrderPlanner(CHAIN, ROOT)
    for pos, hdr in events:
        p.add(pos, hdr)
    return p.plan()


def random_history(seed: int, n: int = 150) -> list[tuple[int, EventHeader]]:
    """Creations (also of deleted keys again), updates with and without the inherited kinds,
    moves and deletions of subtrees, each event valid when it is written."""
    rng = random.Random(seed)
    live: dict[int, int | None] = {}  # key -> parent
    dead: list[int] = []
    events: list[tuple[int, EventHeader]] = []
    next_key = 1

    def subtree(k: int) -> set[int]:
        out, grew = {k}, True
        while grew:
            more = {c for c, p in live.items() if p in out} - out
            grew = bool(more)
            out |= more
        return out

    for i in range(n):
        op = rng.random()
        meta: list = []  # type: ignore[type-arg]
        if not live or op < 0.3:
            if dead and rng.random() < 0.3:
                key = dead.pop(rng.randrange(len(dead)))
            else:
                key, next_key = next_key, next_key + 1
            parent = rng.choice([None, *live]) if live else None
            meta = [DataKey(key), Type("t")]
            if parent is not None:
                meta.append(Parent(parent, rng.randrange(1, 4)))
            live[key] = parent
        elif op < 0.65:  # an update, restating some kinds
            key = rng.choice(list(live))
            meta = [DataKey(key)]
            if rng.random() < 0.5:
                meta.append(Type("t"))
            if live[key] is not None and rng.random() < 0.4:
                meta.append(Parent(live[key], 1))
            if rng.random() < 0.2:
                meta.append(Authorization(ReadEveryone(), WriteEveryone()))
        elif op < 0.85:  # a move
            key = rng.choice(list(live))
            targets = [k for k in live if k not in subtree(key)]
            if not targets:
                continue
            q = rng.choice(targets)
            meta = [DataKey(key), Parent(q, 1)]
            live[key] = q
        else:  # a deletion of a subtree
            key = rng.choice(list(live))
            for k in subtree(key):
                del live[k]
                dead.append(k)
            meta = [Tombstone(key), Type("t")]
        events.append((i * 10, make_header(meta, Format.MPACK, b"%d" % i)))
    return events


@pytest.mark.parametrize("seed", range(300))
def test_the_kept_events_replay_in_order_to_the_same_state(seed: int) -> None:
    events = random_history(seed)
    kept = plan(events)
    assert kept == sorted(set(kept)) and set(kept) <= {p for p, _ in events}
    assert check_in_order(CHAIN, ROOT, events, kept) is None


def test_reordering_rules_alone_would_not_do() -> None:
    """The check can fail: the plan of a reordering compaction, kept in log order, breaks on
    some random histories (a child kept before the version of its parent)."""
    broken = 0
    for seed in range(300):
        events = random_history(seed)
        planner = Planner(CHAIN, ROOT)
        for pos, hdr in events:
            planner.add(pos, hdr)
        naive = sorted(planner.plan().positions)
        broken += check_in_order(CHAIN, ROOT, events, naive) is not None
    assert broken > 30


def test_a_rewritten_file_system_keeps_little_more_than_its_live_objects(rig: Rig) -> None:
    busy_tree(rig)
    rig.fs.sync_all()
    session = rig.mounted.session
    events = [(rec.position, session.parse(rec)) for rec in session.log.scan() if not rec.commit]
    kept = plan(events)
    assert check_in_order(CHAIN, ROOT, events, kept) is None
    live = len(session.index.objects)
    assert live <= len(kept) <= live + len(events) // 4, (live, len(kept), len(events))
