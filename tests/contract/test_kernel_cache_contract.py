"""The ``KernelCache`` and ``RefusalRecord`` ports' contracts (application/ports/remote.py).

``KernelCache``: the twin ``MemoryKernelCache``; the pyfuse3 adapter (``FuseKernelCache``)
only where it needs no kernel mount (an empty invalidation returns at once, touching nothing),
and its worker with the kernel's calls replaced (``forget``): ``invalidate`` never waits for the
kernel, ``settled`` does (docs/adr/0009, "Kernel caches"). What it does with a mount (the kernel
forgets; a second mount sees a remote change; no hang while both create in one directory) is
checked by the mount tier (tests/mount/test_replication.py, test_concurrent_creates.py).

``RefusalRecord``: the file adapter (``FileRefusalRecord``) and the twin
(``MemoryRefusalRecord``). See docs/adr/0017-ports-and-twins.md."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from adapters.memory import MemoryKernelCache, MemoryRefusalRecord
from adapters.refusals import FileRefusalRecord
from adapters.remote import FuseKernelCache
from application.ports import KernelCache, RefusalRecord

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- KernelCache ---------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "fuse"])
def kernel(request: pytest.FixtureRequest) -> KernelCache:
    return MemoryKernelCache() if request.param == "memory" else FuseKernelCache()


class TestKernelCacheContract:
    async def test_forgetting_nothing_returns_and_changes_nothing(
        self, kernel: KernelCache
    ) -> None:
        assert await kernel.invalidate(set(), set()) is None
        await asyncio.wait_for(kernel.settled(), 5)
        if isinstance(kernel, MemoryKernelCache):
            assert (kernel.inodes, kernel.entries) == (set(), set())
        await kernel.close()
        await kernel.close()  # twice is harmless


class _BusyKernel:
    """The kernel's calls as the worker makes them, each held until ``release`` (as the kernel
    holds an entry invalidation while a create in that directory waits for its answer)."""

    def __init__(self) -> None:
        self.rounds: list[tuple[list[int], list[tuple[int, bytes]]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next = False

    def __call__(self, inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
        self.rounds.append((inodes, entries))
        self.entered.set()
        assert self.release.wait(20), "never released"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a bug in a round")


async def test_invalidate_never_waits_for_the_kernel_and_settled_does() -> None:
    busy = _BusyKernel()
    kernel = FuseKernelCache(forget=busy)
    try:
        await asyncio.wait_for(kernel.invalidate({5}, {(1, b"a")}), 1)
        assert await asyncio.to_thread(busy.entered.wait, 5)  # the kernel holds the first round
        # asked while the kernel is busy: returns at once, merged into one next round
        await asyncio.wait_for(kernel.invalidate({7}, {(1, b"b")}), 1)
        await asyncio.wait_for(kernel.invalidate({7, 9}, {(1, b"b"), (5, b"c")}), 1)
        waiting = asyncio.ensure_future(kernel.settled())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # settled waits for what was asked before it
        assert busy.rounds == [([5], [(1, b"a")])]
        busy.release.set()
        await asyncio.wait_for(waiting, 5)
        assert busy.rounds == [([5], [(1, b"a")]), ([7, 9], [(1, b"b"), (5, b"c")])]
    finally:
        busy.release.set()
        await kernel.close()


async def test_a_failed_round_does_not_stop_the_worker() -> None:
    busy = _BusyKernel()
    busy.release.set()
    busy.fail_next = True
    kernel = FuseKernelCache(forget=busy)
    try:
        await kernel.invalidate({1}, set())
        await asyncio.wait_for(kernel.settled(), 5)
        await kernel.invalidate({2}, set())
        await asyncio.wait_for(kernel.settled(), 5)
        assert busy.rounds == [([1], []), ([2], [])]
    finally:
        await kernel.close()


async def test_close_forgets_what_is_queued_then_nothing_more() -> None:
    busy = _BusyKernel()
    kernel = FuseKernelCache(forget=busy)
    await kernel.invalidate({1}, set())
    assert await asyncio.to_thread(busy.entered.wait, 5)
    await kernel.invalidate({2}, set())
    closing = asyncio.ensure_future(kernel.close())
    await asyncio.sleep(0.1)
    busy.release.set()
    await asyncio.wait_for(closing, 10)
    assert busy.rounds == [([1], []), ([2], [])]
    await kernel.invalidate({3}, set())  # unmounted: nothing goes to the kernel any more
    await asyncio.wait_for(kernel.settled(), 1)
    assert busy.rounds == [([1], []), ([2], [])]


async def test_close_is_bounded_when_the_kernel_never_answers() -> None:
    busy = _BusyKernel()
    kernel = FuseKernelCache(forget=busy)
    kernel.CLOSE_SECONDS = 0.2
    try:
        await kernel.invalidate({1}, set())
        assert await asyncio.to_thread(busy.entered.wait, 5)
        waiting = asyncio.ensure_future(kernel.settled())
        await asyncio.wait_for(kernel.close(), 5)
        await asyncio.wait_for(waiting, 1)  # nobody is left waiting on a kernel that hangs
    finally:
        busy.release.set()


async def test_the_twin_records_what_it_was_told_to_forget() -> None:
    kernel = MemoryKernelCache()
    await kernel.invalidate({5, 7}, {(1, b"a")})
    await kernel.invalidate({7}, {(1, b"b"), (5, b"c")})
    assert kernel.inodes == {5, 7}
    assert kernel.entries == {(1, b"a"), (1, b"b"), (5, b"c")}
    assert kernel.forgotten(5) and not kernel.forgotten(1)
    assert kernel.calls == [
        (frozenset({5, 7}), frozenset({(1, b"a")})),
        (frozenset({7}), frozenset({(1, b"b"), (5, b"c")})),
    ]


# --- RefusalRecord --------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "file"])
def refusals(request: pytest.FixtureRequest, tmp_path: Path) -> RefusalRecord:
    if request.param == "memory":
        return MemoryRefusalRecord()
    return FileRefusalRecord(tmp_path / "local.refused")


class TestRefusalRecordContract:
    def test_nothing_recorded_is_no_entry(self, refusals: RefusalRecord) -> None:
        assert refusals.entries() == []

    def test_every_refusal_is_an_entry_oldest_first(self, refusals: RefusalRecord) -> None:
        reasons = ["a forged history at 4096", "a forked history: heads differ", "é ✓"]
        for reason in reasons:
            refusals.record(reason)
        entries = refusals.entries()
        assert len(entries) == len(reasons)
        for entry, reason in zip(entries, reasons, strict=True):
            assert entry.endswith(reason)


def test_the_file_record_outlives_its_object(tmp_path: Path) -> None:
    FileRefusalRecord(tmp_path / "local.refused").record("kept on disk")
    assert FileRefusalRecord(tmp_path / "local.refused").entries()[0].endswith("kept on disk")
