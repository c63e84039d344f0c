"""Real programs on the mount: git, tar (hard links, symlinks, xattrs), SQLite in WAL mode,
``python -m compileall``. Each must work as on a local disk and its results survive a remount."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter

from .conftest import Target, _fresh, shared_mount

ROOT = Path(__file__).resolve().parents[3]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


@pytest.fixture
def where(request: pytest.FixtureRequest, session_mounter: Mounter) -> Iterator[Target]:
    """A fresh directory in the session's mount."""
    mp = shared_mount(session_mounter, "mount")
    yield Target("mount", _fresh(mp.mnt, request), mp, session_mounter)


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def git(*args: str | Path, cwd: Path) -> str:
    return run("git", *args, cwd=cwd, env=GIT_ENV)


# --- git --------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_init_add_commit_clone_fsck(where: Target) -> None:
    repo = where / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    shutil.copytree(ROOT / "domain", repo / "domain", ignore=shutil.ignore_patterns("__py*"))
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "run.sh").chmod(0o755)
    os.symlink("domain/events.py", repo / "events-link")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    for i in range(5):  # small commits: loose objects, index rewrites by rename, refs, logs
        (repo / f"note{i}.txt").write_text(f"note {i}\n" * (i + 1))
        git("add", f"note{i}.txt", cwd=repo)
        git("commit", "-q", "-m", f"note {i}", cwd=repo)
    git("mv", "note0.txt", "renamed.txt", cwd=repo)
    git("rm", "-q", "note1.txt", cwd=repo)
    git("commit", "-q", "-m", "move and remove", cwd=repo)
    git("gc", "-q", cwd=repo)  # packs, pack index, prune: lots of rename and unlink
    git("fsck", "--strict", "--full", cwd=repo)
    clone = where / "clone"
    git("clone", "-q", "--no-hardlinks", str(repo), str(clone), cwd=where.root)
    git("fsck", "--strict", "--full", cwd=clone)
    local = where / "local-clone"
    git("clone", "-q", str(repo), str(local), cwd=where.root)  # hard links into .git/objects
    assert git("log", "--oneline", cwd=clone).count("\n") == 7
    assert (clone / "run.sh").stat().st_mode & 0o111
    assert os.readlink(clone / "events-link") == "domain/events.py"
    assert git("status", "--porcelain", cwd=clone) == ""
    head = git("rev-parse", "HEAD", cwd=repo)
    where.remount()
    git("fsck", "--strict", "--full", cwd=repo)
    git("fsck", "--strict", "--full", cwd=local)
    assert git("rev-parse", "HEAD", cwd=clone) == head
    assert git("status", "--porcelain", cwd=repo) == ""


