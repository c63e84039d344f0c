"""Consistency check of a mounted file system's materialised state (the tests run it after
every test, as S3QL does; ``wasmer-dfs verify`` builds on it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from application.filesystem import FileSystemService
from domain.fs.model import ROOT_INO, TYPE_DENTRY, TYPE_INODE, TYPE_PAGE, FsError, pages_for_size


def fsck(fs: FileSystemService) -> list[str]:
    """Every inconsistency found, as human sentences (empty when all is well)."""
    problems: list[str] = []
    view = fs.view
    objects = fs.session.index.objects
    root = view.inodes.get(ROOT_INO)
    if root is None or not root.is_dir:
        problems.append("the root directory is missing or not a directory")
    links: Counter[int] = Counter()
    dir_links: Counter[int] = Counter()
    for key, (parent, name, ino) in view.dentries.items():
        pdata = view.inodes.get(parent)
        if pdata is None or not pdata.is_dir:
            problems.append(f"dentry {name!r} lies in {parent}, which is not a directory")
        if ino not in view.inodes:
            problems.append(f"dentry {name!r} names inode {ino}, which does not exist")
        entry = view.lookup(parent, name)
        if entry is None or entry.dentry != key:
            problems.append(f"dentry {name!r} of {parent} is not reachable by lookup")
        info = objects.get(key)
        if info is None or info.type_name != TYPE_DENTRY:
            problems.append(f"dentry {name!r} has no dentry object in the chain")
        links[ino] += 1
        if ino in view.inodes and view.inodes[ino].is_dir:
            dir_links[ino] += 1
    for ino, data in view.inodes.items():
        info = objects.get(ino)
        if info is None or info.type_name != TYPE_INODE:
            problems.append(f"inode {ino} has no inode object in the chain")
        if ino != ROOT_INO and links[ino] != view.links.get(ino, 0):
            problems.append(f"inode {ino}: {links[ino]} dentries but a link count of "
                            f"{view.links.get(ino, 0)}")  # fmt: skip
        if ino != ROOT_INO and links[ino] == 0 and not fs.is_open(ino):
            problems.append(f"inode {ino} is named by no directory and not open (orphan)")
        if data.is_dir and ino != ROOT_INO and dir_links[ino] != 1:
            problems.append(f"directory {ino} has {dir_links[ino]} names (must have one)")
        if data.is_dir:
            subdirs = (
                sum(1 for e in view.dirs.get(ino, {}).values() if view.inodes[e.inode].is_dir)
                if all(e.inode in view.inodes for e in view.dirs.get(ino, {}).values())
                else -1
            )
            if subdirs != view.subdirs.get(ino, 0):
                problems.append(f"directory {ino} counts {view.subdirs.get(ino, 0)} "
                                f"sub-directories but has {subdirs}")  # fmt: skip
    for ino, pages in view.pages.items():
        owner = view.inodes.get(ino)
        if owner is None or not owner.is_reg:
            problems.append(f"pages belong to {ino}, which is not a regular file")
            continue
        limit = pages_for_size(fs.inode(ino).size, fs.page_size)
        for idx in pages:
            if idx >= limit:
                problems.append(f"inode {ino} keeps page {idx} beyond its size")
    n_pages = sum(1 for o in objects.values() if o.type_name == TYPE_PAGE)
    if n_pages != sum(len(p) for p in view.pages.values()):
        problems.append("the chain's page objects and the file pages disagree")
    return problems


@dataclass(frozen=True, slots=True)
class VerifyReport:
    transactions: int
    objects: int
    inodes: int
    pages: int
    log_bytes: int
    torn_bytes: int
    attested: bool
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    fs: FileSystemService,
    transactions: int,
    progress: Callable[[str, int, int], None] | None = None,
    refused: Sequence[str] = (),
) -> VerifyReport:
    """Check a replayed chain end to end: every record's checksum and every seal and signature
    were checked by the replay; here every page is read back (hash and authentication tag) and
    the materialised tree is checked for consistency. ``refused``: what this replica refused
    from its chain server (docs/adr/0016), each a problem."""
    problems = list(fsck(fs))
    problems += [f"this replica refused what its chain server served: {r}" for r in refused]
    pages = 0
    total = sum(len(t) for t in fs.view.pages.values())
    for ino, table in list(fs.view.pages.items()):
        for idx in sorted(table):
            if progress is not None and not pages & 255:
                progress("pages", pages, total)
            pages += 1
            try:
                fs.read_page(ino, idx)
            except FsError as exc:
                problems.append(f"inode {ino} page {idx}: {exc}")
    session = fs.session
    return VerifyReport(
        transactions=transactions,
        objects=len(session.index.objects),
        inodes=len(fs.view.inodes),
        pages=pages,
        log_bytes=session.log.size(),
        torn_bytes=session.log.open_report.cut_bytes,
        attested=not session.unattested,
        problems=tuple(problems),
    )
