"""The past on demand (issue 15 part B, docs/adr/0023), on real mounts: `mount --as-of TIME`
shows the tree as it was (overwritten and deleted files included) and refuses every write with
EROFS, for a local chain beside its live mount and for a replica without its server; a time
before the log's oldest is refused with that time."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, MountProc, ServerProc
from tests.mount.test_replication import eventually, mount_remote

pytestmark = [pytest.mark.timeout(300)]


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).isoformat()


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def the_past(root: Path) -> float:
    """v1 of a.txt and b.txt, then (after the returned time) v2 of a.txt and b.txt deleted."""
    (root / "d").mkdir()
    write(root / "a.txt", b"version one\n")
    write(root / "d" / "b.txt", b"doomed\n")
    time.sleep(0.3)
    noted = time.time()
    time.sleep(0.3)
    write(root / "a.txt", b"version two, longer\n")
    (root / "d" / "b.txt").unlink()
    write(root / "c.txt", b"born later\n")
    return noted


def refused_erofs(fn: Callable[[], object]) -> None:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno == errno.EROFS, info.value


def check_the_past(root: Path) -> None:
    assert (root / "a.txt").read_bytes() == b"version one\n"
    assert (root / "d" / "b.txt").read_bytes() == b"doomed\n"
    assert not (root / "c.txt").exists()
    refused_erofs(lambda: os.open(root / "a.txt", os.O_RDWR))
    refused_erofs(lambda: os.open(root / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644))
    refused_erofs(lambda: (root / "d" / "b.txt").unlink())
    refused_erofs(lambda: (root / "e").mkdir())
    refused_erofs(lambda: os.rename(root / "a.txt", root / "z.txt"))
    refused_erofs(lambda: os.chmod(root / "a.txt", 0o600))
    refused_erofs(lambda: os.truncate(root / "a.txt", 0))
    refused_erofs(lambda: os.symlink("a.txt", root / "s"))
    refused_erofs(lambda: os.setxattr(root / "a.txt", "user.x", b"1"))


def unmount(mp: MountProc) -> None:
    rc = mp.unmount()
    assert rc == 0, mp.stderr()


def test_as_of_shows_the_tree_of_then_beside_the_live_mount(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs("live")
    live = mounter.mount(mnt, logdir)
    noted = the_past(mnt)
    past_mnt, _ = mounter.dirs("past")
    past = mounter.mount(past_mnt, logdir, "--as-of", iso(noted))
    try:
        check_the_past(past_mnt)
        assert "the tree as of" in past.stderr() + past.stdout_path.read_text()
        # the live mount is untouched by it, and goes on writing
        assert (mnt / "a.txt").read_bytes() == b"version two, longer\n"
        write(mnt / "after.txt", b"x")
    finally:
        unmount(past)
    unmount(live)
    # a duration before now reaches back too (now minus 1 hour: before the chain existed)
    out = mounter.attempt(past_mnt, logdir, "--as-of", "1h")
    assert out.returncode == 3 and not out.mounted, out
    assert "before the oldest time this log holds" in out.stderr


def test_as_of_refuses_times_it_cannot_use(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs("live")
    unmount(mounter.mount(mnt, logdir))
    out = mounter.attempt(mnt, logdir, "--as-of", "1990-01-01T00:00:00Z")
    assert out.returncode == 3 and not out.mounted, out
    assert "is before the oldest time this log holds: 20" in out.stderr
    assert "Traceback" not in out.stderr
    for bad, why in (("yesterday", "is not a time"), ("2999-01-01T00:00:00Z", "in the future")):
        out = mounter.attempt(mnt, logdir, "--as-of", bad)
        assert out.returncode == 2 and why in out.stderr, out
    out = mounter.attempt(mnt, logdir, "--as-of", "1s", "--temp")
    assert out.returncode == 2 and "not with --temp" in out.stderr, out
    empty_mnt, empty_log = mounter.dirs("nothing")
    out = mounter.attempt(empty_mnt, empty_log, "--as-of", "1s")
    assert out.returncode == 2 and "no log" in out.stderr, out
    assert not (empty_log / "local.log").exists()


def test_as_of_on_a_replica_without_its_server(mounter: Mounter, server: ServerProc) -> None:
    url = server.url("past")
    a = mount_remote(mounter, "a", url)
    noted = the_past(a.mnt)
    b = mount_remote(mounter, "b", url)
    eventually(lambda: os.stat(b.mnt / "c.txt"), "c.txt reaches b")
    unmount(b)
    server.stop()  # the past comes from the replica's own log: no server needed
    past_mnt, _ = mounter.dirs("past")
    before = mounter.log_digests(b.logdir)
    past = mounter.mount(past_mnt, None, url, str(b.logdir), "--as-of", iso(noted))
    try:
        check_the_past(past_mnt)
    finally:
        unmount(past)
    assert mounter.log_digests(b.logdir) == before  # nothing written, nothing uploaded
    unmount(a)


# --- history and restore (the /.wasmer-dfs/history view and the commands on it) ---------------
def test_history_of_a_file_written_100_times_lists_100_versions_in_order(
    mounter: Mounter,
) -> None:
    mnt, logdir = mounter.dirs("live")
    live = mounter.mount(mnt, logdir)
    try:
        f = mnt / "f.txt"
        for i in range(100):
            fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o640)
            try:
                os.pwrite(fd, f"version {i:03d}\n".encode(), 0)
            finally:
                os.close(fd)
        out = mounter.cli("history", str(f), "--json")
        assert out.returncode == 0, out.stderr
        found = json.loads(out.stdout)
        assert len(found) == 100
        assert [v["ms"] for v in found] == sorted(v["ms"] for v in found)
        assert all(v["size"] == 12 and not v["conflict"] and v["mode"] == "640" for v in found)
        assert all(len(v["author"]) == 64 for v in found)
        versions = mnt / ".wasmer-dfs" / "history" / "f.txt"
        assert sorted(os.listdir(versions)) == sorted(
            [".versions.json", *(v["name"] for v in found)]
        )
        for i in (0, 41, 99):
            assert (versions / found[i]["name"]).read_bytes() == f"version {i:03d}\n".encode()
        human = mounter.cli("history", str(f))
        assert human.returncode == 0, human.stderr
        lines = human.stdout.splitlines()
        assert lines[0].split() == ["TIME", "SIZE", "AUTHOR", "CONFLICT"] and len(lines) == 101
        assert lines[1].split()[0] == found[0]["time"] and lines[1].split()[1:] == [
            "12", found[0]["author"][:16], "no",
        ]  # fmt: skip
        # refusals: no such file, outside any mount, the mount's own files
        missing = mounter.cli("history", str(mnt / "never.txt"))
        assert missing.returncode == 1 and "has no versions" in missing.stderr, missing
        outside = mounter.cli("history", str(mounter.tmp_path))
        assert outside.returncode == 2 and "not inside a mounted wasmer-dfs" in outside.stderr
        own = mounter.cli("history", str(mnt / ".wasmer-dfs" / "status"))
        assert own.returncode == 2 and "Traceback" not in own.stderr
    finally:
        unmount(live)


def test_restore_brings_v1_and_a_deleted_file_back_on_every_mount(
    mounter: Mounter, server: ServerProc
) -> None:
    url = server.url("restore")
    a = mount_remote(mounter, "a", url)
    noted = the_past(a.mnt)
    b = mount_remote(mounter, "b", url)
    eventually(lambda: os.stat(b.mnt / "c.txt"), "c.txt reaches b")
    try:
        out = mounter.cli("restore", str(a.mnt / "a.txt"), "--as-of", iso(noted))
        assert out.returncode == 0, out.stderr
        assert (a.mnt / "a.txt").read_bytes() == b"version one\n"
        out = mounter.cli(
            "restore", str(b.mnt / "d" / "b.txt"), "--as-of", iso(noted),
            "--to", str(b.mnt / "b-again.txt"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (b.mnt / "b-again.txt").read_bytes() == b"doomed\n"

        def seen_on_b() -> None:
            assert (b.mnt / "a.txt").read_bytes() == b"version one\n"

        def seen_on_a() -> None:
            assert (a.mnt / "b-again.txt").read_bytes() == b"doomed\n"

        eventually(seen_on_b, "the restored a.txt reaches b")
        eventually(seen_on_a, "the restored b.txt reaches a")
        # history is never rewritten: v1, v2 and the restored v1 are all there, in order
        found = json.loads(mounter.cli("history", str(b.mnt / "a.txt"), "--json").stdout)
        # (a replica commits a creation before its data in readonly-async: an empty version)
        sizes = [v["size"] for v in found if v["size"]]
        assert sizes == [12, 20, 12], found
        early = mounter.cli("restore", str(a.mnt / "a.txt"), "--as-of", "1990-01-01T00:00:00Z")
        assert early.returncode == 1 and "no version at or before" in early.stderr
        taken = mounter.cli(
            "restore", str(a.mnt / "a.txt"), "--as-of", iso(noted), "--to", str(a.mnt / "c.txt")
        )
        assert taken.returncode == 2 and "exists already" in taken.stderr
    finally:
        unmount(b)
        unmount(a)


# --- a whole directory (restore --recursive, history/@TIME/) and history on a mount of the past --
def the_past_of_a_directory(root: Path) -> float:
    """A directory d/ as noted (the returned time), then changed in every way after it."""
    (root / "d" / "sub" / "deep").mkdir(parents=True)
    write(root / "d" / "x.txt", b"x as it was\n")
    write(root / "d" / "sub" / "y.txt", b"y as it was\n")
    write(root / "d" / "sub" / "deep" / "z.txt", b"z as it was\n")
    os.symlink("x.txt", root / "d" / "link")
    os.chmod(root / "d" / "sub", 0o750)
    time.sleep(0.3)
    noted = time.time()
    time.sleep(0.3)
    write(root / "d" / "x.txt", b"x changed after, longer\n")
    os.chmod(root / "d" / "x.txt", 0o600)
    for gone in ("sub/deep/z.txt", "sub/y.txt", "link"):
        (root / "d" / gone).unlink()
    (root / "d" / "sub" / "deep").rmdir()
    (root / "d" / "sub").rmdir()
    write(root / "d" / "new.txt", b"born after\n")
    return noted


def check_directory_as_it_was(d: Path, new_too: bool) -> None:
    assert (d / "x.txt").read_bytes() == b"x as it was\n"
    assert os.stat(d / "x.txt").st_mode & 0o777 == 0o644
    assert (d / "sub" / "y.txt").read_bytes() == b"y as it was\n"
    assert (d / "sub" / "deep" / "z.txt").read_bytes() == b"z as it was\n"
    assert os.stat(d / "sub").st_mode & 0o777 == 0o750
    assert os.readlink(d / "link") == "x.txt"
    assert (d / "new.txt").exists() == new_too
    assert not [n for n in os.listdir(d) if ".restore-" in n]


def test_restore_recursive_brings_a_directory_back_on_every_mount(
    mounter: Mounter, server: ServerProc
) -> None:
    url = server.url("tree")
    a = mount_remote(mounter, "a", url)
    noted = the_past_of_a_directory(a.mnt)
    b = mount_remote(mounter, "b", url)
    eventually(lambda: os.stat(b.mnt / "d" / "new.txt"), "new.txt reaches b")
    try:
        # a directory is refused without --recursive, a live one and a deleted one
        out = mounter.cli("restore", str(a.mnt / "d"), "--as-of", iso(noted))
        assert out.returncode == 2 and "with --recursive" in out.stderr, out
        out = mounter.cli("restore", str(a.mnt / "d" / "sub"), "--as-of", iso(noted))
        assert out.returncode == 2 and "with --recursive" in out.stderr, out
        # the tree of then, browsable in the history view
        ms = round(noted * 1000)
        then = a.mnt / ".wasmer-dfs" / "history" / f"@{ms}"
        assert sorted(os.listdir(then / "d")) == ["sub", "x.txt"]  # a symlink is in the .json
        assert (then / "d" / "sub" / "deep" / "z.txt").read_bytes() == b"z as it was\n"
        listing = json.loads((then.parent / f"@{ms}.json").read_text())
        kinds = {e["path"]: e["type"] for e in listing["entries"]}
        assert kinds["d/link"] == "symlink" and kinds["d/sub/deep"] == "dir"
        assert "d/new.txt" not in kinds and ".wasmer-dfs" not in kinds

        out = mounter.cli("restore", str(a.mnt / "d"), "--as-of", iso(noted), "--recursive")
        assert out.returncode == 0, out.stderr
        assert "5 created again, 1 rewritten, 1 unchanged" in out.stderr, out.stderr
        check_directory_as_it_was(a.mnt / "d", new_too=True)
        eventually(
            lambda: check_directory_as_it_was(b.mnt / "d", new_too=True),
            "the restored directory reaches b",
        )
        # to a new place: only what was there then; again in place: nothing left to do
        out = mounter.cli(
            "restore", str(b.mnt / "d"), "--as-of", iso(noted), "-r", "--to", str(b.mnt / "d2")
        )
        assert out.returncode == 0, out.stderr
        check_directory_as_it_was(b.mnt / "d2", new_too=False)
        again = mounter.cli("restore", str(a.mnt / "d"), "--as-of", iso(noted), "-r")
        assert again.returncode == 0 and "0 created again, 0 rewritten" in again.stderr, again
        # a file where a directory was: reported, the rest restored, exit 1
        (a.mnt / "d" / "sub" / "deep" / "z.txt").unlink()
        (a.mnt / "d" / "sub" / "deep").rmdir()
        write(a.mnt / "d" / "sub" / "deep", b"a file now\n")
        (a.mnt / "d" / "sub" / "y.txt").unlink()
        clash = mounter.cli("restore", str(a.mnt / "d"), "--as-of", iso(noted), "-r")
        assert clash.returncode == 1, clash
        assert "was a directory then and is not one now" in clash.stderr
        assert (a.mnt / "d" / "sub" / "y.txt").read_bytes() == b"y as it was\n"
        assert (a.mnt / "d" / "sub" / "deep").read_bytes() == b"a file now\n"
        early = mounter.cli("restore", str(a.mnt / "d"), "--as-of", "1990-01-01T00:00:00Z", "-r")
        assert early.returncode == 1 and "holds nothing at or before" in early.stderr, early
        assert "Traceback" not in early.stderr + clash.stderr
    finally:
        unmount(b)
        unmount(a)


def test_history_on_a_mount_of_the_past_stops_at_its_time(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs("live")
    live = mounter.mount(mnt, logdir)
    noted = the_past(mnt)
    past_mnt, _ = mounter.dirs("past")
    past = mounter.mount(past_mnt, logdir, "--as-of", iso(noted))
    try:
        now_live = json.loads(mounter.cli("history", str(mnt / "a.txt"), "--json").stdout)
        assert [v["size"] for v in now_live] == [12, 20]
        out = mounter.cli("history", str(past_mnt / "a.txt"), "--json")
        assert out.returncode == 0, out.stderr
        then = json.loads(out.stdout)
        assert [v["size"] for v in then] == [12]
        assert all(v["ms"] <= noted * 1000 for v in then)
        versions = past_mnt / ".wasmer-dfs" / "history" / "a.txt"
        assert sorted(os.listdir(versions)) == [".versions.json", then[0]["name"]]
        assert (versions / then[0]["name"]).read_bytes() == b"version one\n"
        # a file born after the mount's time has no history there
        later = mounter.cli("history", str(past_mnt / "c.txt"))
        assert later.returncode == 1 and "has no versions" in later.stderr, later
        # the tree at a time after the mount's time is the mount's own tree
        after = round(time.time() * 1000)
        listing = json.loads((versions.parent / f"@{after}.json").read_text())
        paths = {e["path"] for e in listing["entries"]}
        assert paths == {"a.txt", "d", "d/b.txt"}, paths
    finally:
        unmount(past)
        unmount(live)
