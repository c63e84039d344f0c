"""The worked example of the views (examples/kv-views, docs/views.md), end to end: a `wasmer-dfs
serve` process and two `wasmer-dfs mount --view kv` replicas of one chain (issue 18's acceptance).

* a record written through mount A's table view (`/.kv/users/42.json`) is read through mount
  B's materialised index (`/.kv/by-email/EMAIL.json`) and B's table view: the view's writes
  are events of the chain, replicated like files;
* a record that fails the schema is refused at close with EINVAL, the mount's log says why,
  and nothing is stored;
* the stored records stay hidden: `ls -a` of the root shows no `.wasmer-dfs`;
* `wasmer-dfs views` lists the example; `--view` of a view not installed is exit 2 before
  anything mounts.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.mount.conftest import MOUNT_TIMEOUT, Mounter, MountProc, ServerProc, fuse_mounts_under

pytestmark = [pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kv-views"
SYNC_TIMEOUT = 30.0
ADA = {"id": 42, "name": "Ada", "email": "ada@example.org"}


@pytest.fixture(scope="module", autouse=True)
def _kv_installed() -> None:
    """The example installed in this environment (scripts/install.sh does it; a tree where it
    is not, e.g. a fresh venv, gets it here: no build isolation, no download)."""
    if "kv" in {ep.name for ep in entry_points(group="wasmer_dfs.views")}:
        return
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
         "-e", str(EXAMPLE)],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def mount_kv(mounter: Mounter, name: str, url: str) -> MountProc:
    mnt, logdir = mounter.dirs(name)
    mp = mounter.spawn(mnt, None, url, str(logdir), "--view", "kv")
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mp.is_mounted():
        if mp.proc.poll() is not None:
            pytest.fail(f"{name}: mount exited with {mp.proc.returncode}:\n{mp.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: not mounted within {MOUNT_TIMEOUT} s:\n{mp.stderr()}")
        time.sleep(0.02)
    return mp


def eventually(check: Callable[[], object], what: str, timeout: float = SYNC_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s: {exc!r}") from exc
        time.sleep(0.1)


def put(path: Path, record: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f)


def test_views_lists_the_example_and_an_unknown_view_is_refused(mounter: Mounter) -> None:
    r = mounter.cli("views")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[0] == "kv")
    assert "wasmer_dfs_kv:kv" in line and "/.kv/" in line
    mnt, logdir = mounter.dirs()
    mp = mounter.spawn(mnt, logdir, "--view", "no-such-view")
    assert mp.proc.wait(timeout=60) == 2
    assert "no view named 'no-such-view' is installed" in mp.stderr()
    assert "Traceback" not in mp.stderr()
    assert not fuse_mounts_under(mnt)


def test_records_written_on_a_are_read_through_the_index_on_b(
    mounter: Mounter, server: ServerProc
) -> None:
    a = mount_kv(mounter, "a", server.url())
    b = mount_kv(mounter, "b", server.url())
    users_a = a.mnt / ".kv" / "users"
    assert sorted(os.listdir(a.mnt / ".kv")) == ["by-email", "users"]
    put(users_a / "42.json", ADA)
    assert json.loads((users_a / "42.json").read_text()) == ADA
    assert os.listdir(a.mnt / ".kv" / "by-email") == ["ada@example.org.json"]

    index_b = b.mnt / ".kv" / "by-email" / "ada@example.org.json"
    eventually(lambda: json.loads(index_b.read_text()) == ADA or (_ for _ in ()).throw(
        AssertionError(index_b.read_text())), "B's index has A's record")  # fmt: skip
    assert os.listdir(b.mnt / ".kv" / "users") == ["42.json"]
    assert json.loads((b.mnt / ".kv" / "users" / "42.json").read_text()) == ADA
    assert index_b.stat().st_size == len(index_b.read_bytes())

    # a change of the record on B moves the index on A
    put(b.mnt / ".kv" / "users" / "42.json", {**ADA, "email": "ada@lovelace.example"})
    moved = a.mnt / ".kv" / "by-email" / "ada@lovelace.example.json"
    eventually(lambda: json.loads(moved.read_text())["id"] == 42 or (_ for _ in ()).throw(
        AssertionError("not yet")), "A's index follows B's change")  # fmt: skip
    assert not (a.mnt / ".kv" / "by-email" / "ada@example.org.json").exists()

    # the records are stored in the chain, out of sight
    assert ".wasmer-dfs" not in os.listdir(a.mnt) and ".wasmer-dfs" not in os.listdir(b.mnt)


def test_a_record_that_fails_the_schema_is_refused_and_logged(
    mounter: Mounter, server: ServerProc
) -> None:
    a = mount_kv(mounter, "a", server.url())
    users = a.mnt / ".kv" / "users"
    for name, record, why in [
        ("43.json", {"id": 43, "name": "Bob"}, "fields missing"),
        ("44.json", {"id": 44, "name": "Eve", "email": "not-an-address"}, "email is not email"),
        ("45.json", {"id": 46, "name": "Id", "email": "id@example.org"}, "id 46 in a file named"),
    ]:
        with pytest.raises(OSError) as e:
            put(users / name, record)
        assert e.value.errno == errno.EINVAL, name
        assert not (users / name).exists()

        def logged(why: str = why, name: str = name) -> None:
            assert any(
                f"refused users/{name}" in ln and why in ln for ln in a.stderr().splitlines()
            ), a.stderr()

        eventually(logged, f"the log says why {name} was refused", 10)
    assert os.listdir(users) == []
    assert os.listdir(a.mnt / ".kv" / "by-email") == []
    # a second record with an address in use is refused too
    put(users / "1.json", {"id": 1, "name": "One", "email": "one@example.org"})
    with pytest.raises(OSError) as e:
        put(users / "2.json", {"id": 2, "name": "Two", "email": "one@example.org"})
    assert e.value.errno == errno.EINVAL
    assert os.listdir(users) == ["1.json"]


def test_status_shows_the_last_compaction_the_composition_root_passes(mounter: Mounter) -> None:
    """The views are built by the composition root with the mount's compactor (before, the
    FUSE adapter built them without it and status said "compaction": null)."""
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir)
    (mnt / "f").write_bytes(b"x" * 100_000)
    (mnt / "f").write_bytes(b"y" * 100_000)
    mp.unmount()
    mp = mounter.mount(mnt, logdir, "--compact-now", "--view", "kv")
    doc = json.loads((mnt / ".wasmer-dfs" / "status").read_text())
    assert doc["compaction"] is not None and doc["compaction"]["last"] is not None, doc
    assert doc["compaction"]["last"]["after"] < doc["compaction"]["last"]["before"]
    assert (mnt / ".kv" / "users").is_dir()


def test_shell_redirections_and_cp(mounter: Mounter, tmp_path: Path) -> None:
    """A shell's `>` closes a duplicate of the new file before echo writes: nothing is stored
    (or refused) until data comes. cp reports a refusal (bash's `>` does not check close)."""
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--view", "kv")
    users = mnt / ".kv" / "users"
    rec = json.dumps(ADA)
    sh = subprocess.run(
        ["bash", "-c", f"echo '{rec}' > {users}/42.json"], capture_output=True, text=True,
        timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert sh.returncode == 0, sh.stderr
    assert json.loads((users / "42.json").read_text()) == ADA
    assert list(json.loads((users / "42.json").read_text())) == ["id", "name", "email"]
    time.sleep(0.3)
    assert "refused" not in mp.stderr(), mp.stderr()
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": 7}')
    cp = subprocess.run(
        ["cp", str(bad), str(users / "7.json")], capture_output=True, text=True, timeout=30,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert cp.returncode != 0 and "Invalid argument" in cp.stderr, cp.stderr
    # an empty file is stored at its last close, where the refusal can only be logged
    subprocess.run(["bash", "-c", f": > {users}/8.json"], timeout=30, check=False)
    eventually(lambda: "refused users/8.json: not JSON" in mp.stderr() or (_ for _ in ()).throw(
        AssertionError(mp.stderr())), "the empty record refused in the log", 10)  # fmt: skip
    assert os.listdir(users) == ["42.json"]


def test_a_read_only_mount_reads_records_and_refuses_writes_with_erofs(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--view", "kv")
    put(mnt / ".kv" / "users" / "42.json", ADA)
    with pytest.raises(OSError) as e:  # the index is never writable
        (mnt / ".kv" / "by-email" / "ada@example.org.json").write_text("{}")
    assert e.value.errno == errno.EACCES
    mp.unmount()
    mounter.mount(mnt, logdir, "--view", "kv", "--read-only")
    assert json.loads((mnt / ".kv" / "by-email" / "ada@example.org.json").read_text()) == ADA
    for name in ("42.json", "43.json"):
        with pytest.raises(OSError) as e:
            put(mnt / ".kv" / "users" / name, {**ADA, "id": int(name[:2])})
        assert e.value.errno == errno.EROFS, name
