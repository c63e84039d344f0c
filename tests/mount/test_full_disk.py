"""A full disk under a mount's log (issue 12): a local encrypted chain whose log lives on a
16 MiB tmpfs. Writers get ENOSPC (the errno, not EIO), everything fsync'd before stays and reads
back, the mount stays up, deleting works while the reserve lasts, and once space is freed on that
disk writes succeed again; after a remount every fsync'd file is intact and ``verify`` passes.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.mount.conftest import Mounter
    from tests.tmpfs import Tmpfs

pytestmark = pytest.mark.timeout(240)

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 256 * KiB


def write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fill_until_full(path: Path, limit: int = 64 * MiB) -> tuple[int, OSError | None]:
    """Append and fsync chunks until a write or fsync fails; (bytes made durable, the error)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    durable = 0
    error: OSError | None = None
    try:
        while durable < limit:
            os.write(fd, pattern(durable, CHUNK))
            os.fsync(fd)
            durable += CHUNK
    except OSError as exc:
        error = exc
    finally:
        try:
            os.close(fd)
        except OSError as exc:  # close flushes what the failed call left buffered
            error = error or exc
    return durable, error


def pattern(offset: int, n: int) -> bytes:
    """Bytes that differ at every offset (a misplaced page shows), reproducible."""
    block = (offset // CHUNK).to_bytes(4, "little") * (n // 4)
    return block[:n]


def test_a_full_disk_refuses_writes_keeps_what_was_synced_and_recovers(
    small_tmpfs: Tmpfs, mounter: Mounter, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    logdir = small_tmpfs.path / "log"
    mp = mounter.mount(mnt, logdir)

    synced = {f"synced-{i}": os.urandom(50_000 + 1000 * i) for i in range(8)}
    for name, data in synced.items():
        write_synced(mnt / name, data)

    # Beside the log, a filler takes all but 5 MiB of the disk; the mount fills the rest.
    filler = small_tmpfs.fill("filler", leave=5 * MiB)
    durable, error = fill_until_full(mnt / "big")
    assert error is not None, "the mount never reported a full disk"
    assert error.errno == errno.ENOSPC, f"expected ENOSPC, got {error!r}"
    assert durable >= CHUNK, "nothing of the big file could be written before the disk filled"

    # the mount is up and reads everything fsync'd
    assert mp.proc.poll() is None, mp.stderr()
    assert mp.is_mounted()
    for name, data in synced.items():
        assert (mnt / name).read_bytes() == data, f"{name} reads back other bytes on a full disk"
    with open(mnt / "big", "rb") as f:
        assert f.read(durable) == b"".join(pattern(o, CHUNK) for o in range(0, durable, CHUNK))

    # new files and directories are refused with ENOSPC, and leave nothing half made
    with pytest.raises(OSError) as new_file:
        write_synced(mnt / "new-while-full", b"x" * 300_000)
    assert new_file.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as new_dir:
        for i in range(10_000):  # metadata alone: until the reserve's edge is reached
            (mnt / f"dir-{i}").mkdir()
    assert new_dir.value.errno == errno.ENOSPC
    made_dirs = sorted(p.name for p in mnt.iterdir() if p.name.startswith("dir-"))

    # deleting while full works (it may use the reserve), but gives no room back: the log is
    # append-only and only a compaction, which needs room for a copy, would shrink it
    gone = "synced-0"
    os.unlink(mnt / gone)
    del synced[gone]
    assert not (mnt / gone).exists()
    with pytest.raises(OSError) as still_full:
        write_synced(mnt / "after-unlink", b"y" * 300_000)
    assert still_full.value.errno == errno.ENOSPC
    assert mp.proc.poll() is None, mp.stderr()

    # space freed on that disk: writes succeed again
    filler.unlink()
    after = {f"after-{i}": os.urandom(200_000 + i) for i in range(5)}
    for name, data in after.items():
        write_synced(mnt / name, data)
    write_synced(mnt / "new-while-full", b"x" * 300_000)
    for name, data in {**synced, **after}.items():
        assert (mnt / name).read_bytes() == data

    first = mp
    mp = mounter.remount(mp)
    assert "Traceback" not in first.stderr(), first.stderr()
    for name, data in {**synced, **after}.items():
        assert (mnt / name).read_bytes() == data, f"{name} differs after the remount"
    assert not (mnt / gone).exists()
    assert (mnt / "new-while-full").read_bytes() == b"x" * 300_000
    assert sorted(p.name for p in mnt.iterdir() if p.name.startswith("dir-")) == made_dirs
    with open(mnt / "big", "rb") as f:
        assert f.read(durable) == b"".join(pattern(o, CHUNK) for o in range(0, durable, CHUNK))
    assert mp.unmount() == 0, mp.stderr()
    assert "Traceback" not in mp.stderr(), mp.stderr()

    r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": mp.passcode or ""})
    assert r.returncode == 0, r.stdout + r.stderr


def test_unmounting_on_a_full_disk_keeps_what_was_synced_and_says_what_was_not(
    small_tmpfs: Tmpfs, mounter: Mounter, tmp_path: Path
) -> None:
    """An unmount while the disk is full, with buffered writes that cannot be saved and no room
    for a signature or a checkpoint, ends the process with an error that says so (exit 6, no
    traceback); a remount has every fsync'd file and ``verify`` passes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    logdir = small_tmpfs.path / "log"
    mp = mounter.mount(mnt, logdir)
    synced = {f"s-{i}": os.urandom(40_000 + i) for i in range(5)}
    for name, data in synced.items():
        write_synced(mnt / name, data)
    small_tmpfs.fill("filler", leave=4 * MiB)
    fd = os.open(mnt / "pending", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"p" * MiB)  # buffered by the mount: there is room for it now
        small_tmpfs.fill("filler-2", leave=0)  # then not a byte left
    finally:
        with pytest.raises(OSError) as closing:
            os.close(fd)  # close writes it out: it cannot
    assert closing.value.errno == errno.ENOSPC
    assert (mnt / "pending").read_bytes() == b"p" * MiB  # kept, in memory
    rc = mp.unmount()
    assert rc == 6, mp.stderr()
    assert "Traceback" not in mp.stderr(), mp.stderr()
    assert "the disk under the log is full" in mp.stderr()
    assert "could not be saved" in mp.stderr()
    assert not mp.is_mounted()
    (small_tmpfs.path / "filler").unlink()
    (small_tmpfs.path / "filler-2").unlink()
    mp = mounter.mount(mnt, logdir)
    for name, data in synced.items():
        assert (mnt / name).read_bytes() == data
    write_synced(mnt / "after", b"a" * 100_000)
    assert mp.unmount() == 0, mp.stderr()
    r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": mp.passcode or ""})
    assert r.returncode == 0, r.stdout + r.stderr
