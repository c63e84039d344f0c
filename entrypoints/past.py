"""`wasmer-dfs history PATH` and `wasmer-dfs restore PATH --as-of TIME [--to NEW_PATH]` (issue
15 part B, docs/adr/0023): both read the mount's ``/.wasmer-dfs/history/PATH/`` view
(application/views/history.py), so they work on any mount, local or replicated, without the
passcode. A restore writes the version's bytes back through the mount as a new write (a new
event, replicated like any other): history is never rewritten."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import typer

from application.views.history import VERSIONS_FILE
from entrypoints.console import USAGE, fail, say
from entrypoints.timetravel import as_of_ms


def _mount_of(path: Path) -> tuple[Path, Path]:
    """(the wasmer-dfs mount holding ``path``, ``path`` relative to it); exit 2 otherwise."""
    full = Path(os.path.abspath(path))
    for top in (full, *full.parents):
        if os.path.ismount(top) and (top / ".wasmer-dfs" / "status").is_file():
            rel = full.relative_to(top)
            if not rel.parts:
                fail(f"{path} is the root of the mount: name a file in it", USAGE)
            if rel.parts[0] == ".wasmer-dfs":
                fail(f"{path} is one of the mount's own files: it has no history", USAGE)
            return top, rel
    fail(f"{path} is not inside a mounted wasmer-dfs file system", USAGE)


def _versions(mnt: Path, rel: Path, shown: Path) -> tuple[Path, list[dict[str, object]]]:
    where = mnt / ".wasmer-dfs" / "history" / rel
    try:
        text = (where / VERSIONS_FILE).read_text()
    except NotADirectoryError:
        fail(f"{shown} has no versions in the log")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if where.is_dir():
                fail(f"{shown} is a directory: its files have versions (use --recursive)", USAGE)
            fail(f"{shown} has no versions in the log")
        fail(f"cannot read the history of {shown}: {exc.strerror or exc}")
    return where, json.loads(text)


def show_history(path: Path, as_json: bool) -> None:
    mnt, rel = _mount_of(path)
    _, found = _versions(mnt, rel, path)
    if as_json:
        typer.echo(json.dumps(found, indent=1))
        return
    typer.echo(f"{'TIME':<24}  {'SIZE':>12}  {'AUTHOR':<16}  CONFLICT")
    for v in found:
        author = str(v["author"])[:16] or "-"
        conflict = f"yes ({v['as']})" if v["conflict"] else "no"
        typer.echo(f"{v['time']!s:<24}  {v['size']!s:>12}  {author:<16}  {conflict}")
    say(f"{len(found)} versions of {path}")


def _restore_file(mnt: Path, rel: Path, target: Path, at: int, shown: Path) -> None:
    where, found = _versions(mnt, rel, shown)
    older = [v for v in found if not v["conflict"] and int(str(v["ms"])) <= at]
    if not older:
        first = found[0]["time"] if found else "none"
        fail(f"{shown} has no version at or before that time (the oldest: {first})")
    v = older[-1]
    data = (where / str(v["name"])).read_bytes()
    if len(data) != v["size"]:
        fail(f"version {v['name']} of {shown} read {len(data)} of {v['size']} bytes")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.restore-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), int(str(v["mode"]), 8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fail(f"cannot restore {shown} to {target}: {exc.strerror or exc}")
    say(f"restored {shown} as of {v['time']} ({v['size']} bytes) to {target}")


def restore(path: Path, as_of: str, to: Path | None, recursive: bool) -> None:
    at = as_of_ms(as_of)
    mnt, rel = _mount_of(path)
    target = Path(os.path.abspath(to if to is not None else path))
    if to is not None:
        tmnt, _ = _mount_of(target)
        if tmnt != mnt:
            fail(f"--to {to} is not in the same mount as {path}", USAGE)
        if target.exists():
            fail(f"--to {to} exists already: name a new path", USAGE)
    if recursive:
        fail("restore --recursive (a whole directory) is not built yet: restore its files", USAGE)
    _restore_file(mnt, rel, target, at, path)
