"""End to end through a real FUSE mount: a tar round trip of the standard library, a small tree
of edge cases, and link counts; everything must survive unmount and remount exactly."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.mount.conftest import Mounter, MountProc

MiB = 1024 * 1024


# --- helpers --------------------------------------------------------------------------------------
def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a remount must keep: type, mode, size, mtime, nlink, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(MiB):
                        h.update(chunk)
                what = h.hexdigest()
            else:
                what = None
            out[rel] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink, what)
    return out


def wait_log_quiet(log_file: Path, quiet_for: float = 1.5, timeout: float = 20.0) -> int:
    """Wait until the log file stops growing (background commits done); return its size."""
    deadline = time.monotonic() + timeout
    size = log_file.stat().st_size
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = log_file.stat().st_size
        if now != size:
            size, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_for:
            return size
    return size


def grep_files(pattern: str, where: Path) -> list[str]:
    """Files under `where` containing `pattern` (fixed string, binary-safe)."""
    r = subprocess.run(
        ["grep", "-r", "-l", "-a", "-F", "--", pattern, str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode in (0, 1), r.stderr
    return r.stdout.splitlines()


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[mount tier] {text}")


# --- tar round trip -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stdlib:
    tarball: Path
    top: str  # name of the top directory inside the tarball
    src: Path  # the stdlib directory itself


@pytest.fixture(scope="session")
def stdlib_tar(tmp_path_factory: pytest.TempPathFactory) -> Stdlib:
    src = Path(os.__file__).resolve().parent
    out = tmp_path_factory.mktemp("stdlib") / "stdlib.tar"
    subprocess.run(
        [
            "tar",
            "cf",
            str(out),
            "-C",
            str(src.parent),
            "--exclude=__pycache__",
            "--exclude=site-packages",
            src.name,
        ],
        check=True,
        capture_output=True,
    )
    return Stdlib(out, src.name, src)


def _distinctive_line(path: Path) -> str:
    """A long line of source (a docstring or comment, mostly) that is unlikely to repeat."""
    lines = [
        ln.strip()
        for ln in path.read_text(encoding="utf-8").splitlines()
        if ln.isascii() and 50 <= len(ln.strip()) <= 79
    ]
    assert lines, path
    return max(lines, key=lambda s: (len(set(s)), s))


def test_tar_round_trip(
    mounter: Mounter, stdlib_tar: Stdlib, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    t0 = time.perf_counter()
    subprocess.run(["tar", "xf", str(stdlib_tar.tarball), "-C", str(plain)], check=True)
    plain_s = time.perf_counter() - t0

    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir)
    t0 = time.perf_counter()
    r = subprocess.run(
        ["tar", "xf", str(stdlib_tar.tarball), "-C", str(mnt)], capture_output=True, text=True
    )
    mount_s = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    peak_kib = mp.peak_rss_kib()
    mp = mounter.remount(mp)

    r = subprocess.run(["diff", "-r", str(plain), str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout, (r.stdout[-4000:], r.stderr[-2000:])
    peak_after_kib = mp.peak_rss_kib()
    assert mp.unmount() == 0, mp.stderr()

    # Neither a file name nor a line of source from the tree is readable in the log.
    name = "_pydecimal"
    line = _distinctive_line(plain / stdlib_tar.top / "_pydecimal.py")
    for needle in (name, "test_sqlite3", line):
        assert grep_files(needle, plain), f"control: {needle!r} should be in the plain tree"
        assert grep_files(needle, logdir) == [], f"{needle!r} is readable in the log"

    size = sum(p.stat().st_size for p in logdir.iterdir())
    report(
        capsys,
        f"untar of {stdlib_tar.tarball.stat().st_size / MiB:.0f} MiB: "
        f"plain dir {plain_s:.2f} s, wasmer-dfs mount {mount_s:.2f} s "
        f"({mount_s / max(plain_s, 1e-9):.1f}x); log {size / MiB:.0f} MiB; "
        f"mount process peak RSS (VmHWM) {peak_kib} KiB while untarring, "
        f"{peak_after_kib} KiB on remount after diff -r",
    )


# --- a small tree of edge cases -------------------------------------------------------------------
SIZES = {"zero": 0, "one": 1, "p-1": 32767, "p": 32768, "p+1": 32769, "mib+3": MiB + 3}


def test_small_tree_survives_remount(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir)
    expected: dict[str, bytes] = {}

    for i, (name, n) in enumerate(SIZES.items()):
        payload = data(n, i)
        (mnt / name).write_bytes(payload)
        expected[name] = payload
        assert (mnt / name).stat().st_size == n

    # A sparse file: seek past the end and write.
    with open(mnt / "sparse", "wb") as f:
        f.seek(5 * MiB + 7)
        f.write(b"tail")
    expected["sparse"] = b"\0" * (5 * MiB + 7) + b"tail"
    assert (mnt / "sparse").read_bytes() == expected["sparse"]

    # Nested directories.
    deep = mnt / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"leaf")
    expected["a/b/c/d/leaf"] = b"leaf"

    # Symlinks (one dangling) and readlink.
    os.symlink("a/b/c/d/leaf", mnt / "link")
    os.symlink("../nowhere", mnt / "a" / "dangling")
    assert os.readlink(mnt / "link") == "a/b/c/d/leaf"
    assert (mnt / "link").read_bytes() == b"leaf"
    assert os.readlink(mnt / "a" / "dangling") == "../nowhere"

    # Renames: a file, a directory with content, and a file over an existing file.
    (mnt / "old-name").write_bytes(b"renamed file")
    os.rename(mnt / "old-name", mnt / "a" / "new-name")
    expected["a/new-name"] = b"renamed file"
    (mnt / "dir-old").mkdir()
    (mnt / "dir-old" / "inside").write_bytes(b"inside")
    os.rename(mnt / "dir-old", mnt / "a" / "b" / "dir-new")
    expected["a/b/dir-new/inside"] = b"inside"
    (mnt / "victim").write_bytes(b"to be replaced" * 100)
    (mnt / "winner").write_bytes(b"replacement")
    os.rename(mnt / "winner", mnt / "victim")
    expected["victim"] = b"replacement"
    assert not (mnt / "winner").exists()
    assert not (mnt / "old-name").exists() and not (mnt / "dir-old").exists()

    # Unlink and rmdir (ENOTEMPTY on a non-empty one).
    (mnt / "gone").write_bytes(b"x")
    os.unlink(mnt / "gone")
    assert not (mnt / "gone").exists()
    with pytest.raises(OSError) as ei:
        os.rmdir(mnt / "a" / "b")
    assert ei.value.errno == errno.ENOTEMPTY
    (mnt / "empty").mkdir()
    os.rmdir(mnt / "empty")
    assert not (mnt / "empty").exists()

    # chmod and utime with nanoseconds.
    os.chmod(mnt / "one", 0o640)
    os.chmod(mnt / "a" / "b" / "c", 0o700)
    assert stat.S_IMODE((mnt / "one").stat().st_mode) == 0o640
    mtime_ns = 1_234_567_890_123_456_789
    os.utime(mnt / "p", ns=(1_111_111_111_222_222_222, mtime_ns))
    assert (mnt / "p").stat().st_mtime_ns == mtime_ns

    # Truncate up (zero filled) and down.
    os.truncate(mnt / "p+1", 40000)
    expected["p+1"] = expected["p+1"] + b"\0" * (40000 - 32769)
    os.truncate(mnt / "mib+3", 100)
    expected["mib+3"] = expected["mib+3"][:100]
    for name in ("p+1", "mib+3"):
        assert (mnt / name).read_bytes() == expected[name]

    # statfs
    vfs = os.statvfs(mnt)
    assert vfs.f_blocks > 0 and vfs.f_bsize > 0

    for rel, payload in expected.items():
        assert (mnt / rel).read_bytes() == payload, rel
    before = snapshot(mnt)

    mp = mounter.remount(mp)
    after = snapshot(mnt)
    assert after == before
    for rel, payload in expected.items():
        assert (mnt / rel).read_bytes() == payload, rel
    assert stat.S_IMODE((mnt / "one").stat().st_mode) == 0o640
    assert stat.S_IMODE((mnt / "a" / "b" / "c").stat().st_mode) == 0o700
    assert (mnt / "p").stat().st_mtime_ns == mtime_ns
    assert os.readlink(mnt / "link") == "a/b/c/d/leaf"
    assert os.statvfs(mnt).f_blocks > 0
    assert mp.unmount() == 0, mp.stderr()


def test_one_byte_write_does_not_rewrite_big_file(
    mounter: Mounter, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir)
    big = bytearray(data(64 * MiB, 42))
    with open(mnt / "big", "wb") as f:
        f.write(big)
        f.flush()
        os.fsync(f.fileno())
    log_file = mp.log_file
    size_before = wait_log_quiet(log_file)

    offset = 32 * MiB + 12345
    with open(mnt / "big", "r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" if big[offset] != 0xA5 else b"\x5a")
        f.flush()
        os.fsync(f.fileno())
    big[offset] = 0xA5 if big[offset] != 0xA5 else 0x5A
    size_after = wait_log_quiet(log_file)
    growth = size_after - size_before
    assert growth < MiB, f"a 1-byte write grew the log by {growth} bytes"
    report(capsys, f"a 1-byte write + fsync into a 64 MiB file grew the log by {growth} bytes")

    digest = hashlib.sha256(big).hexdigest()
    mp = mounter.remount(mp)
    h = hashlib.sha256()
    with open(mnt / "big", "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    assert h.hexdigest() == digest
    assert mp.unmount() == 0, mp.stderr()


# --- link counts ----------------------------------------------------------------------------------
def _check_links(mnt: Path) -> None:
    assert (mnt / "f").stat().st_nlink == 2
    assert (mnt / "sub" / "g").stat().st_nlink == 2
    assert (mnt / "f").stat().st_ino == (mnt / "sub" / "g").stat().st_ino
    assert (mnt / "sub" / "g").read_bytes() == b"shared, changed"
    assert (mnt / "d").stat().st_nlink == 3
    assert (mnt / "d" / "inner").stat().st_nlink == 2


@pytest.fixture
def linked(mounter: Mounter) -> Iterator[tuple[Mounter, MountProc]]:
    mnt, logdir = mounter.dirs()
    yield mounter, mounter.mount(mnt, logdir)


def test_hard_links_and_dir_nlink(linked: tuple[Mounter, MountProc]) -> None:
    mounter, mp = linked
    mnt = mp.mnt
    (mnt / "f").write_bytes(b"shared")
    assert (mnt / "f").stat().st_nlink == 1
    (mnt / "sub").mkdir()
    os.link(mnt / "f", mnt / "sub" / "g")
    assert (mnt / "f").stat().st_nlink == 2
    with open(mnt / "sub" / "g", "ab") as f:
        f.write(b", changed")
    assert (mnt / "f").read_bytes() == b"shared, changed"

    (mnt / "d").mkdir()
    assert (mnt / "d").stat().st_nlink == 2
    (mnt / "d" / "inner").mkdir()
    _check_links(mnt)

    mp = mounter.remount(mp)
    _check_links(mnt)

    os.unlink(mnt / "f")
    assert (mnt / "sub" / "g").stat().st_nlink == 1
    os.rmdir(mnt / "d" / "inner")
    assert (mnt / "d").stat().st_nlink == 2
    mp = mounter.remount(mp)
    assert (mnt / "sub" / "g").stat().st_nlink == 1
    assert (mnt / "sub" / "g").read_bytes() == b"shared, changed"
    assert (mnt / "d").stat().st_nlink == 2
    assert mp.unmount() == 0, mp.stderr()
