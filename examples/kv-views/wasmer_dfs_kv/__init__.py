"""A key-value table store shown as files: the worked example of wasmer-dfs views (docs/views.md).

``mount --view kv[=SCHEMA.json]`` puts two views in the mount:

* ``/.kv/TABLE/ID.json`` (``TableView``): one file per record. Writing a file validates it
  against the table's schema; a record that does not fit is refused (the writer's close fails
  with EINVAL, and the mount's log says why); one that fits is stored as a typed record,
  ``{"type": "kv.record", "table": ..., "version": 1, "record": {...}}``, through the view store
  (``ViewContext.store("kv")``): an event of the chain, so every mount of the chain sees it.
* ``/.kv/by-email/EMAIL.json`` (``EmailIndexView``): a materialised index, a second fold of the
  same records (computed from the store when it is read, so it is never out of step).

The schema: ``{"TABLE": {"FIELD": "int" | "str" | "email" | "bool" | "float", ...}, ...}``; every
field is required and no other is allowed; a table's records are named by their ``id`` (an int).
Without a SCHEMA.json: one table, ``users`` with ``id``, ``name`` and ``email``. E-mail
addresses are unique across the store (the index would otherwise be ambiguous).
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from application.ports.views import NodeKind, View, ViewContext, ViewNode, ViewPath, ViewStore
from domain.fs.model import FsError

log = logging.getLogger("wasmer_dfs.views.kv")

#: the store's name in the chain (both views read it)
STORE = "kv"
RECORD_TYPE = "kv.record"
VERSION = 1
DEFAULT_SCHEMA: dict[str, dict[str, str]] = {
    "users": {"id": "int", "name": "str", "email": "email"},
}
TYPES = {"int", "str", "email", "bool", "float"}
INDEX = "by-email"

Schema = dict[str, dict[str, str]]


class SchemaError(ValueError):
    pass


def load_schema(arg: str | None) -> Schema:
    """The schema of ``--view kv=SCHEMA.json`` (the default one without ``=``)."""
    if not arg:
        return DEFAULT_SCHEMA
    try:
        raw = json.loads(Path(arg).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"kv: cannot read the schema {arg}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise SchemaError(f"kv: {arg}: the schema is an object of tables")
    for table, fields in raw.items():
        if table == INDEX or not table or "/" in table or table.startswith("."):
            raise SchemaError(f"kv: {arg}: bad table name {table!r}")
        if not isinstance(fields, dict) or fields.get("id") != "int":
            raise SchemaError(f"kv: {arg}: table {table!r} needs an int field 'id'")
        bad = {f: t for f, t in fields.items() if t not in TYPES}
        if bad:
            raise SchemaError(f"kv: {arg}: table {table!r}: unknown types {bad}")
    return raw


def _fits(value: object, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "email":
        return (
            isinstance(value, str) and value.count("@") == 1 and "/" not in value
            and all(value.split("@")) and len(value) <= 200
        )  # fmt: skip
    return isinstance(value, str)


class Records:
    """The typed records in the view store, as both views read them."""

    def __init__(self, store: ViewStore, schema: Schema) -> None:
        self.store = store
        self.schema = schema

    def ids(self, table: str) -> list[int]:
        return sorted(int(n) for n in self.store.names((table,)) if n.isdigit())

    def get(self, table: str, rid: int) -> dict[str, object] | None:
        raw = self.store.get((table, str(rid)))
        if raw is None:
            return None
        event = json.loads(raw)
        if event.get("type") != RECORD_TYPE or event.get("table") != table:
            raise ValueError(f"{table}/{rid}: not a {RECORD_TYPE} event")
        record: dict[str, object] = event["record"]
        order = self.schema[table]  # the schema's order (stored with sorted keys)
        return {**{f: record[f] for f in order if f in record}, **record}

    def all(self) -> Iterator[tuple[str, int, dict[str, object]]]:
        for table in self.schema:
            for rid in self.ids(table):
                record = self.get(table, rid)
                if record is not None:
                    yield table, rid, record

    def by_email(self) -> dict[str, tuple[str, int, dict[str, object]]]:
        """The index: a second fold of the same records."""
        out: dict[str, tuple[str, int, dict[str, object]]] = {}
        for table, rid, record in self.all():
            for field, kind in self.schema[table].items():
                if kind == "email" and isinstance(record.get(field), str):
                    out[str(record[field])] = (table, rid, record)
        return out

    def validate(self, table: str, name: str, data: bytes) -> tuple[int, dict[str, object]]:
        """The record in ``data`` for file ``name``; ``ValueError`` saying why it does not fit."""
        fields = self.schema[table]
        if not name.endswith(".json") or not name[:-5].isdigit():
            raise ValueError(f"a record's file is named ID.json, not {name!r}")
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise ValueError("a record is a JSON object")
        missing = [f for f in fields if f not in record]
        extra = [f for f in record if f not in fields]
        if missing or extra:
            raise ValueError(f"fields missing: {missing}, not in the schema: {extra}")
        wrong = [f"{f} is not {k}" for f, k in fields.items() if not _fits(record[f], k)]
        if wrong:
            raise ValueError(", ".join(wrong))
        rid = int(name[:-5])
        if record["id"] != rid:
            raise ValueError(f"id {record['id']} in a file named {name}")
        for email, (t, other, _) in self.by_email().items():
            if (t, other) != (table, rid) and email in {
                record[f] for f, k in fields.items() if k == "email"
            }:
                raise ValueError(f"{email} is already {t}/{other}")
        return rid, record

    def put(self, table: str, rid: int, record: dict[str, object]) -> None:
        event = {"type": RECORD_TYPE, "table": table, "version": VERSION, "record": record}
        self.store.put((table, str(rid)), json.dumps(event, sort_keys=True).encode())


def _render(record: dict[str, object]) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


class TableView(View):
    """``/.kv/TABLE/ID.json``: one file per record, written to store one."""

    name = "kv"
    place: ViewPath = (".kv",)

    def __init__(self, records: Records) -> None:
        self.records = records

    def _record(self, path: ViewPath) -> tuple[str, int] | None:
        if len(path) != 2 or path[0] not in self.records.schema:
            return None
        stem, dot, ext = path[1].partition(".")
        if ext != "json" or not dot or not stem.isdigit():
            return None
        return path[0], int(stem)

    def node(self, path: ViewPath) -> ViewNode | None:
        if not path:
            return ViewNode(NodeKind.DIR)
        # writable even on a --read-only mount: the view service answers EROFS there
        if len(path) == 1 and path[0] in self.records.schema:
            return ViewNode(NodeKind.DIR, writable=True)
        found = self._record(path)
        if found is None or self.records.get(*found) is None:
            return None
        return ViewNode(NodeKind.FILE, writable=True)

    def list(self, path: ViewPath) -> list[str]:
        if not path:
            return list(self.records.schema)
        return [f"{rid}.json" for rid in self.records.ids(path[0])]

    def read(self, path: ViewPath) -> bytes:
        found = self._record(path)
        record = None if found is None else self.records.get(*found)
        if record is None:
            raise FsError(errno.ENOENT)
        return _render(record)

    def write(self, path: ViewPath, data: bytes) -> None:
        if len(path) != 2 or path[0] not in self.records.schema:
            raise FsError(errno.EACCES)
        try:
            rid, record = self.records.validate(path[0], path[1], data)
        except ValueError as exc:
            log.warning("kv: refused %s/%s: %s", path[0], path[1], exc)
            raise FsError(errno.EINVAL, str(exc)) from None
        self.records.put(path[0], rid, record)


class EmailIndexView(View):
    """``/.kv/by-email/EMAIL.json``: the record that has that address (read-only)."""

    name = "kv-index"
    place: ViewPath = (".kv", INDEX)

    def __init__(self, records: Records) -> None:
        self.records = records

    def node(self, path: ViewPath) -> ViewNode | None:
        if not path:
            return ViewNode(NodeKind.DIR)
        if len(path) == 1 and path[0].endswith(".json") and path[0][:-5] in self.records.by_email():
            return ViewNode(NodeKind.FILE)
        return None

    def list(self, path: ViewPath) -> list[str]:
        return [f"{email}.json" for email in sorted(self.records.by_email())] if not path else []

    def read(self, path: ViewPath) -> bytes:
        found = self.records.by_email().get(path[0][:-5]) if len(path) == 1 else None
        if found is None:
            raise FsError(errno.ENOENT)
        return _render(found[2])


def kv(arg: str | None, context: ViewContext) -> list[View]:
    """Key-value tables, one JSON file per record in /.kv/TABLE/, indexed in /.kv/by-email/
    (ARG: a schema file)."""
    records = Records(context.store(STORE), load_schema(arg))
    return [TableView(records), EmailIndexView(records)]
