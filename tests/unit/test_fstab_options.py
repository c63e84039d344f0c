"""The fstab helper's command line (entrypoints/fstab.py): mount(8)'s `SOURCE MOUNTPOINT -o
OPTIONS` becomes a `wasmer-dfs mount --background` command line; every manual option has an -o
name, the system's own options are ignored, a passcode in fstab and unknown options are refused.
And the helper and units install-helpers writes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from entrypoints.fstab import FstabError, parse
from entrypoints.helpers import helper_script, install, mount_unit, serve_unit

EXE = "/x/wasmer-dfs"


def argv(*args: str) -> list[str]:
    return parse(list(args)).argv(EXE)


def test_local_chain_with_every_kind_of_option() -> None:
    cmd = argv(
        "/var/lib/fs", "/mnt/fs", "-o",
        "rw,allow_other,ro,passfile=/etc/p,compact_mode=timer,log=/var/log/w.log,no_ntp,"
        "wire_encryption=256,uid=1000,nonempty",
    )  # fmt: skip
    assert cmd == [
        EXE, "--no-ntp", "--wire-encryption", "256", "mount", "--background", "/mnt/fs",
        "/var/lib/fs", "--allow-other", "--read-only", "--passfile", "/etc/p", "--compact-mode",
        "timer", "--log", "/var/log/w.log", "--uid", "1000", "--non-empty",
    ]  # fmt: skip


def test_remote_chain_with_its_log_path() -> None:
    cmd = argv("ws://h:5000/db/x", "/mnt/x", "-o", "recovery_mode=sync,log_path=/var/lib/x")
    assert cmd == [
        EXE, "mount", "--background", "/mnt/x", "ws://h:5000/db/x", "/var/lib/x",
        "--recovery-mode", "sync",
    ]  # fmt: skip
    with pytest.raises(FstabError, match="log_path= is for a ws:// source"):
        argv("/var/lib/fs", "/mnt/fs", "-o", "log_path=/y")


def test_views_are_repeatable_and_keep_their_argument() -> None:
    cmd = argv("/var/lib/fs", "/mnt/fs", "-o", "view=kv=/etc/kv.json,view=other")
    assert cmd[-4:] == ["--view", "kv=/etc/kv.json", "--view", "other"]
    with pytest.raises(FstabError, match="view needs a value"):
        argv("/var/lib/fs", "/mnt/fs", "-o", "view")


def test_system_options_are_ignored() -> None:
    plain = argv("/l", "/m")
    assert plain == [EXE, "mount", "--background", "/m", "/l"]
    system = (
        "_netdev,nofail,noauto,auto,user,users,defaults,x-systemd.automount,"
        "x-systemd.requires=network-online.target,comment=x,nodev,nosuid,noatime,rw"
    )
    assert argv("/l", "/m", "-o", system, "-n", "-s", "-v", "-t", "fuse.wasmer-dfs") == plain


def test_flags_and_forms_of_o() -> None:
    assert argv("/l", "/m", "-oallow_root", "-r")[-2:] == ["--allow-root", "--read-only"]
    assert argv("/l", "/m", "-o", "foreground", "-o", "") == [EXE, "mount", "/m", "/l"]
    assert parse(["/l", "/m", "-f"]).fake


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("passcode=hunter2", "use passfile=/path"),
        ("bogus", "unknown option 'bogus'"),
        ("allow_other=1", "takes no value"),
        ("recovery_mode", "needs a value"),
    ],
)
def test_refused_options(options: str, message: str) -> None:
    with pytest.raises(FstabError, match=message):
        argv("/l", "/m", "-o", options)


def test_bad_command_lines() -> None:
    with pytest.raises(FstabError, match="usage"):
        parse(["/only-one"])
    with pytest.raises(FstabError, match="unknown flag"):
        parse(["/l", "/m", "-z"])


def test_install_writes_the_helper_and_the_units(tmp_path: Path) -> None:
    install(tmp_path / "sbin", tmp_path / "units")
    helper = tmp_path / "sbin" / "mount.fuse.wasmer-dfs"
    assert helper.read_text() == helper_script()
    assert os.stat(helper).st_mode & 0o777 == 0o755
    assert (tmp_path / "units" / "wasmer-dfs@.service").read_text() == mount_unit()
    assert (tmp_path / "units" / "wasmer-dfs-serve.service").read_text() == serve_unit()
    # the helper runs the fstab module of this installation: -f (fake) does nothing, exit 0;
    # a bad option exits 2 with the reason
    ok = subprocess.run([str(helper), "/l", "/m", "-f"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([str(helper), "/l", "/m", "-o", "bogus"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert (
        bad.stderr
        == "mount.fuse.wasmer-dfs: error: unknown option 'bogus' (see `wasmer-dfs mount --help`)\n"
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    install(tmp_path / "sbin", tmp_path)
    # a template is verified through an instance of it
    (tmp_path / "wasmer-dfs@name.service").symlink_to("wasmer-dfs@.service")
    for unit in ("wasmer-dfs@name.service", "wasmer-dfs-serve.service"):
        r = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / unit)],
            capture_output=True, text=True, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert unit.replace("@name", "@") not in r.stderr, r.stderr  # not even a warning
        assert "wasmer-dfs" not in r.stderr, r.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verification above can fail: a unit with an unknown key is reported."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing")
    unit = tmp_path / "wasmer-dfs-broken.service"
    unit.write_text(serve_unit().replace("Type=notify", "Type=notify\nBogusKey=1"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "Unknown key" in r.stderr
