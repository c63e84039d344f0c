"""Mounting with a token (issue 14 phase 3, docs/adr/0018 "Chains of users and groups") on a
real `wasmer-dfs serve` and real mounts: users A, B, C, D; A creates group team, adds B as
contributor and D as observer; A mounts the team's chain and writes; B mounts with B's token,
reads and writes; D reads and D's writes fail with EROFS; C's mount is refused with a clear
message and C finds no plaintext in the server's data directory; A removes B: B's mount is cut
off (A's later file never reaches it, B's next write fails with EROFS) and B's new mount is
refused. Every mount is unmounted
by the fixtures, also on failure; the server is stopped by its pid."""

from __future__ import annotations

import base64
import errno
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.auth.totp import totp
from tests.mount.conftest import Mounter, ServerProc, wasmer_dfs_exe

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def serve_proc(tmp_path: Path) -> Iterator[ServerProc]:
    (tmp_path / "server").mkdir()
    srv = ServerProc(tmp_path / "server", tmp_path / "server.out")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _cli(srv: ServerProc, home: Path, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "WASMER_DFS_PASSWORD": f"the password of {who}!"}
    glob = ["--auth", f"ws://127.0.0.1:{srv.port}/auth", "--token-path", str(home / f"{who}.tk")]
    return subprocess.run(
        [wasmer_dfs_exe(), *glob, *args], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def _ok(srv: ServerProc, home: Path, who: str, *args: str) -> str:
    done = _cli(srv, home, who, *args)
    assert done.returncode == 0, f"{who} {args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _eventually(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {check}")
        time.sleep(0.2)


def test_a_group_chain_on_real_mounts(
    serve_proc: ServerProc, mounter: Mounter, tmp_path: Path
) -> None:
    srv, home = serve_proc, tmp_path / "home"
    home.mkdir()
    secret = b""
    for who in "abcd":
        out = _ok(srv, home, who, "user", "create", "--email", f"{who}@x.org")
        if who == "a":
            uri = next(x for x in out.splitlines() if x.startswith("otpauth://"))
            text = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0]
            secret = base64.b32decode(text + "=" * (-len(text) % 8))
        _ok(srv, home, who, "token", "generate", "--email", f"{who}@x.org")
    _ok(srv, home, "a", "token", "sudo", "--email", "a@x.org", "--code", totp(secret, time.time()))
    _ok(srv, home, "a", "group", "create", "team")
    _ok(srv, home, "a", "token", "gather", "team")
    _ok(srv, home, "a", "group", "add-user", "team", "b@x.org", "--role", "contributor")
    _ok(srv, home, "a", "group", "add-user", "team", "d@x.org", "--role", "observer")
    _ok(srv, home, "b", "token", "gather", "team")
    _ok(srv, home, "d", "token", "gather", "team")

    url = srv.url("shared")

    def mount(who: str, *extra: str):  # type: ignore[no-untyped-def]
        mnt, logdir = mounter.dirs(who)
        return mounter.mount(
            mnt, url, str(logdir), "--group", "team", *extra, passcode=None,
            global_args=["--token-path", str(home / f"{who}.tk")],
        )  # fmt: skip

    a = mount("a")
    (a.mnt / "plan.txt").write_text("the plan: a secret of team\n")
    b = mount("b")
    _eventually(lambda: (b.mnt / "plan.txt").read_text() == "the plan: a secret of team\n")
    (b.mnt / "from-b.txt").write_text("written by b\n")
    _eventually(lambda: (a.mnt / "from-b.txt").read_text() == "written by b\n")

    d = mount("d")
    assert "observer of group team: mounting read-only" in d.stderr()
    _eventually(lambda: (d.mnt / "from-b.txt").read_text() == "written by b\n")
    with pytest.raises(OSError) as caught:
        (d.mnt / "from-d.txt").write_text("d writes\n")
    assert caught.value.errno in (errno.EROFS, errno.EACCES)

    # C: not a member - the mount is refused with the reason, nothing mounted
    c_mnt, c_log = mounter.dirs("c")
    c = mounter.attempt(
        c_mnt, url, str(c_log), "--group", "team", passcode=None,
        global_args=["--token-path", str(home / "c.tk")],
    )  # fmt: skip
    assert not c.mounted and c.returncode == 3, c.stderr
    assert "holds no key of group team" in c.stderr and "Traceback" not in c.stderr
    # ... and C reading the server's data directory finds no plaintext
    stored = b"".join(p.read_bytes() for p in srv.data_dir.rglob("*") if p.is_file())
    assert b"the plan" not in stored and b"written by b" not in stored
    assert list(srv.data_dir.glob("group.team.shared*")), list(srv.data_dir.iterdir())

    # A removes B: B's mount is cut off, A's next file never reaches it, B's new mount refused
    _ok(srv, home, "a", "group", "remove-user", "team", "b@x.org")
    (a.mnt / "after.txt").write_text("after b left\n")
    _eventually(lambda: (d.mnt / "after.txt").exists())
    time.sleep(3)
    assert not (b.mnt / "after.txt").exists()
    with pytest.raises(OSError) as caught:  # the server cut B off: B's mount refuses writes
        (b.mnt / "late-b.txt").write_text("b after removal\n")
    assert caught.value.errno in (errno.EROFS, errno.EACCES)
    assert not (a.mnt / "late-b.txt").exists()
    b.unmount()
    b2_mnt, b2_log = mounter.dirs("b2")
    b2 = mounter.attempt(
        b2_mnt, url, str(b2_log), "--group", "team", passcode=None,
        global_args=["--token-path", str(home / "b.tk")],
    )  # fmt: skip
    assert not b2.mounted and b2.returncode == 3, b2.stderr
    assert "b@x.org is not a member of group team" in b2.stderr, b2.stderr
