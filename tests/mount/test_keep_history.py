"""`--keep-history DURATION` on real mounts (issue 15 part A, docs/adr/0007 "History window"):
`--compact-now` with a window keeps the versions and deleted files newer than it, so `--as-of`
still shows them; with 0 they go and the log shrinks to the live data; `verify` says what the
history takes; a value that is not a duration is a usage error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter
from tests.mount.test_time_travel import check_the_past, iso, the_past, unmount

pytestmark = [pytest.mark.timeout(300)]

MiB = 1 << 20


def history_bytes(mounter: Mounter, logdir: Path, passcode: str) -> int:
    r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": passcode})
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(
        r"^history: (\d+) bytes \(\d+% of the log\) hold earlier versions", r.stdout, re.M
    )
    assert m, r.stdout
    return int(m.group(1))


def test_compaction_keeps_the_window_and_verify_reports_it(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--compact-mode", "never")
    noted = the_past(mnt)
    for k in range(3):  # 3 superseded MiB of history, all seconds old
        (mnt / "big").write_bytes(bytes([k]) * MiB)
    (mnt / "big").write_bytes(b"z" * MiB)
    passcode = mp.passcode or ""
    unmount(mp)
    log = logdir / "local.log"
    before = log.stat().st_size
    assert history_bytes(mounter, logdir, passcode) >= 3 * MiB

    # a window of an hour: nothing is old enough to go
    mp = mounter.mount(mnt, logdir, "--compact-now", "--keep-history", "1h")
    assert "compacted the log" in mp.stderr()
    assert (mnt / "big").read_bytes() == b"z" * MiB
    unmount(mp)
    assert log.stat().st_size >= before - 64 * 1024, (before, log.stat().st_size)
    past_mnt, _ = mounter.dirs("past")
    past = mounter.mount(past_mnt, logdir, "--as-of", iso(noted))
    try:
        check_the_past(past_mnt)  # v1 and the deleted file are still there
    finally:
        unmount(past)

    # no window: the past goes, the log is the live data
    mp = mounter.mount(mnt, logdir, "--compact-now", "--keep-history", "0")
    assert (mnt / "big").read_bytes() == b"z" * MiB
    assert (mnt / "a.txt").read_bytes() == b"version two, longer\n"
    unmount(mp)
    assert log.stat().st_size < MiB + 256 * 1024
    assert history_bytes(mounter, logdir, passcode) < 64 * 1024
    out = mounter.attempt(past_mnt, logdir, "--as-of", iso(noted))
    assert out.returncode == 3 and "before the oldest time this log holds" in out.stderr


@pytest.mark.parametrize("bad", ["soon", "-1h", "7 days", ""])
def test_a_keep_history_that_is_not_a_duration_is_a_usage_error(mounter: Mounter, bad: str) -> None:
    mnt, logdir = mounter.dirs()
    out = mounter.attempt(mnt, logdir, "--keep-history", bad)
    assert out.returncode == 2 and not out.mounted, out
    assert "--keep-history must be 0 or a duration" in out.stderr
    assert "Traceback" not in out.stderr
