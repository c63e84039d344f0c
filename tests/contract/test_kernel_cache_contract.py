"""The ``KernelCache`` and ``RefusalRecord`` ports' contracts (application/ports/remote.py).

``KernelCache``: the twin ``MemoryKernelCache``; the pyfuse3 adapter (``FuseKernelCache``)
only where it needs no kernel mount (an empty invalidation returns at once, touching nothing).
What it does with a mount (the kernel forgets; a second mount sees a remote change) is checked
by the mount tier (tests/mount/test_replication.py), not here.

``RefusalRecord``: the file adapter (``FileRefusalRecord``) and the twin
(``MemoryRefusalRecord``). See docs/adr/0017-ports-and-twins.md."""

from __future__ import annotations

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
        if isinstance(kernel, MemoryKernelCache):
            assert (kernel.inodes, kernel.entries) == (set(), set())


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
