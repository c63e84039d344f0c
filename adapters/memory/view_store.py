"""The in-memory twin of the ``ViewStore`` port (application/ports/views.py): records by key in
a dict, for tests of views that store data (the real one keeps them in the chain:
application/views/store.py). Contract: tests/contract/test_view_store_contract.py."""

from __future__ import annotations

import errno

from application.ports.views import ViewPath, ViewStore, check_key
from domain.fs.model import FsError


class MemoryViewStore(ViewStore):
    def __init__(self) -> None:
        self.records: dict[ViewPath, bytes] = {}

    def _groups(self, key: ViewPath) -> bool:
        n = len(key)
        return any(len(k) > n and k[:n] == key for k in self.records)

    def get(self, key: ViewPath) -> bytes | None:
        check_key(key)
        return self.records.get(key)

    def put(self, key: ViewPath, data: bytes) -> None:
        check_key(key)
        if self._groups(key):
            raise FsError(errno.EISDIR, f"{'/'.join(key)} groups records")
        if any(key[:i] in self.records for i in range(1, len(key))):
            raise FsError(errno.ENOTDIR, f"{'/'.join(key)}: a record is in the way")
        self.records[key] = bytes(data)

    def delete(self, key: ViewPath) -> bool:
        check_key(key)
        return self.records.pop(key, None) is not None

    def names(self, prefix: ViewPath = ()) -> list[str]:
        if prefix:
            check_key(prefix)
        n = len(prefix)
        return sorted({k[n] for k in self.records if len(k) > n and k[:n] == prefix})
