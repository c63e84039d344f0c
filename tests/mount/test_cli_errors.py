"""The `wasmer-dfs` command line as a user meets it: passcodes, damaged or foreign logs, mount
options, signals, and the commands that are not built yet. Every failure must be one clear
"wasmer-dfs: error: ..." line and a non-zero exit code, never a Python traceback."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.mount.conftest import Mounter, Outcome

PW_A = "passcode A: first chain"
PW_B = "passcode B: another one"


def assert_clean_failure(out: Outcome, *, code: int | None = None) -> None:
    assert not out.mounted, f"the mount should have been refused; stderr:\n{out.stderr}"
    assert out.returncode is not None, f"still running after 30 s; stderr:\n{out.stderr}"
    assert out.returncode != 0, out.stderr
    if code is not None:
        assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "wasmer-dfs: error: " in out.stderr, out.stderr


def make_chain(
    mounter: Mounter, name: str, passcode: str | None, files: dict[str, bytes]
) -> tuple[Path, Path]:
    """A chain in its own log directory holding `files`; unmounted again."""
    mnt, logdir = mounter.dirs(name)
    mp = mounter.mount(
        mnt, logdir, passcode=passcode, global_args=() if passcode else ("--no-auth",)
    )
    for rel, payload in files.items():
        (mnt / rel).write_bytes(payload)
    assert mp.unmount() == 0, mp.stderr()
    assert not mp.is_mounted()
    return mnt, logdir


# --- passcodes ------------------------------------------------------------------------------------
def test_wrong_passcode_changes_nothing(mounter: Mounter) -> None:
    mnt, logdir = make_chain(mounter, "a", PW_A, {"f": b"secret content"})
    before = mounter.log_digests(logdir)
    assert before

    out = mounter.attempt(mnt, logdir, passcode=PW_B)
    assert_clean_failure(out, code=3)
    assert "wrong passcode" in out.stderr
    assert mounter.log_digests(logdir) == before

    mp = mounter.mount(mnt, logdir, passcode=PW_A)
    assert (mnt / "f").read_bytes() == b"secret content"
    assert mp.unmount() == 0, mp.stderr()


def test_passcode_from_environment(mounter: Mounter) -> None:
    mnt, logdir = make_chain(mounter, "a", PW_A, {"f": b"via env"})
    mp = mounter.mount(mnt, logdir, passcode=None, passcode_env=PW_A)
    assert (mnt / "f").read_bytes() == b"via env"
    assert mp.unmount() == 0, mp.stderr()


def test_no_passcode_and_no_tty(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    out = mounter.attempt(mnt, logdir, passcode=None)
    assert_clean_failure(out)
    assert "WASMER_DFS_PASSCODE" in out.stderr
    assert not (logdir / "local.log").exists() or (logdir / "local.log").stat().st_size == 0


# --- foreign and damaged logs ---------------------------------------------------------------------
def test_log_of_another_chain(mounter: Mounter) -> None:
    _, log1 = make_chain(mounter, "one", PW_A, {"f": b"chain one"})
    mnt2, log2 = make_chain(mounter, "two", PW_B, {"f": b"chain two"})
    shutil.copyfile(log1 / "local.log", log2 / "local.log")
    before = mounter.log_digests(log2)
    out = mounter.attempt(mnt2, log2, passcode=PW_B)
    assert_clean_failure(out)
    assert mounter.log_digests(log2) == before


def test_truncated_header(mounter: Mounter) -> None:
    mnt, logdir = make_chain(mounter, "a", PW_A, {"f": b"x" * 100})
    with open(logdir / "local.log", "r+b") as f:
        f.truncate(10)
    out = mounter.attempt(mnt, logdir, passcode=PW_A)
    assert_clean_failure(out)
    assert "header" in out.stderr.lower() or "truncated" in out.stderr.lower(), out.stderr
    assert (logdir / "local.log").stat().st_size == 10, "the damaged log was changed"


@pytest.fixture(scope="module")
def corruptible(module_mounter: Mounter) -> tuple[Path, dict[str, bytes]]:
    """50 files of 20 KiB, written once per module; tests corrupt copies of the pristine log."""
    files = {f"f{i:02d}": random.Random(i).randbytes(20 * 1024) for i in range(50)}
    mnt, logdir = module_mounter.dirs("pristine")
    mp = module_mounter.mount(mnt, logdir, passcode=PW_A)
    for name, payload in files.items():
        (mnt / name).write_bytes(payload)
    assert mp.unmount() == 0, mp.stderr()
    return logdir / "local.log", files


@pytest.mark.parametrize("where", [0.4, 0.6])
def test_flipped_byte_never_returns_wrong_content(
    mounter: Mounter, corruptible: tuple[Path, dict[str, bytes]], where: float
) -> None:
    pristine, files = corruptible
    mnt, logdir = mounter.dirs()
    log = logdir / "local.log"
    shutil.copyfile(pristine, log)
    raw = bytearray(log.read_bytes())
    at = int(len(raw) * where)
    raw[at] ^= 0x01
    log.write_bytes(bytes(raw))
    before = mounter.log_digests(logdir)

    out = mounter.attempt(mnt, logdir, passcode=PW_A)
    assert "Traceback" not in out.stderr, out.stderr
    if not out.mounted:
        assert_clean_failure(out)
        assert mounter.log_digests(logdir) == before, "a refused mount changed the log"
        return
    mp = mounter.procs[-1]
    unreadable = []
    for name, payload in files.items():
        try:
            got = (mnt / name).read_bytes()
        except OSError as exc:
            assert exc.errno == errno.EIO, (name, exc)
            unreadable.append(name)
            continue
        assert got == payload, f"{name} reads back different content than written"
    assert len(unreadable) < len(files)
    assert mp.unmount() == 0, mp.stderr()
    assert "Traceback" not in mp.stderr(), mp.stderr()


# --- mount options --------------------------------------------------------------------------------
def test_non_empty_mount_dir(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    (mnt / "already-here").write_bytes(b"underneath")
    out = mounter.attempt(mnt, logdir, passcode=PW_A)
    assert_clean_failure(out)
    assert "empty" in out.stderr, out.stderr

    mp = mounter.mount(mnt, logdir, "--non-empty", passcode=PW_A)
    assert not (mnt / "already-here").exists()
    (mnt / "on-top").write_bytes(b"in the fs")
    assert mp.unmount() == 0, mp.stderr()
    assert (mnt / "already-here").read_bytes() == b"underneath"
    assert not (mnt / "on-top").exists()


@pytest.mark.parametrize("flag", ["--read-only", "-r"])
def test_read_only(mounter: Mounter, flag: str) -> None:
    mnt, logdir = make_chain(mounter, "a", PW_A, {"f": b"read me"})
    before = mounter.log_digests(logdir)
    mp = mounter.mount(mnt, logdir, flag, passcode=PW_A)
    assert (mnt / "f").read_bytes() == b"read me"
    assert [p.name for p in mnt.iterdir()] == ["f"]
    attempts = [
        lambda: (mnt / "g").write_bytes(b"new"),
        lambda: open(mnt / "f", "ab").close(),
        lambda: (mnt / "d").mkdir(),
        lambda: os.unlink(mnt / "f"),
        lambda: os.rename(mnt / "f", mnt / "h"),
        lambda: os.chmod(mnt / "f", 0o600),
        lambda: os.truncate(mnt / "f", 0),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as ei:
            attempt()
        assert ei.value.errno == errno.EROFS
    assert (mnt / "f").read_bytes() == b"read me"
    assert mp.unmount() == 0, mp.stderr()
    assert mounter.log_digests(logdir) == before, "a read-only mount changed the log"


def test_temp_removes_the_log(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--temp", passcode=PW_A)
    (mnt / "f").write_bytes(b"temporary")
    assert (logdir / "local.log").exists()
    assert mp.unmount() == 0, mp.stderr()
    assert not (logdir / "local.log").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(mounter: Mounter, sig: signal.Signals) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, passcode=PW_A)
    payload = random.Random(7).randbytes(100_000)
    with open(mnt / "f", "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    (mnt / "d").mkdir()
    mp.signal(sig)
    assert mp.wait() == 0, mp.stderr()
    assert not mp.is_mounted()
    assert "Traceback" not in mp.stderr(), mp.stderr()

    mp = mounter.mount(mnt, logdir, passcode=PW_A)
    assert (mnt / "f").read_bytes() == payload
    assert (mnt / "d").is_dir()
    assert mp.unmount() == 0, mp.stderr()


# --- --no-auth ------------------------------------------------------------------------------------
def test_no_auth_is_unencrypted(mounter: Mounter) -> None:
    marker = b"plain text marker: --no-auth does not encrypt 7f3a9c"
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, passcode=None, global_args=("--no-auth",))
    (mnt / "f").write_bytes(marker)
    assert mp.unmount() == 0, mp.stderr()
    assert "mounted unencrypted" in mp.stderr()

    # --no-auth also works as an option of mount.
    mp = mounter.mount(mnt, logdir, "--no-auth", passcode=None)
    assert (mnt / "f").read_bytes() == marker
    assert mp.unmount() == 0, mp.stderr()

    # Documents that --no-auth is NOT encrypted: the content is in the log in clear.
    assert marker in (logdir / "local.log").read_bytes()

    out = mounter.attempt(mnt, logdir, passcode=PW_A)
    assert_clean_failure(out)


def test_encrypted_chain_refuses_no_auth(mounter: Mounter) -> None:
    mnt, logdir = make_chain(mounter, "a", PW_A, {"f": b"encrypted"})
    before = mounter.log_digests(logdir)
    out = mounter.attempt(mnt, logdir, passcode=None, global_args=("--no-auth",))
    assert_clean_failure(out)
    out = mounter.attempt(mnt, logdir, "--no-auth", passcode=None)
    assert_clean_failure(out)
    assert mounter.log_digests(logdir) == before


# --- formats --------------------------------------------------------------------------------------
def test_formats_can_mix_in_one_log(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    payload = random.Random(3).randbytes(70_000)
    mp = mounter.mount(
        mnt, logdir, "--meta-format", "json", "--data-format", "mpack", passcode=PW_A
    )
    (mnt / "sub").mkdir()
    (mnt / "sub" / "f").write_bytes(payload)
    os.chmod(mnt / "sub" / "f", 0o604)
    mp = mounter.remount(mp, "--meta-format", "bincode", "--data-format", "bincode")
    assert (mnt / "sub" / "f").read_bytes() == payload
    (mnt / "g").write_bytes(b"bincode written")
    mp = mounter.remount(mp, "--meta-format", "mpack", "--data-format", "json")
    assert (mnt / "sub" / "f").read_bytes() == payload
    assert (mnt / "g").read_bytes() == b"bincode written"
    assert (mnt / "sub" / "f").stat().st_mode & 0o777 == 0o604
    (mnt / "h").write_bytes(b"json data")
    mp = mounter.remount(mp, "--data-format", "bincode")
    assert (mnt / "h").read_bytes() == b"json data"
    assert mp.unmount() == 0, mp.stderr()


# --- help and commands not built yet --------------------------------------------------------------
MOUNT_OPTIONS = [
    "--allow-other",
    "--allow-root",
    "--compact-now",
    "--impersonate-uid",
    "--non-empty",
    "--read-only",
    "--temp",
    "--write-back",
    "--compact-mode",
    "--compact-threshold-factor",
    "--compact-threshold-size",
    "--compact-timer",
    "--configured-for",
    "--data-format",
    "--gid",
    "--meta-format",
    "--passcode",
    "--recovery-mode",
    "--uid",
]


def missing_options(help_text: str) -> list[str]:
    return [
        o for o in MOUNT_OPTIONS if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", help_text)
    ]


def test_root_help_lists_commands(mounter: Mounter) -> None:
    r = mounter.cli("--help")
    assert r.returncode == 0, r.stderr
    for command in ("mount", "user", "group", "token"):
        # a row of the commands table: the name, then two or more spaces, then its summary
        assert re.search(rf"^\W*{command}\s{{2,}}\S", r.stdout, re.M), r.stdout


def test_mount_help_lists_every_option(mounter: Mounter) -> None:
    r = mounter.cli("mount", "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    missing = missing_options(r.stdout)
    assert not missing, (missing, r.stdout)


def test_mount_help_at_80_columns_lists_every_option(mounter: Mounter) -> None:
    env = {"COLUMNS": "80"}
    r = mounter.cli("mount", "--help", env=env)
    assert r.returncode == 0, r.stderr
    missing = missing_options(r.stdout)
    assert not missing, missing


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("user", "create"), "Missing option '--email'"),
        (("group", "create"), "Missing argument"),
        (("token", "generate"), "Missing option '--email'"),
        (("user", "details"), "give --email EMAIL"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_auth_commands_without_their_arguments_fail_cleanly(
    mounter: Mounter, args: tuple[str, ...], says: str
) -> None:
    r = mounter.cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert says in r.stderr, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_mount_of_a_local_chain_with_a_token_is_refused(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    r = mounter.cli("--token-path", "/etc/hostname", "mount", str(mnt), str(logdir))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "a token mounts a chain of a server" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not any(logdir.iterdir())


@pytest.mark.parametrize(
    ("url", "extra", "says"),
    [
        ("http://127.0.0.1:5000/db/x", (), "not a chain URL"),
        ("ws://127.0.0.1:5000/x", (), "not a chain URL"),
        ("ws://127.0.0.1:5000/db/a/b", (), "not a chain name"),
        ("ws://127.0.0.1:5000/db/x", ("--compact-now", "--read-only"), "--read-only"),
    ],
)
def test_bad_remote_mounts_fail_cleanly(
    mounter: Mounter, url: str, extra: tuple[str, ...], says: str
) -> None:
    mnt, logdir = mounter.dirs()
    out = mounter.attempt(mnt, url, str(logdir), *extra, passcode=PW_A)
    assert_clean_failure(out)
    assert says in out.stderr, out.stderr
    assert not any(logdir.iterdir())


def test_verify_passes_a_sound_log_and_changes_nothing(
    mounter: Mounter, corruptible: tuple[Path, dict[str, bytes]]
) -> None:
    pristine, files = corruptible
    _mnt, logdir = mounter.dirs()
    shutil.copyfile(pristine, logdir / "local.log")
    before = mounter.log_digests(logdir)
    r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": PW_A})
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("ok")
    assert f"{len(files) + 1} inodes" in r.stdout
    assert mounter.log_digests(logdir) == before


def test_verify_finds_a_flipped_data_byte(
    mounter: Mounter, corruptible: tuple[Path, dict[str, bytes]]
) -> None:
    pristine, _files = corruptible
    _mnt, logdir = mounter.dirs()
    raw = bytearray(pristine.read_bytes())
    # The data of one page of 20 KiB: walk the frames (52-byte heads, ADR 0003) from the header.
    page = 12 + 20 * 1024 + 16  # nonce + ciphertext + tag
    pos = 8 + 2 + 4 + int.from_bytes(raw[10:14], "little") + 4  # past the file header
    target = None
    while pos + 52 <= len(raw):
        meta_len = int.from_bytes(raw[pos + 4 : pos + 8], "little")
        data_len = int.from_bytes(raw[pos + 8 : pos + 16], "little")
        if data_len == page and target is None:
            target = pos + 52 + meta_len + data_len // 2
        pos += 52 + meta_len + data_len
    assert target is not None and pos == len(raw), "the frame walk lost its way"
    raw[target] ^= 0x40
    (logdir / "local.log").write_bytes(bytes(raw))
    r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": PW_A})
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "problem" in r.stderr or "error" in r.stderr, r.stderr


def test_verify_with_a_wrong_passcode_fails_clearly(
    mounter: Mounter, corruptible: tuple[Path, dict[str, bytes]]
) -> None:
    pristine, _files = corruptible
    _mnt, logdir = mounter.dirs()
    shutil.copyfile(pristine, logdir / "local.log")
    r = mounter.cli("verify", str(logdir), env={"WASMER_DFS_PASSCODE": PW_B})
    assert r.returncode == 3 and "wrong passcode" in r.stderr
