"""Saving and taking over the state of a view indexer (the file tree's ``FsIndexer``).

A view indexer holds its ``view`` (a dataclass of dictionaries), a ``session`` to read through,
and plain attributes (``confs``). Two things need that state as a whole:

* compaction rebuilds the view from the new log beside the live one, then the live indexer
  *adopts* it in place (the file-system service holds a reference to the view object, so its
  fields are replaced, not the object);
* checkpoints save it (``export``) and load it (``load``) with msgspec, typed by the view's
  field annotations, so a field added to the view is saved without a change here - as long as
  its type is concrete. A field typed ``Any`` (other than the page locators, whose shape the
  indexer fixes) or an attribute this module does not know makes ``export`` return None: no
  checkpoint, never a wrong one.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, get_type_hints

import msgspec

from application.ports import DataRef
from domain.events import Confidentiality

#: the shape of each value of ``FsView.pages`` as the indexer stores it: (data ref, meta hash)
PAGE_LOCATOR = tuple[DataRef, bytes]
#: plain attributes of an indexer and their types (besides ``view`` and ``session``)
KNOWN_ATTRIBUTES: dict[str, Any] = {"confs": dict[int, Confidentiality]}
STATE_VERSION = 1


@contextmanager
def no_gc() -> Iterator[None]:
    """Building millions of small, long-lived objects at once (a replay, a checkpoint's
    state): the cyclic collector would walk them again and again while they are built (it
    more than triples the time), and they hold no cycles. (A long-running mount then freezes
    them out of the collector's generations: see the mount command.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _mentions_any(tp: Any) -> bool:
    if tp is Any:
        return True
    return any(_mentions_any(a) for a in getattr(tp, "__args__", ()) or ())


_TYPES: dict[object, dict[str, Any] | None] = {}


def _view_types(view_type: type) -> dict[str, Any] | None:
    """Decoding type of each field of the view, or None when one cannot be typed."""
    if view_type not in _TYPES:
        _TYPES[view_type] = _field_types(view_type)
    return _TYPES[view_type]


def _field_types(view_type: type) -> dict[str, Any] | None:
    hints = get_type_hints(view_type)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(view_type):
        tp = hints[f.name]
        if f.name == "pages" and tp == dict[int, dict[int, Any]]:
            tp = dict[int, dict[int, PAGE_LOCATOR]]
        elif _mentions_any(tp):
            return None
        out[f.name] = tp
    return out


def adopt(mine: Any, theirs: Any) -> None:
    """``mine`` takes ``theirs``'s state: the view's fields in place, other attributes as they
    are; the session stays."""
    if type(mine) is not type(theirs):
        raise TypeError(f"cannot adopt the state of a {type(theirs).__name__}")
    for name, value in vars(theirs).items():
        if name == "session":
            continue
        if name == "view":
            for f in dataclasses.fields(value):
                setattr(mine.view, f.name, getattr(value, f.name))
        else:
            setattr(mine, name, value)


def export(indexer: Any) -> bytes | None:
    view = indexer.view
    types = _view_types(type(view))
    attrs = {k: v for k, v in vars(indexer).items() if k not in ("view", "session")}
    if types is None or any(k not in KNOWN_ATTRIBUTES for k in attrs):
        return None
    fields = {name: getattr(view, name) for name in types}
    return msgspec.msgpack.encode({"version": STATE_VERSION, "view": fields, "attrs": attrs})


def load(indexer: Any, blob: bytes | memoryview) -> None:
    """Load ``export``'s bytes into an empty indexer; ValueError when they do not fit."""
    view = indexer.view
    types = _view_types(type(view))
    if types is None:
        raise ValueError("this view cannot be loaded from a checkpoint")
    try:
        with no_gc():
            outer = msgspec.msgpack.decode(blob, type=dict[str, int | dict[str, msgspec.Raw]])
            if outer.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {outer.get('version')!r}")
            fields, attrs = outer.get("view"), outer.get("attrs")
            if not isinstance(fields, dict) or not isinstance(attrs, dict):
                raise ValueError("malformed state")
            if set(fields) != set(types) or not set(attrs) <= set(KNOWN_ATTRIBUTES):
                raise ValueError("the view's fields changed since the checkpoint was written")
            decoded = {n: msgspec.msgpack.decode(fields[n], type=tp) for n, tp in types.items()}
            extra = {
                n: msgspec.msgpack.decode(raw, type=KNOWN_ATTRIBUTES[n]) for n, raw in attrs.items()
            }
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"undecodable state: {exc}") from None
    for name, value in decoded.items():
        setattr(view, name, value)
    for name, value in extra.items():
        setattr(indexer, name, value)
