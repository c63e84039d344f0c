"""The replica's record of what it refused from its chain server (docs/adr/0016): an append-only
file of JSON lines beside the log (``<chain>.refused``), one line per refusal, made durable
before the service goes on; ``wasmer-dfs verify`` reports every line."""

from __future__ import annotations

import json
import os
import pathlib
import time

from application.ports import RefusalRecord


class FileRefusalRecord(RefusalRecord):
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def record(self, reason: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = json.dumps({"at": stamp, "reason": reason}, ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out: list[str] = []
        for raw in text.splitlines():
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                out.append(f"{entry['at']}: {entry['reason']}")
            except (ValueError, KeyError, TypeError):
                out.append(raw)  # a damaged line is still reported as it stands
        return out
