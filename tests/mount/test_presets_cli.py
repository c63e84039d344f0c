"""`--configured-for`, `--meta-format`/`--data-format` and `--auth` as a user meets them (issue
12, docs/adr/0014): the preset chooses the formats of new records and is recorded in the chain
header, so a remount without it keeps it; explicit formats override it; a different explicit
preset is used with a warning; `raw`, `security` without a way to validate DNSSEC, and `--auth`
(users do not exist yet) are refused with one clear line, before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from domain.formats import Format
from tests.fakes import frames
from tests.mount.test_cli_errors import assert_clean_failure

if TYPE_CHECKING:
    from tests.mount.conftest import Mounter

PW = "presets passcode"


def record_formats(logdir: Path) -> list[int]:
    return [f.fmt for f in frames((logdir / "local.log").read_bytes())]


def test_preset_formats_are_recorded_kept_and_overridden(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--configured-for", "compatibility", passcode=PW)
    (mnt / "a").write_bytes(b"json records")
    mp = mounter.remount(mp, "--non-empty")  # no --configured-for: the header's preset
    assert "warning" not in mp.stderr(), mp.stderr()
    (mnt / "b").write_bytes(b"still json")
    assert mp.unmount() == 0, mp.stderr()
    written = record_formats(logdir)
    assert written and set(written) == {Format.JSON}, written

    mp = mounter.mount(mnt, logdir, "--meta-format", "bincode", passcode=PW)
    (mnt / "c").write_bytes(b"bincode meta")
    assert mp.unmount() == 0, mp.stderr()
    later = record_formats(logdir)[len(written) :]
    assert later and set(later) == {Format.BINCODE}, later
    mp = mounter.mount(mnt, logdir, passcode=PW)
    assert [(mnt / n).read_bytes() for n in "abc"] == [
        b"json records",
        b"still json",
        b"bincode meta",
    ]
    assert mp.unmount() == 0, mp.stderr()


def test_a_different_explicit_preset_is_used_with_a_warning(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    mp = mounter.mount(mnt, logdir, "--configured-for", "balanced", passcode=PW)
    assert mp.unmount() == 0, mp.stderr()
    mp = mounter.mount(mnt, logdir, "--configured-for", "compatibility", passcode=PW)
    (mnt / "f").write_bytes(b"x")
    assert mp.unmount() == 0, mp.stderr()
    assert "created --configured-for balanced" in mp.stderr(), mp.stderr()
    assert "Traceback" not in mp.stderr()


def test_raw_is_refused(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    out = mounter.attempt(mnt, logdir, "--configured-for", "raw", passcode=PW)
    assert_clean_failure(out, code=2)
    assert "unauthenticated writes" in out.stderr, out.stderr
    assert not any(logdir.iterdir())


def test_security_without_a_validating_resolver_is_refused(mounter: Mounter) -> None:
    mnt, logdir = mounter.dirs()
    url = "ws://chain-server.invalid:5000/db/x"
    out = mounter.attempt(mnt, url, str(logdir), "--configured-for", "security", passcode=PW)
    assert_clean_failure(out, code=2)
    assert "DNSSEC" in out.stderr and "--dns-server" in out.stderr, out.stderr
    assert not any(logdir.iterdir())


def test_auth_is_refused_where_it_is_not_used(mounter: Mounter) -> None:
    """--auth names the auth service of the user, group and token commands; a mount does not
    talk to it (its chain server checks a token), so the option is refused there rather than
    accepted and ignored."""
    mnt, logdir = mounter.dirs()
    out = mounter.attempt(
        mnt, logdir, passcode=PW, global_args=("--auth", "ws://auth.example/auth")
    )
    assert_clean_failure(out, code=2)
    assert "--auth is for the user, group and token commands" in out.stderr, out.stderr
    assert not any(logdir.iterdir())
