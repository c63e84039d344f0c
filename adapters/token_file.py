"""Token files (issue 14, docs/adr/0018): written with mode 0600 whatever the umask, atomically
(a temporary file created with O_EXCL in the same directory, fsync'd, renamed over the old
one), and read back bounded; a token file that others may read is refused, as ssh refuses such
a private key."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from domain.auth.errors import TokenError
from domain.auth.token import MAX_TEXT


class TokenFileError(TokenError):
    """A token file that cannot be written or read, or whose mode lets others read it."""


def write_token_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, replacing any file there in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise TokenFileError(f"cannot write the token to {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TokenFileError(f"cannot write the token to {path}: {exc.strerror}") from None


def read_token_file(path: Path) -> str:
    """The text of the token file ``path``; ``TokenFileError`` when it is missing, too large,
    not text, or readable or writable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise TokenFileError(f"cannot read the token file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"the token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise TokenFileError(
                f"the token file {path} has mode {stat.S_IMODE(info.st_mode):04o}: others may"
                f" read its keys; run `chmod 600 {path}` (or generate a new token)"
            )
        data = os.read(fd, MAX_TEXT + 2)
    except OSError as exc:
        raise TokenFileError(f"cannot read the token file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TEXT + 1:
        raise TokenFileError(f"the token file {path} is larger than {MAX_TEXT} bytes: refused")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise TokenFileError(
            f"the token file {path} is not a wasmer-dfs token (not text)"
        ) from None
