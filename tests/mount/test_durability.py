"""Durability, compaction and repair through real mounts:

* files made durable (fsync, fdatasync) survive SIGKILL of the mount process at random moments
  (``WASMER_DFS_CRASH_ROUNDS`` rounds, 10 by default);
* a compaction killed at any step, or at a random moment, loses nothing;
* ``--compact-now`` brings a log of rewritten data down to the live data;
* a compaction in the background keeps the writes made while it runs;
* a torn tail is cut with a warning; damage in the middle stops the mount with the repair
  command, and ``verify --repair`` salvages the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.mount.conftest import _fusermount

if TYPE_CHECKING:
    from tests.mount.conftest import Mounter, MountProc

MiB = 1 << 20
WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = int(os.environ.get("WASMER_DFS_CRASH_ROUNDS", "10"))
CRASH_ENV = "WASMER_DFS_COMPACT_CRASH_AT"
PAUSE_ENV = "WASMER_DFS_COMPACT_PAUSE_AT"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_record(path: Path) -> dict[str, str]:
    """name -> sha256 of every complete line (the writer may die mid-line)."""
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and len(parts[1]) == 64:
                out[parts[0]] = parts[1]
    return out


def check_files(mnt: Path, want: dict[str, str]) -> None:
    for name, digest in want.items():
        p = mnt / name
        assert p.exists(), f"{name} was made durable, but is gone after the crash"
        assert sha(p.read_bytes()) == digest, f"{name} reads back other content after the crash"


def kill_mount(mp: MountProc) -> None:
    """SIGKILL the mount process by its pid, and take the dead mount off."""
    mp.signal(signal.SIGKILL)
    mp.proc.wait(timeout=15)
    if mp.in_proc_mounts():
        _fusermount("-uz", str(mp.mnt))
    deadline = time.monotonic() + 10
    while mp.in_proc_mounts() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mp.in_proc_mounts()


def start_writer(mnt: Path, record: Path, prefix: str, seed: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(mnt), str(record), prefix, str(seed)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def stop_writer(w: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(w.pid, signal.SIGKILL)
    w.wait(timeout=15)


def frame_metas(raw: bytes | bytearray) -> list[int]:
    """Offsets of the metadata of every record (52-byte frame heads, docs/adr/0003)."""
    pos = 8 + 2 + 4 + int.from_bytes(raw[10:14], "little") + 4
    out = []
    while pos + 52 <= len(raw):
        meta_len = int.from_bytes(raw[pos + 4 : pos + 8], "little")
        data_len = int.from_bytes(raw[pos + 8 : pos + 16], "little")
        out.append(pos + 52)
        pos += 52 + meta_len + data_len
    assert pos == len(raw), "the frame walk lost its way"
    return out


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[mount tier] {text}")


# --- SIGKILL at random moments ------------------------------------------------------------------
@pytest.mark.timeout(120 + 15 * ROUNDS)
def test_fsynced_files_survive_sigkill_of_the_mount(
    mounter: Mounter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt, logdir = mounter.dirs()
    record = tmp_path / "record.txt"  # outside the mount
    rng = random.Random(int(os.environ.get("WASMER_DFS_CRASH_SEED", "1234")))
    checked: dict[str, str] = {}
    started = time.monotonic()
    for rnd in range(ROUNDS):
        mp = mounter.mount(mnt, logdir, "--compact-mode", "size", "--compact-threshold-size",
                           str(3 * MiB))  # fmt: skip
        fresh = {k: v for k, v in read_record(record).items() if k not in checked}
        check_files(mnt, fresh)  # what the last round recorded, after its crash
        checked.update(fresh)
        writer = start_writer(mnt, record, f"r{rnd:03d}", rng.randrange(1 << 30))
        time.sleep(rng.uniform(0.2, 1.2))
        kill_mount(mp)
        stop_writer(writer)
    mp = mounter.mount(mnt, logdir)
    everything = read_record(record)
    check_files(mnt, everything)
    assert mp.unmount() == 0, mp.stderr()
    assert len(everything) > ROUNDS, "the writer hardly wrote anything"
    report(
        capsys,
        f"{ROUNDS} SIGKILL rounds in {time.monotonic() - started:.1f} s: all"
        f" {len(everything)} fsynced files intact",
    )


# --- crashes during compaction -------------------------------------------------------------------
@pytest.fixture(scope="module")
def rewritten(module_mounter: Mounter) -> tuple[Path, dict[str, str]]:
    """A log of ~12 MiB in which most data was overwritten; built once per module."""
    mnt, logdir = module_mounter.dirs("rewritten")
    mp = module_mounter.mount(mnt, logdir, "--compact-mode", "never")
    rng = random.Random(7)
    want: dict[str, str] = {}
    for i in range(24):
        for _ in range(4):
            data = rng.randbytes(rng.choice((20_000, 130_000)))
            (mnt / f"f{i:02d}").write_bytes(data)
        want[f"f{i:02d}"] = sha(data)
    (mnt / "sub").mkdir()
    (mnt / "sub" / "small").write_bytes(b"small")
    want["sub/small"] = sha(b"small")
    assert mp.unmount() == 0, mp.stderr()
    return logdir, want


def copy_chain(src: Path, mounter: Mounter, name: str) -> tuple[Path, Path]:
    mnt, logdir = mounter.dirs(name)
    shutil.rmtree(logdir)
    shutil.copytree(src, logdir)
    return mnt, logdir


@pytest.mark.parametrize(
    "step", ["planned", "copy:40", "built", "synced", "replacing", "replaced", "attested"]
)
def test_a_compaction_killed_at_any_step_loses_nothing(
    mounter: Mounter, rewritten: tuple[Path, dict[str, str]], step: str
) -> None:
    src, want = rewritten
    mnt, logdir = copy_chain(src, mounter, "c")
    size = (logdir / "local.log").stat().st_size
    out = mounter.attempt(mnt, logdir, "--compact-now", env={CRASH_ENV: step})
    assert out.returncode == -signal.SIGKILL, out.stderr
    mp = mounter.mount(mnt, logdir, "--compact-mode", "never")
    check_files(mnt, want)
    assert mp.unmount() == 0, mp.stderr()
    compacted = (logdir / "local.log").stat().st_size < size / 2
    assert compacted is (step in ("replaced", "attested")), (step, size)
    assert not [p for p in logdir.iterdir() if p.name.endswith(".tmp")]
    r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": mp.passcode or ""})
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_compaction_killed_at_random_moments_loses_nothing(
    mounter: Mounter, rewritten: tuple[Path, dict[str, str]]
) -> None:
    src, want = rewritten
    mnt, logdir = copy_chain(src, mounter, "r")
    rng = random.Random(99)
    for _ in range(4):
        mp = mounter.spawn(mnt, logdir, "--compact-now", env={PAUSE_ENV: "copy:0.002"})
        time.sleep(rng.uniform(0.3, 1.5))
        mp.signal(signal.SIGKILL)
        mp.proc.wait(timeout=15)
        if mp.in_proc_mounts():
            _fusermount("-uz", str(mnt))
        mp = mounter.mount(mnt, logdir, "--compact-mode", "never")
        check_files(mnt, want)
        assert mp.unmount() == 0, mp.stderr()


# --- space ---------------------------------------------------------------------------------------
def test_compact_now_brings_a_rewritten_file_down_to_its_size(
    mounter: Mounter, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--compact-mode", "never")
    size = 32 * MiB
    block = random.Random(3).randbytes(MiB)
    for k in range(5):  # written once, rewritten 4 times
        with open(mnt / "big", "wb") as f:
            for i in range(size // MiB):
                f.write(block[k:] + block[:k] if i % 2 else block)
    digest = sha((mnt / "big").read_bytes())
    assert mp.unmount() == 0, mp.stderr()
    before = (logdir / "local.log").stat().st_size
    mp = mounter.mount(mnt, logdir, "--compact-now", "--compact-mode", "never")
    after = (logdir / "local.log").stat().st_size
    assert sha((mnt / "big").read_bytes()) == digest
    assert "compacted the log" in mp.stderr()
    assert mp.unmount() == 0, mp.stderr()
    assert after <= 1.3 * size, f"the log is {after / size:.2f}x the live data"
    report(
        capsys,
        f"32 MiB written 5 times: log {before / MiB:.1f} MiB, after --compact-now"
        f" {after / MiB:.1f} MiB ({after / size:.3f}x the live data)",
    )


# --- compaction in the background ----------------------------------------------------------------
def test_a_compaction_in_the_background_keeps_the_writes_made_meanwhile(
    mounter: Mounter, tmp_path: Path
) -> None:
    mnt, logdir = mounter.dirs()
    record = tmp_path / "record.txt"
    mp = mounter.mount(
        mnt, logdir, "--compact-mode", "size", "--compact-threshold-size", str(2 * MiB),
        global_args=("-v",), env={PAUSE_ENV: "built:1.0"},
    )  # fmt: skip
    (mnt / "old").write_bytes(b"o" * 300_000)
    for _ in range(60):  # garbage for the compaction to drop: 60 MB, worth it while the
        (mnt / "churn").write_bytes(os.urandom(1_000_000))  # writer adds live data
    writer = start_writer(mnt, record, "bg", 5)
    deadline = time.monotonic() + 60  # the writer keeps it busy: the compaction is overdue
    while "compacted the log" not in mp.stderr() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    stop_writer(writer)
    assert "compacted the log" in mp.stderr(), mp.stderr()
    want = read_record(record)
    check_files(mnt, want)
    mp = mounter.remount(mp)
    check_files(mnt, want)
    assert (mnt / "old").read_bytes() == b"o" * 300_000
    assert mp.unmount() == 0, mp.stderr()
    assert "Traceback" not in mp.stderr()


# --- torn tails and damage -----------------------------------------------------------------------
def test_a_torn_tail_is_cut_with_a_warning(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir)
    (mnt / "f").write_bytes(b"durable")
    assert mp.unmount() == 0, mp.stderr()
    log = logdir / "local.log"
    size = log.stat().st_size
    with open(log, "ab") as f:  # half a record: what a crash in the middle of a write leaves
        f.write(b"WR\x02\x01" + os.urandom(40))
    mp = mounter.mount(mnt, logdir)
    assert (mnt / "f").read_bytes() == b"durable"
    assert f"44 bytes cut, offsets {size} to {size + 44}" in mp.stderr(), mp.stderr()
    assert mp.unmount() == 0, mp.stderr()


@pytest.mark.parametrize("checkpoint", [True, False])
def test_damage_in_the_middle_stops_the_mount_and_repair_salvages_the_rest(
    mounter: Mounter, checkpoint: bool
) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--compact-mode", "never")
    files = {f"f{i:02d}": random.Random(i).randbytes(10_000) for i in range(30)}
    for name, data in files.items():
        (mnt / name).write_bytes(data)
    assert mp.unmount() == 0, mp.stderr()
    if not checkpoint:
        (logdir / "local.ckpt").unlink()
    log = logdir / "local.log"
    raw = bytearray(log.read_bytes())
    metas = frame_metas(raw)
    raw[metas[len(metas) // 2] + 3] ^= 0x08  # the metadata of a record in the middle
    log.write_bytes(bytes(raw))
    out = mounter.attempt(mnt, logdir, timeout=30)
    if out.mounted:  # from the checkpoint: the check of the prefix stops it
        mp = mounter.procs[-1]
        rc = mp.wait(timeout=30)
        out = type(out)(rc, mp.stderr(), False)
    assert out.returncode == 3, out.stderr
    assert f"wasmer-dfs verify --repair {logdir}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    env = {"WASMER_DFS_PASSCODE": mp.passcode or ""}
    r = mounter.cli("verify", "--repair", str(logdir), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repair: salvaged" in r.stdout and r.stdout.rstrip().endswith("ok"), r.stdout
    assert [p.name for p in logdir.glob("local.log.damaged-*")], list(logdir.iterdir())
    lost = r.stdout.count("lost:")
    mp = mounter.mount(mnt, logdir)
    intact = sum(
        (mnt / name).exists() and (mnt / name).read_bytes() == data for name, data in files.items()
    )
    assert intact >= len(files) - 2 - lost, r.stdout
    for name, data in files.items():
        if (mnt / name).exists():
            assert (mnt / name).read_bytes() in (data, b""), name
    assert mp.unmount() == 0, mp.stderr()


def test_verify_repair_of_a_sound_log_loses_nothing(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir)
    (mnt / "a").write_bytes(b"a" * 70_000)
    assert mp.unmount() == 0, mp.stderr()
    r = mounter.cli(
        "verify", "--repair", str(logdir), env={"WASMER_DFS_PASSCODE": mp.passcode or ""}
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing was lost" in r.stdout
    mp = mounter.mount(mnt, logdir)
    assert (mnt / "a").read_bytes() == b"a" * 70_000
    assert mp.unmount() == 0, mp.stderr()


def test_a_checkpoint_makes_the_next_open_replay_only_what_follows(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, global_args=("-v",))
    for i in range(50):
        (mnt / f"f{i}").write_bytes(b"x" * i)
    assert mp.unmount() == 0, mp.stderr()
    assert (logdir / "local.ckpt").exists()
    mp = mounter.mount(mnt, logdir, global_args=("-v",))
    assert "state loaded from the checkpoint; 0 transactions replayed after it" in mp.stderr()
    assert (mnt / "f49").read_bytes() == b"x" * 49
    assert mp.unmount() == 0, mp.stderr()
