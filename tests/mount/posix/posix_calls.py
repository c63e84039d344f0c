"""Thin ctypes wrappers for the calls Python's ``os`` module does not offer (or not fully):
renameat2, fallocate, utimensat with UTIME_NOW/UTIME_OMIT, getxattr with a size, raw readdir
with "." and "..", rewinddir, O_TMPFILE."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)

libc.renameat2.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
]  # fmt: skip
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]


class _Dirent(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


libc.opendir.argtypes = [ctypes.c_char_p]
libc.opendir.restype = ctypes.c_void_p
libc.readdir.argtypes = [ctypes.c_void_p]
libc.readdir.restype = ctypes.POINTER(_Dirent)
libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]


def _check(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def _b(path: object) -> bytes:
    return os.fsencode(path)  # type: ignore[arg-type]


def renameat2(old: object, new: object, flags: int) -> None:
    _check(libc.renameat2(AT_FDCWD, _b(old), AT_FDCWD, _b(new), flags))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(libc.fallocate(fd, mode, offset, length))


def utimensat(path: object, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """Times as (seconds, nanoseconds); nanoseconds may be UTIME_NOW or UTIME_OMIT."""
    ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check(libc.utimensat(AT_FDCWD, _b(path), ts, 0))


def getxattr_size(path: object, name: bytes, size: int) -> int:
    """getxattr(2) into a buffer of ``size`` bytes (0: ask for the size); returns the length."""
    buf = ctypes.create_string_buffer(max(size, 1))
    return _check(libc.getxattr(_b(path), name, buf if size else None, size))


def listxattr_size(path: object, size: int) -> int:
    buf = ctypes.create_string_buffer(max(size, 1))
    return _check(libc.listxattr(_b(path), buf if size else None, size))


class RawDir:
    """opendir(3)/readdir(3)/rewinddir(3): every entry, "." and ".." included."""

    def __init__(self, path: object) -> None:
        ctypes.set_errno(0)
        self._d = libc.opendir(_b(path))
        if not self._d:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def read(self, n: int | None = None) -> list[tuple[bytes, int, int]]:
        """Up to ``n`` entries (all when None) as (name, d_ino, d_type)."""
        out: list[tuple[bytes, int, int]] = []
        while n is None or len(out) < n:
            ctypes.set_errno(0)
            ent = libc.readdir(self._d)
            if not ent:
                if ctypes.get_errno():
                    raise OSError(ctypes.get_errno(), "readdir")
                break
            out.append((ent.contents.d_name, ent.contents.d_ino, ent.contents.d_type))
        return out

    def rewind(self) -> None:
        libc.rewinddir(self._d)

    def close(self) -> None:
        if self._d:
            libc.closedir(self._d)
            self._d = None

    def __enter__(self) -> RawDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def err(fn, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """0 if the call succeeds, else its errno."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno or -1
    return 0
