"""Serialisation formats of metadata and data, selectable like the original's.

The manual names three formats. In this implementation:

* ``bincode`` - Rust's positional binary encoding has no Python twin; it maps to MessagePack with
  every struct written as a positional array (``[tag, field1, field2, ...]``): the most compact.
* ``mpack`` - MessagePack with field names (self-describing).
* ``json`` - JSON with field names, bytes as base64.

The structs are declared ``array_like`` so the default format is msgspec's C encoder with no
Python work; the named formats convert on the way in and out. Every format decodes to the same
typed structs, and a log may mix formats: each record names its own. Decoding goes through plain
builtins so that upcasters can rewrite old versions first.
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


@functools.lru_cache(maxsize=256)
def _type_info(tp: Any) -> msgspec.inspect.Type:
    return msgspec.inspect.type_info(tp)


def _named(obj: Any) -> Any:
    """A positional (array-like) struct as a dict with field names, recursively."""
    if isinstance(obj, msgspec.Struct):
        cfg = obj.__struct_config__
        out: dict[str, Any] = {}
        if cfg.tag is not None and cfg.tag_field is not None:
            out[cfg.tag_field] = cfg.tag
        for f in obj.__struct_fields__:
            out[f] = _named(getattr(obj, f))
        return out
    if isinstance(obj, list | tuple):
        return [_named(x) for x in obj]
    return obj


def _positional(raw: Any, tp: Any) -> Any:
    """Builtins with field names (mpack, json) -> the positional builtins of array-like structs."""
    return _walk(raw, _type_info(tp))


def _walk(raw: Any, info: msgspec.inspect.Type) -> Any:
    mi = msgspec.inspect
    if isinstance(info, mi.StructType):
        if not isinstance(raw, dict):
            raise msgspec.ValidationError(f"expected an object, got {type(raw).__name__}")
        out: list[Any] = []
        if info.tag is not None:
            out.append(raw.get(info.tag_field or "type", info.tag))
        for field in info.fields:
            if field.name in raw:
                out.append(_walk(raw[field.name], field.type))
            elif field.required:
                raise msgspec.ValidationError(f"missing field {field.name!r}")
            else:
                out.append(
                    field.default
                    if field.default is not msgspec.NODEFAULT
                    else field.default_factory()
                )
        return out
    if isinstance(info, mi.UnionType):
        structs = [t for t in info.types if isinstance(t, mi.StructType)]
        if structs and isinstance(raw, dict):
            tag = raw.get(structs[0].tag_field or "type")
            for st in structs:
                if st.tag == tag:
                    return _walk(raw, st)
            raise msgspec.ValidationError(f"unknown tag {tag!r}")
        return raw
    if isinstance(info, mi.ListType | mi.VarTupleType) and isinstance(raw, list):
        return [_walk(x, info.item_type) for x in raw]
    return raw


def encode(obj: Any, fmt: Format) -> bytes:
    """Encode an array-like struct: positionally (bincode) or with field names."""
    if fmt is Format.BINCODE:
        return _mpack_encoder.encode(obj)
    if fmt is Format.MPACK:
        return _mpack_encoder.encode(_named(obj))
    if fmt is Format.JSON:
        return _json_encoder.encode(_named(obj))
    raise ValueError(f"unknown format {fmt!r}")


def decode_raw(data: bytes, fmt: Format) -> Any:
    """Decode to plain builtins (for upcasters); raises ``msgspec.DecodeError`` on garbage."""
    if fmt is Format.JSON:
        return msgspec.json.decode(data)
    if fmt in (Format.BINCODE, Format.MPACK):
        return msgspec.msgpack.decode(data)
    raise msgspec.DecodeError(f"unknown format byte {int(fmt)}")


def convert(raw: Any, tp: type[T], fmt: Format) -> T:
    if fmt is not Format.BINCODE:
        raw = _positional(raw, tp)
    return msgspec.convert(raw, tp, strict=fmt is not Format.JSON)


def decode(
    data: bytes, tp: type[T], fmt: Format, upcast: Callable[[Any, Format], Any] | None = None
) -> T:
    raw = decode_raw(data, fmt)
    if upcast is not None:
        raw = upcast(raw, fmt)
    return convert(raw, tp, fmt)
