"""Secrets without a terminal (entrypoints/passwords.py): a passfile's first line, refused when
its group or others may read or write it; an extpass command's first line, refused when it fails
or prints nothing; one source at a time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from entrypoints.passwords import SecretError, read_passfile, run_extpass, secret_from


def passfile(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    p = tmp_path / "pass"
    p.write_bytes(content)
    os.chmod(p, mode)
    return p


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        (b"secret\n", b"secret"),
        (b"secret", b"secret"),
        (b"secret\r\n", b"secret"),
        (b"first line\nsecond line\n", b"first line"),
        (b" spaces kept \n", b" spaces kept "),
    ],
)
def test_passfile_first_line(tmp_path: Path, content: bytes, secret: bytes) -> None:
    assert read_passfile(passfile(tmp_path, content)) == secret


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_passfile_others_may_read_or_write_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(SecretError, match=r"by its group or others.*chmod 600"):
        read_passfile(passfile(tmp_path, b"secret\n", mode))


def test_passfile_owner_only_modes_accepted(tmp_path: Path) -> None:
    assert read_passfile(passfile(tmp_path, b"s\n", 0o400)) == b"s"


def test_passfile_missing_empty_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot open"):
        read_passfile(tmp_path / "missing")
    with pytest.raises(SecretError, match="empty first line"):
        read_passfile(passfile(tmp_path, b"\nsecret\n"))
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretError, match="not a regular file"):
        read_passfile(d)


def test_passfile_symlink_refused(tmp_path: Path) -> None:
    target = passfile(tmp_path, b"secret\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretError, match="cannot open"):
        read_passfile(link)


def test_extpass_first_line_of_stdout() -> None:
    assert run_extpass("echo secret") == b"secret"
    assert run_extpass("printf 'a b\\nc\\n'") == b"a b"
    prog = f"{sys.executable} -c \"print('x y'); print('z')\""
    assert run_extpass(prog) == b"x y"


def test_extpass_failures() -> None:
    with pytest.raises(SecretError, match="exited with 3"):
        run_extpass("sh -c 'exit 3'")
    with pytest.raises(SecretError, match="empty first line"):
        run_extpass("true")
    with pytest.raises(SecretError, match="cannot run"):
        run_extpass("/nonexistent/askpass")
    with pytest.raises(SecretError, match="cannot be split"):
        run_extpass("echo 'unterminated")
    with pytest.raises(SecretError, match="is empty"):
        run_extpass("   ")


def test_one_source_at_a_time(tmp_path: Path) -> None:
    f = passfile(tmp_path, b"from file\n")
    assert secret_from(None, None, None) is None
    assert secret_from("given", None, None) == b"given"
    assert secret_from(None, f, None) == b"from file"
    assert secret_from(None, None, "echo from-command") == b"from-command"
    with pytest.raises(SecretError, match="not --passfile and --extpass"):
        secret_from(None, f, "echo x")
    with pytest.raises(SecretError, match="not --passcode and --passfile"):
        secret_from("given", f, None)
