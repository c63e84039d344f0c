"""`pip install .` alone gives a working wasmer-dfs (issue 19): the wheel carries the patched
pyfuse3 (build_backend/wasmer_dfs_build.py, docs/adr/0021), so in a fresh virtual environment
a remote chain mounts, takes writes and file locks, and a second replica reads them back.

Slow (minutes): the wheel is built in a fresh venv (pyfuse3 compiled from its sdist) and every
dependency installed; it needs the package index (pip's configuration) or pip's cache.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mount import conftest
from tests.mount.conftest import MOUNT_TIMEOUT, Mounter, MountProc, ServerProc

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def tree_copy(dest: Path) -> Path:
    """The files of this checkout that git knows or would know (no .venv, no build output)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, **kw
    )  # type: ignore[call-overload]
    assert r.returncode == 0, (
        f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    )
    return r


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the tree's files")
    base = tmp_path_factory.mktemp("pip-install")
    src = tree_copy(base / "src")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    # pip install <tree>, nothing else: no -e, no build script, no pre-installed pyfuse3
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)], timeout=1100)
    return venv


def test_the_installed_pyfuse3_is_ours_and_lives_in_the_venv(fresh_venv: Path) -> None:
    probe = (
        "import pyfuse3, importlib.metadata as m;"
        " print(pyfuse3.WASMER_DFS_PATCH, pyfuse3.__file__);"
        " print(hasattr(pyfuse3.Operations, 'setlk'), m.version('wasmer-dfs'))"
    )
    out = run([str(fresh_venv / "bin" / "python"), "-c", probe]).stdout.split()
    assert int(out[0]) >= 2
    assert out[1].startswith(str(fresh_venv))
    assert out[2:] == ["True", "0.1.0"]
    version = run([str(fresh_venv / "bin" / "wasmer-dfs"), "--version"]).stdout
    assert "wasmer-dfs" in version


def test_a_remote_chain_mounts_with_the_pip_installed_wasmer_dfs(
    fresh_venv: Path, tmp_path: Path, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = str(fresh_venv / "bin" / "wasmer-dfs")
    monkeypatch.setattr(conftest, "wasmer_dfs_exe", lambda: exe)
    (tmp_path / "server").mkdir()
    server = ServerProc(tmp_path / "server", tmp_path / "server.out")
    server.start()
    try:
        a = mount_remote(mounter, "a", server.url())
        data = os.urandom(300_000)
        (a.mnt / "notes.bin").write_bytes(data)
        with open(a.mnt / "notes.bin", "rb+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # through the chain server
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
            os.fsync(f.fileno())
            fcntl.flock(f, fcntl.LOCK_UN)
        assert a.unmount() == 0, a.stderr()
        b = mount_remote(mounter, "b", server.url())
        assert (b.mnt / "notes.bin").read_bytes() == data
        assert b.unmount() == 0, b.stderr()
        assert "Traceback" not in a.stderr() + b.stderr()
    finally:
        server.stop()


def mount_remote(mounter: Mounter, name: str, url: str) -> MountProc:
    mnt, logdir = mounter.dirs(name)
    mp = mounter.spawn(mnt, None, url, str(logdir))
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mp.is_mounted():
        assert mp.proc.poll() is None, f"{name}: mount exited:\n{mp.stderr()}"
        assert time.monotonic() < deadline, f"{name}: not mounted:\n{mp.stderr()}"
        time.sleep(0.05)
    return mp
