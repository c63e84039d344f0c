"""Structured payloads of the file system's events (inodes, dentries, xattrs): one format byte,
then the encoding in that format, so every payload describes itself (docs/adr/0005, 0014).
Split out of application/filesystem.py (issue 13); re-exported there."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from application.session import ChainIntegrityError
from domain.formats import Format, decode, encode

_T = TypeVar("_T")


def encode_struct(obj: object, fmt: Format) -> bytes:
    """A structured payload: one format byte, then the encoding (self-describing)."""
    return bytes((int(fmt),)) + encode(obj, fmt)


def decode_struct(payload: bytes, tp: type[_T]) -> _T:
    """The ``tp`` a payload of ``encode_struct`` holds; ``ChainIntegrityError`` when it does not
    decode (empty, unknown format byte, or not a ``tp``)."""
    if not payload:
        raise ChainIntegrityError("empty structured payload")
    try:
        return decode(payload[1:], tp, Format(payload[0]))
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChainIntegrityError(f"undecodable {tp.__name__}: {exc}") from None
