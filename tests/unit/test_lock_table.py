"""The pure lock table (domain/locks.py): POSIX split, merge and conversion, conflicts,
flock-style whole-file locks, waiters served first come first served, deadlock detection; and a
hypothesis state machine against a byte-by-byte reference model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from domain.locks import EOF, Held, Kind, LockTable, Waiter, check_range, gaps

R, W, U = Kind.READ, Kind.WRITE, Kind.UNLOCK
K = "file"


def spans(t: LockTable[str, str], owner: str, key: str = K) -> list[tuple[int, int, Kind]]:
    return [(h.start, h.end, h.kind) for h in t.owned(key, owner)]


def test_unlock_in_the_middle_splits_and_relocking_merges() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", W, 0, 100)
    t.set(K, "a", U, 40, 60)
    assert spans(t, "a") == [(0, 40, W), (60, 100, W)]
    t.set(K, "a", R, 40, 60)
    assert spans(t, "a") == [(0, 40, W), (40, 60, R), (60, 100, W)]
    t.set(K, "a", W, 40, 60)
    assert spans(t, "a") == [(0, 100, W)]
    assert t.span_count == 1


def test_adjacent_and_overlapping_locks_of_one_kind_merge_other_kinds_do_not() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", R, 0, 10)
    t.set(K, "a", R, 10, 20)
    t.set(K, "a", R, 15, 30)
    assert spans(t, "a") == [(0, 30, R)]
    t.set(K, "a", W, 30, 40)
    assert spans(t, "a") == [(0, 30, R), (30, 40, W)]
    t.set(K, "a", W, 5, EOF)  # converts the overlap, merges with the write lock
    assert spans(t, "a") == [(0, 5, R), (5, EOF, W)]


def test_conversion_replaces_only_the_range_and_unlock_of_nothing_is_harmless() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", R, 0, EOF)
    t.set(K, "a", W, 100, 200)
    assert spans(t, "a") == [(0, 100, R), (100, 200, W), (200, EOF, R)]
    t.set(K, "a", U, 0, EOF)
    assert spans(t, "a") == [] and t.idle(K) and t.span_count == 0
    t.set(K, "a", U, 5, 6)
    assert t.idle(K)


def test_conflicts_need_another_owner_an_overlap_and_a_writer() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", R, 0, 10)
    t.set(K, "b", R, 5, 15)  # readers share
    assert t.conflict(K, "c", R, 0, 100) is None
    blocker = t.conflict(K, "c", W, 12, 13)
    assert blocker == Held("b", R, 5, 15)
    assert t.conflict(K, "c", W, 15, 20) is None  # touching is not overlapping
    assert t.conflict(K, "a", W, 0, 5) is None  # not against itself
    assert t.conflict(K, "a", W, 0, 6) == Held("b", R, 5, 15)
    assert t.try_acquire(K, "a", W, 0, 6) == Held("b", R, 5, 15)
    assert spans(t, "a") == [(0, 10, R)], "a refused request changes nothing"
    assert t.conflict("other", "c", W, 0, EOF) is None  # keys are independent


def test_first_conflict_reported_is_the_lowest() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "b", W, 50, 60)
    t.set(K, "c", W, 10, 20)
    assert t.conflict(K, "a", R, 0, EOF) == Held("c", W, 10, 20)


def test_pid_is_kept_for_getlk() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", W, 0, 10, pid=42)
    blocker = t.conflict(K, "b", R, 0, 1)
    assert blocker is not None and blocker.pid == 42


def test_within_clips_and_holds_write() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", W, 0, 10)
    t.set(K, "a", R, 20, 30)
    assert [(h.start, h.end, h.kind) for h in t.within(K, "a", 5, 25)] == [(5, 10, W), (20, 25, R)]
    assert t.holds_write(K, "a", 5, 25) and not t.holds_write(K, "a", 10, 30)


def test_release_owner_and_release_where() -> None:
    t: LockTable[tuple[int, bool], tuple[int, int]] = LockTable()
    t.set((1, False), (1, 7), W, 0, 10)
    t.set((1, True), (1, 7), R, 0, EOF)
    t.set((2, False), (2, 7), W, 0, 10)
    dropped = t.release_where(lambda o: o[0] == 1)
    assert set(dropped) == {(1, False), (1, True)}
    assert t.keys() == [(2, False)]
    assert t.release_owner((2, False), (2, 7)) == [Held((2, 7), W, 0, 10)]
    assert t.span_count == 0


def test_bad_ranges_are_refused() -> None:
    for start, end in [(5, 5), (6, 5), (-1, 3), (0, EOF + 1)]:
        with pytest.raises(ValueError):
            check_range(start, end)
    t: LockTable[str, str] = LockTable()
    with pytest.raises(ValueError):
        t.set(K, "a", W, 10, 10)


def test_gaps() -> None:
    assert gaps(0, 100, []) == [(0, 100)]
    assert gaps(0, 100, [(10, 20), (30, 40)]) == [(0, 10), (20, 30), (40, 100)]
    assert gaps(15, 35, [(10, 20), (30, 40)]) == [(20, 30)]
    assert gaps(0, 10, [(0, 10)]) == []


# --- waiters --------------------------------------------------------------------------------------
def waiter(
    owner: str, kind: Kind, start: int = 0, end: int = EOF, key: str = K
) -> Waiter[str, str]:
    return Waiter(key, owner, kind, start, end, token=owner)


def test_waiters_are_granted_first_come_first_served_when_they_can_go() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "holder", W, 0, EOF)
    w1, r2, r3 = waiter("w1", W), waiter("r2", R), waiter("r3", R)
    for w in (w1, r2, r3):
        t.wait(w)
    t.set(K, "holder", U, 0, EOF)
    assert [w.owner for w in t.wake(K)] == ["w1"]  # the writer first; the readers still wait
    assert spans(t, "w1") == [(0, EOF, W)]
    t.release_owner(K, "w1")
    assert [w.owner for w in t.wake(K)] == ["r2", "r3"]  # both readers together
    assert not t.waiters(K)


def test_a_waiter_never_holds_back_a_later_request_that_can_go() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", R, 0, 10)
    t.wait(waiter("w", W, 0, 10))
    assert t.try_acquire(K, "r", R, 0, 10) is None  # like a local disk: readers may pass


def test_cancel_withdraws_a_waiter() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", W, 0, EOF)
    w = waiter("b", W)
    t.wait(w)
    assert t.cancel(w) and not t.cancel(w)
    t.release_owner(K, "a")
    assert t.wake(K) == [] and t.idle(K)


def test_partial_unlock_wakes_only_waiters_of_the_freed_range() -> None:
    t: LockTable[str, str] = LockTable()
    t.set(K, "a", W, 0, 100)
    low, high = waiter("low", W, 0, 10), waiter("high", W, 90, 100)
    t.wait(low)
    t.wait(high)
    t.set(K, "a", U, 80, 100)
    assert t.wake(K) == [high]
    assert low.waiting and not high.waiting


def test_deadlock_between_two_owners_is_detected() -> None:
    t: LockTable[str, str] = LockTable()
    t.set("x", "p", W, 0, 1)
    t.set("y", "q", W, 0, 1)
    t.wait(waiter("p", W, key="y"))  # p waits for q
    blocker = t.conflict("x", "q", W, 0, 1)
    assert blocker is not None and t.would_deadlock("q", blocker)  # q waiting for p: a cycle
    blocker_r = t.conflict("x", "r", W, 0, 1)
    assert blocker_r is not None and not t.would_deadlock("r", blocker_r)


def test_deadlock_through_a_chain_of_owners_and_not_through_flock_waiters() -> None:
    t: LockTable[str, str] = LockTable()
    for key, owner in (("a", "p1"), ("b", "p2"), ("c", "p3")):
        t.set(key, owner, W, 0, 1)
    t.wait(waiter("p1", W, key="b"))  # p1 -> p2
    t.wait(waiter("p2", W, key="c"))  # p2 -> p3
    blocker = t.conflict("a", "p3", W, 0, 1)
    assert blocker is not None and t.would_deadlock("p3", blocker)  # p3 -> p1 -> p2 -> p3
    f: LockTable[str, str] = LockTable()
    f.set("a", "p1", W, 0, EOF)
    f.set("b", "p2", W, 0, EOF)
    f.wait(Waiter("b", "p1", W, 0, EOF, posix=False))
    blocker = f.conflict("a", "p2", W, 0, EOF)
    assert blocker is not None and not f.would_deadlock("p2", blocker)


# --- a model-based test ---------------------------------------------------------------------------
N = 12  # bytes 0..N-1; a range ending at N runs to EOF (byte N-1 stands for everything after)
OWNERS = ["a", "b", "c"]
KEYS = ["k1", "k2"]


def to_end(end: int) -> int:
    return EOF if end == N else end


ranges = st.integers(0, N - 1).flatmap(lambda s: st.tuples(st.just(s), st.integers(s + 1, N)))


class LockTableMachine(RuleBasedStateMachine):
    """Every operation on the table, mirrored on a model that stores one kind per byte."""

    def __init__(self) -> None:
        super().__init__()
        self.table: LockTable[str, str] = LockTable()
        # (key, owner) -> per byte: None or the kind held
        self.model: dict[tuple[str, str], list[Kind | None]] = {
            (k, o): [None] * N for k in KEYS for o in OWNERS
        }
        self.queue: list[Waiter[str, str]] = []  # the model's waiters, in arrival order

    def model_set(self, key: str, owner: str, kind: Kind | None, start: int, end: int) -> None:
        for i in range(start, min(end, N)):
            self.model[(key, owner)][i] = kind

    def woken(self, key: str) -> None:
        """After a change of ``key``: the table grants exactly the model's FIFO choice."""
        expect = []
        for w in list(self.queue):
            end = N if w.end == EOF else w.end
            if w.key == key and not self.model_conflict(key, w.owner, w.kind, w.start, end):
                self.queue.remove(w)
                self.model_set(key, w.owner, w.kind, w.start, end)
                expect.append(w)
        assert self.table.wake(key) == expect

    def model_conflict(self, key: str, owner: str, kind: Kind, start: int, end: int) -> bool:
        for other in OWNERS:
            if other == owner:
                continue
            for i in range(start, end):
                held = self.model[(key, other)][i]
                if held is not None and (held is W or kind is W):
                    return True
        return False

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS), kind=st.sampled_from([R, W]),
          rng=ranges)  # fmt: skip
    def lock(self, key: str, owner: str, kind: Kind, rng: tuple[int, int]) -> None:
        start, end = rng
        expect = self.model_conflict(key, owner, kind, start, end)
        blocker = self.table.try_acquire(key, owner, kind, start, to_end(end))
        assert (blocker is not None) == expect
        if blocker is not None:
            assert blocker.owner != owner
            assert blocker.overlaps(start, to_end(end))
            assert W in (blocker.kind, kind)
            return
        self.model_set(key, owner, kind, start, end)
        self.woken(key)  # a conversion to READ may free others

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS), kind=st.sampled_from([R, W]),
          rng=ranges)  # fmt: skip
    def wait(self, key: str, owner: str, kind: Kind, rng: tuple[int, int]) -> None:
        start, end = rng
        if not self.model_conflict(key, owner, kind, start, end):
            return
        w: Waiter[str, str] = Waiter(key, owner, kind, start, to_end(end))
        self.table.wait(w)
        self.queue.append(w)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.queue:
            return
        w = data.draw(st.sampled_from(self.queue))
        assert self.table.cancel(w)
        self.queue.remove(w)

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS), rng=ranges)
    def unlock(self, key: str, owner: str, rng: tuple[int, int]) -> None:
        start, end = rng
        self.table.set(key, owner, U, start, to_end(end))
        self.model_set(key, owner, None, start, end)
        self.woken(key)

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS))
    def release(self, key: str, owner: str) -> None:
        self.table.release_owner(key, owner)
        self.model[(key, owner)] = [None] * N
        self.woken(key)

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS), kind=st.sampled_from([R, W]),
          rng=ranges)  # fmt: skip
    def test_lock(self, key: str, owner: str, kind: Kind, rng: tuple[int, int]) -> None:
        start, end = rng
        got = self.table.conflict(key, owner, kind, start, to_end(end))
        assert (got is not None) == self.model_conflict(key, owner, kind, start, end)

    @invariant()
    def matches_the_model(self) -> None:
        total = 0
        for (key, owner), bytes_ in self.model.items():
            held = self.table.owned(key, owner)
            total += len(held)
            covered: list[Kind | None] = [None] * N
            for h in held:
                assert h.owner == owner
                for i in range(h.start, min(h.end, N)):
                    covered[i] = h.kind
                if h.end == EOF:
                    assert h.start < N
                else:
                    assert h.end < N, "a finite range never reaches the model's EOF byte"
            assert covered == bytes_
            for a, b in itertools.pairwise(held):
                assert a.end <= b.start, "sorted and disjoint"
                assert not (a.end == b.start and a.kind is b.kind), "touching locks merged"
        assert total == self.table.span_count

    @invariant()
    def waiters_match(self) -> None:
        for key in KEYS:
            assert self.table.waiters(key) == [w for w in self.queue if w.key == key]

    @invariant()
    def no_two_owners_conflict(self) -> None:
        for key in KEYS:
            for h in self.table.holders(key):
                assert self.table.conflict(key, h.owner, h.kind, h.start, h.end) is None


LockTableMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_lock_table_matches_a_byte_model = LockTableMachine.TestCase
