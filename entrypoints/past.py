"""`wasmer-dfs history PATH` and `wasmer-dfs restore PATH --as-of TIME [--to NEW_PATH]` (issue
15 part B, docs/adr/0023): both read the mount's ``/.wasmer-dfs/history/PATH/`` view
(application/views/history.py), so they work on any mount, local or replicated, without the
passcode. A restore writes the version's bytes back through the mount as a new write (a new
event, replicated like any other): history is never rewritten.

``restore DIR --as-of TIME --recursive`` reads the tree as it was at TIME
(``history/@MS.json`` and ``history/@MS/DIR/...``) and brings every directory, regular file and
symlink under DIR back as it was: deleted ones are created again, changed ones rewritten (each
file atomically: written to a temporary name beside it, fsynced, renamed over), unchanged ones
left as they are, and what was created after TIME is left alone (nothing is deleted)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import typer

from application.views.history import VERSIONS_FILE
from domain.timespec import iso_ms
from entrypoints.console import USAGE, fail, say
from entrypoints.timetravel import as_of_ms


def _mount_of(path: Path, root: bool = False) -> tuple[Path, Path]:
    """(the wasmer-dfs mount holding ``path``, ``path`` relative to it); exit 2 otherwise, and
    for the mount's root unless ``root``."""
    full = Path(os.path.abspath(path))
    for top in (full, *full.parents):
        if os.path.ismount(top) and (top / ".wasmer-dfs" / "status").is_file():
            rel = full.relative_to(top)
            if not rel.parts and not root:
                fail(f"{path} is the root of the mount: name a file in it", USAGE)
            if not rel.parts:
                return top, rel
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


def _tree_at(mnt: Path, at: int, shown: Path) -> list[dict[str, object]]:
    """The entries of the tree at ``at`` (``history/@MS.json``), parents first."""
    listing = mnt / ".wasmer-dfs" / "history" / f"@{at}.json"
    try:
        found = json.loads(listing.read_text())
    except FileNotFoundError:
        fail(f"the log holds nothing at or before that time: {shown} cannot be restored")
    except OSError as exc:
        fail(f"cannot read the tree as of that time: {exc.strerror or exc}")
    entries: list[dict[str, object]] = found["entries"]
    return entries


def _write_atomically(target: Path, data: bytes, mode: int) -> None:
    tmp = target.parent / f".{target.name}.restore-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _symlink_atomically(target: Path, link: str) -> None:
    tmp = target.parent / f".{target.name}.restore-{os.getpid()}"
    try:
        os.symlink(link, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Tally:
    def __init__(self) -> None:
        self.counts = {"created": 0, "rewritten": 0, "unchanged": 0}
        self.problems: list[str] = []


def _restore_entry(e: dict[str, object], src: Path, dest: Path, tally: _Tally) -> bool:
    """Bring one entry of the past tree back at ``dest``; False: its subtree is skipped."""
    kind, mode = e["type"], int(str(e["mode"]), 8)
    now = os.lstat(dest) if os.path.lexists(dest) else None
    if kind == "dir":
        if now is None:
            dest.mkdir(mode=mode)
            os.chmod(dest, mode)  # mkdir's mode is masked by the umask
            tally.counts["created"] += 1
        elif not stat.S_ISDIR(now.st_mode):
            tally.problems.append(f"{dest} was a directory then and is not one now: left alone")
            return False
        elif stat.S_IMODE(now.st_mode) != mode:
            os.chmod(dest, mode)
            tally.counts["rewritten"] += 1
        else:
            tally.counts["unchanged"] += 1
        return True
    if now is not None and stat.S_ISDIR(now.st_mode):
        tally.problems.append(f"{dest} was a {kind} then and is a directory now: left alone")
        return False
    if kind == "file":
        data = src.read_bytes()
        if len(data) != e["size"]:
            tally.problems.append(f"{src} read {len(data)} of {e['size']} bytes: not restored")
            return False
        if (
            now is not None
            and stat.S_ISREG(now.st_mode)
            and stat.S_IMODE(now.st_mode) == mode
            and now.st_size == len(data)
            and dest.read_bytes() == data
        ):
            tally.counts["unchanged"] += 1
            return True
        _write_atomically(dest, data, mode)
    elif kind == "symlink":
        link = str(e["target"])
        if now is not None and stat.S_ISLNK(now.st_mode) and os.readlink(dest) == link:
            tally.counts["unchanged"] += 1
            return True
        _symlink_atomically(dest, link)
    else:
        tally.problems.append(f"{dest}: a special file ({kind}) is not restored")
        return False
    tally.counts["created" if now is None else "rewritten"] += 1
    return True


def _restore_tree(mnt: Path, rel: Path, target: Path, at: int, shown: Path) -> None:
    entries = _tree_at(mnt, at, shown)
    top = rel.as_posix() if rel.parts else ""
    mine = [
        e for e in entries if not top or e["path"] == top or str(e["path"]).startswith(top + "/")
    ]
    if top and not mine:
        fail(f"{shown} did not exist at that time: nothing to restore")
    if top and mine[0]["type"] != "dir":
        fail(f"{shown} was not a directory at that time: restore it without --recursive", USAGE)
    past = mnt / ".wasmer-dfs" / "history" / f"@{at}"
    tally = _Tally()
    skipped: list[str] = []
    target.parent.mkdir(parents=True, exist_ok=True)
    if not top:  # the whole tree: the root has no entry of its own
        target.mkdir(exist_ok=True)
    for e in mine:
        path = str(e["path"])
        if any(path.startswith(s + "/") for s in skipped):
            continue
        sub = path[len(top) :].lstrip("/")
        dest = target / sub if sub else target
        try:
            if not _restore_entry(e, past / path, dest, tally):
                skipped.append(path)
        except OSError as exc:
            fail(
                f"cannot restore {path} to {dest}: {exc.strerror or exc} (restored so far:"
                f" {_counts(tally)})"
            )
    say(f"restored {shown} as of {iso_ms(at)} to {target}: {_counts(tally)}")
    say("what was created after that time is left as it is (nothing is deleted)")
    for p in tally.problems:
        say(f"not restored: {p}")
    if tally.problems:
        raise typer.Exit(1)


def _counts(t: _Tally) -> str:
    c = t.counts
    return f"{c['created']} created again, {c['rewritten']} rewritten, {c['unchanged']} unchanged"


def restore(path: Path, as_of: str, to: Path | None, recursive: bool) -> None:
    at = as_of_ms(as_of)
    mnt, rel = _mount_of(path, root=recursive)
    target = Path(os.path.abspath(to if to is not None else path))
    if to is not None:
        tmnt, _ = _mount_of(target)
        if tmnt != mnt:
            fail(f"--to {to} is not in the same mount as {path}", USAGE)
        if target.exists():
            fail(f"--to {to} exists already: name a new path", USAGE)
    if recursive:
        _restore_tree(mnt, rel, target, at, path)
        return
    if (mnt / ".wasmer-dfs" / "history" / f"@{at}" / rel).is_dir():
        fail(f"{path} was a directory at that time: restore it with --recursive", USAGE)
    _restore_file(mnt, rel, target, at, path)
