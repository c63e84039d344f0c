"""Conflict copies (replication repair, docs/adr/0009): when two replicas changed a regular file
apart, the version the server orders first is kept beside the other as ``NAME.conflict-TAG``.
Built only from the service's public operations (create, open, write, setattr, release), so a
copy is written exactly as a user's copy would be. Split out of application/filesystem.py
(issue 13); ``FileSystemService.conflict_copy`` delegates here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from application.fs.values import SetAttr
from domain.fs.model import NAME_MAX, InodeData

if TYPE_CHECKING:
    from application.filesystem import FileSystemService


def conflict_copy(
    fs: FileSystemService,
    ino: int,
    theirs: InodeData | None,
    pages: dict[int, bytes],
    tag: str,
    into: int | None = None,
) -> int | None:
    """Keep another replica's version of regular file ``ino`` beside this replica's, which
    the server orders after it: a new file ``NAME.conflict-TAG`` (or the earlier copy
    ``into``) with their attributes and pages (``pages``), the rest of its contents as this
    replica has them. Returns the copy's inode (None when ``ino`` is no longer a named
    regular file)."""
    data = fs.view.inodes.get(ino)
    names = fs.names_of(ino)
    if data is None or not data.is_reg or not names:
        return None
    base = theirs if theirs is not None and theirs.is_reg else data
    if into is not None and into in fs.view.inodes:
        fh = fs.open(into)
        attr = fs.getattr(into)
        if theirs is None:
            base = msgspec.structs.replace(base, size=attr.size)
    else:
        directory, name = names[0]
        suffix = f".conflict-{tag}".encode()
        copy_name = name[: NAME_MAX - len(suffix)] + suffix
        n = 1
        while fs.view.lookup(directory, copy_name) is not None:
            n += 1
            copy_name = name[: NAME_MAX - len(suffix) - 4] + suffix + f"-{n}".encode()
        fh, attr = fs.create(directory, copy_name, base.mode, base.uid, base.gid)
    try:
        ps = fs.page_size
        for idx in range((base.size + ps - 1) // ps):
            page = pages.get(idx)
            if page is None and idx * ps < data.size:
                page = fs.read_page(ino, idx)
            if page:
                fs.write(fh, idx * ps, page[: max(0, min(ps, base.size - idx * ps))])
        fs.setattr(attr.ino, SetAttr(size=base.size))
    finally:
        fs.release(fh)
    return attr.ino
