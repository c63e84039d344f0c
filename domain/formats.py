"""Serialisation formats of metadata and data, selectable like the original's.

The manual names three formats. In this implementation:

* ``bincode`` - Rust's positional binary encoding has no Python twin; it maps to MessagePack with
  every struct written as a positional array (``[tag, field1, field2, ...]``): the most compact.
* ``mpack`` - MessagePack with field names (self-describing).
* ``json`` - JSON with field names, bytes as base64.

Every format decodes to the same typed structs, and a log may mix formats: each record names its
own. Decoding goes through plain builtins so that upcasters can rewrite old versions first.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class Format(enum.IntEnum):
    BINCODE = 1
    MPACK = 2
    JSON = 3

    @classmethod
    def parse(cls, name: str) -> Format:
        try:
            return {"bincode": cls.BINCODE, "mpack": cls.MPACK, "json": cls.JSON}[name.lower()]
        except KeyError:
            raise ValueError(f"unknown format {name!r}: expected bincode, json or mpack") from None


_json_encoder = msgspec.json.Encoder()
_mpack_encoder = msgspec.msgpack.Encoder()


def _positional(obj: Any) -> Any:
    if isinstance(obj, msgspec.Struct):
        cfg = obj.__struct_config__
        out: list[Any] = [cfg.tag] if cfg.tag is not None else []
        out.extend(_positional(getattr(obj, f)) for f in obj.__struct_fields__)
        return out
    if isinstance(obj, list | tuple):
        return [_positional(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _positional(v) for k, v in obj.items()}
    return obj


@functools.lru_cache(maxsize=256)
def _type_info(tp: Any) -> msgspec.inspect.Type:
    return msgspec.inspect.type_info(tp)


def _from_positional(raw: Any, tp: Any) -> Any:
    """Turn positional arrays back into the keyword builtins that ``msgspec.convert`` takes."""
    return _walk(raw, _type_info(tp))


def _walk(raw: Any, info: msgspec.inspect.Type) -> Any:
    mi = msgspec.inspect
    if isinstance(info, mi.StructType):
        items = list(raw)
        out: dict[str, Any] = {}
        if info.tag is not None and info.tag_field is not None:
            out[info.tag_field] = items.pop(0)
        for field, value in zip(info.fields, items, strict=False):
            out[field.name] = _walk(value, field.type)
        return out
    if isinstance(info, mi.UnionType):
        structs = [t for t in info.types if isinstance(t, mi.StructType)]
        if structs and isinstance(raw, list) and raw:
            for st in structs:
                if st.tag == raw[0]:
                    return _walk(raw, st)
            raise msgspec.ValidationError(f"unknown tag {raw[0]!r}")
        for t in info.types:
            if isinstance(t, mi.NoneType) and raw is None:
                return None
        for t in info.types:
            if not isinstance(t, mi.NoneType | mi.StructType):
                return _walk(raw, t)
        return raw
    if isinstance(info, mi.ListType | mi.VarTupleType) and isinstance(raw, list):
        return [_walk(x, info.item_type) for x in raw]
    return raw


def encode(obj: Any, fmt: Format) -> bytes:
    if fmt is Format.BINCODE:
        return _mpack_encoder.encode(_positional(obj))
    if fmt is Format.MPACK:
        return _mpack_encoder.encode(obj)
    if fmt is Format.JSON:
        return _json_encoder.encode(obj)
    raise ValueError(f"unknown format {fmt!r}")


def decode_raw(data: bytes, fmt: Format) -> Any:
    """Decode to plain builtins (for upcasters); raises ``msgspec.DecodeError`` on garbage."""
    if fmt is Format.JSON:
        return msgspec.json.decode(data)
    if fmt in (Format.BINCODE, Format.MPACK):
        return msgspec.msgpack.decode(data)
    raise msgspec.DecodeError(f"unknown format byte {int(fmt)}")


def convert(raw: Any, tp: type[T], fmt: Format) -> T:
    if fmt is Format.BINCODE:
        raw = _from_positional(raw, tp)
    return msgspec.convert(raw, tp, strict=fmt is not Format.JSON)


def decode(
    data: bytes, tp: type[T], fmt: Format, upcast: Callable[[Any, Format], Any] | None = None
) -> T:
    raw = decode_raw(data, fmt)
    if upcast is not None:
        raw = upcast(raw, fmt)
    return convert(raw, tp, fmt)
