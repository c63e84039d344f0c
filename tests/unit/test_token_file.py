"""Token files (adapters/token_file.py): mode 0600 whatever the umask, replaced atomically, read
back; a missing, open-moded, oversized or binary file is a clear ``TokenFileError``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adapters.token_file import TokenFileError, read_token_file, write_token_file
from domain.auth.token import MAX_TEXT


def test_written_with_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "token"
    old = os.umask(0)
    try:
        write_token_file(path, "wdfs-token.abc")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token_file(path).strip() == "wdfs-token.abc"
    write_token_file(path, "wdfs-token.def")
    assert read_token_file(path).strip() == "wdfs-token.def"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_a_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_token_file(path, "wdfs-token.abc")
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="chmod 600"):
        read_token_file(path)


@pytest.mark.parametrize("case", ["missing", "directory", "large", "binary"])
def test_unreadable_token_files_are_clear_errors(tmp_path: Path, case: str) -> None:
    path = tmp_path / "token"
    if case == "directory":
        path.mkdir(mode=0o700)
    elif case == "large":
        write_token_file(path, "A" * (MAX_TEXT + 5))
    elif case == "binary":
        path.write_bytes(b"\xff\xfe")
        path.chmod(0o600)
    message = {
        "missing": "cannot read",
        "directory": "not a regular file",
        "large": "larger than",
        "binary": "not text",
    }[case]
    with pytest.raises(TokenFileError, match=message):
        read_token_file(path)


def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot write the token"):
        write_token_file(tmp_path / "no" / "such" / "token", "x")