# --- tar --------------------------------------------------------------------------------------
def build_tree(root: Path) -> None:
    """Files, a hard link group, symlinks (relative, absolute, dangling, to a directory), a
    FIFO, empty and sparse files, odd modes, xattrs in user, trusted and security namespaces,
    and fixed mtimes."""
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "dir" / "a.txt").write_bytes(b"alpha\n" * 1000)
    (root / "dir" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 300)
    (root / "empty").write_bytes(b"")
    os.link(root / "dir" / "a.txt", root / "hard-1")
    os.link(root / "dir" / "a.txt", root / "dir" / "sub" / "hard-2")
    os.symlink("dir/a.txt", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("nowhere", root / "dangling")
    os.symlink("dir/sub", root / "dir-link")
    os.mkfifo(root / "fifo")
    with open(root / "sparse", "wb") as f:
        f.seek(3 * 1024 * 1024)
        f.write(b"end")
    (root / "setuid").write_bytes(b"x")
    (root / "setuid").chmod(0o4755)
    (root / "private").write_bytes(b"p")
    (root / "private").chmod(0o600)
    (root / "dir" / "sub").chmod(0o2750)
    os.setxattr(root / "dir" / "a.txt", "user.comment", b"on a hard-linked file")
    os.setxattr(root / "empty", "user.bin", bytes(range(256)))
    os.setxattr(root / "empty", "trusted.t", b"trusted value")
    os.setxattr(root / "dir", "user.on-dir", b"d")
    os.setxattr(root / "private", "security.s", b"sec")
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(1_600_000_000 * 10**9 + i, 1_500_000_000 * 10**9 + i * 1001),
                 follow_symlinks=False)  # fmt: skip


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    inode_names: dict[int, list[str]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        inode_names.setdefault(st.st_ino, []).append(rel)
        if stat.S_ISREG(st.st_mode):
            what: object = hashlib.sha256(p.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            what = os.readlink(p)
        else:
            what = None
        xattrs = {n: os.getxattr(p, n, follow_symlinks=False)
                  for n in sorted(os.listxattr(p, follow_symlinks=False))}  # fmt: skip
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
        out[rel] = (st.st_mode, size, st.st_mtime_ns, st.st_nlink, what, xattrs)
    out["<hard links>"] = tuple(sorted(tuple(v) for v in inode_names.values() if len(v) > 1))
    return out


TAR_X = ["--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-permissions"]


def test_tar_round_trip_with_hard_links_symlinks_and_xattrs(where: Target, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    expected = describe(src)
    archive = tmp_path / "a.tar"
    run("tar", "-cf", archive, *TAR_X, "--sparse", "-C", src, ".")
    dest = where / "x"
    dest.mkdir()
    run("tar", "-xf", archive, *TAR_X, "-C", dest)
    assert describe(dest) == expected
    assert (dest / "sparse").stat().st_blocks * 512 < 1024 * 1024, "tar --sparse kept the hole"
    back = tmp_path / "back.tar"
    run("tar", "-cf", back, *TAR_X, "-C", dest, ".")  # archive from the mount ...
    again = tmp_path / "again"
    again.mkdir()
    run("tar", "-xf", back, *TAR_X, "-C", again)  # ... restores the same tree elsewhere
    assert describe(again) == expected
    where.remount()
    assert describe(dest) == expected


# --- SQLite -----------------------------------------------------------------------------------
def test_sqlite_wal(where: Target) -> None:
    db = where / "app.db"
    con = sqlite3.connect(db, isolation_level=None)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
    reader = sqlite3.connect(db, isolation_level=None)
    for batch in range(20):
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO t (name, blob) VALUES (?, ?)",
            [(f"row {batch}-{i}", os.urandom(200)) for i in range(250)],
        )
        con.execute("COMMIT")
        # a second connection sees every committed transaction (the -shm file is mmap-ed)
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == (batch + 1) * 250
    assert (where / "app.db-wal").exists() and (where / "app.db-shm").exists()
    con.execute("DELETE FROM t WHERE id % 3 = 0")
    con.execute("CREATE INDEX t_name ON t (name)")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("VACUUM")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    total = con.execute("SELECT count(*), sum(length(blob)) FROM t").fetchone()
    reader.close()
    con.close()
    where.remount()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*), sum(length(blob)) FROM t").fetchone() == total
    con.close()
    if shutil.which("sqlite3"):
        out = run("sqlite3", db, "PRAGMA integrity_check; SELECT count(*) FROM t;")
        assert out.split() == ["ok", str(total[0])]


# --- Python ------------------------------------------------------------------------------------
def test_python_compileall_and_import(where: Target) -> None:
    pkg = where / "pkgs"
    shutil.copytree(ROOT / "domain", pkg / "domain", ignore=shutil.ignore_patterns("__py*"))
    run(sys.executable, "-m", "compileall", "-q", "-j", "2", pkg)
    pycs = list(pkg.rglob("__pycache__/*.pyc"))
    assert len(pycs) == len(list((pkg / "domain").rglob("*.py")))
    code = "import domain.chain, domain.fs.model; print(domain.fs.model.__cached__)"
    out = run(
        sys.executable, "-c", code, cwd=pkg, env={"PYTHONPATH": str(pkg), "PYTHONSAFEPATH": "1"}
    )
    assert out.strip().startswith(str(pkg))
    where.remount()
    run(sys.executable, "-m", "compileall", "-q", pkg)  # up to date: reads the .pyc headers
    out = run(
        sys.executable, "-c", code, cwd=pkg, env={"PYTHONPATH": str(pkg), "PYTHONSAFEPATH": "1"}
    )
    assert out.strip().endswith(f"model.{sys.implementation.cache_tag}.pyc")
