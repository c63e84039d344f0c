"""Fixtures that drive the file-system service directly, without the kernel (as S3QL's tests
drive its Operations). After every test the state must pass fsck, and a fresh replay of the
log must rebuild exactly the same tree."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from adapters.clock import FakeClock
from adapters.crypto import PqCrypto
from adapters.memory.log import MemoryRedoLogFactory
from application.filesystem import FileSystemService
from application.fsck import fsck
from application.mount import Mounted, MountRequest, MountService
from application.session import Formats

FAST_KDF = (1, 8, 1)


@dataclass
class Rig:
    logs: MemoryRedoLogFactory
    clock: FakeClock
    service: MountService
    request: MountRequest
    mounted: Mounted

    @property
    def fs(self) -> FileSystemService:
        return self.mounted.fs

    def remount(self) -> FileSystemService:
        self.mounted.close()
        self.mounted = self.service.open(self.request)
        return self.fs


def tree(fs: FileSystemService) -> dict[bytes, tuple[int, int, bytes]]:
    """path -> (mode, size, contents or link target) for every name below the root."""
    out: dict[bytes, tuple[int, int, bytes]] = {}

    def walk(ino: int, prefix: bytes) -> None:
        for name, entry in sorted(fs.view.dirs.get(ino, {}).items()):
            data = fs.inode(entry.inode)
            path = prefix + b"/" + name
            if data.is_dir:
                out[path] = (data.mode, 0, b"")
                walk(entry.inode, path)
            elif data.is_link:
                out[path] = (data.mode, data.size, data.target)
            else:
                fh = fs.open(entry.inode)
                out[path] = (data.mode, data.size, fs.read(fh, 0, data.size))
                fs.release(fh)

    walk(1, b"")
    return out


@pytest.fixture
def rig(caplog: pytest.LogCaptureFixture) -> Iterator[Rig]:
    logs = MemoryRedoLogFactory()
    clock = FakeClock()
    service = MountService(logs, PqCrypto(), clock)
    request = MountRequest(
        chain="local", passcode=b"pw", formats=Formats(), uid=1000, gid=1000, kdf=FAST_KDF
    )
    r = Rig(logs, clock, service, request, service.open(request))
    yield r
    problems = fsck(r.fs)
    assert not problems, problems
    before = tree(r.fs)
    r.remount()
    assert not fsck(r.fs)
    assert tree(r.fs) == before, "a replay of the log does not rebuild the same tree"
    r.mounted.close()
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not errors, f"unexpected errors were logged: {errors}"
