"""Where the bytes per object go (issue 17): opens a chain with its checkpoint and prints, as
JSON, the deep size of each structure of its state (the chain index's tables, every field of
the file view, the indexer's confidentialities; an object reached twice is counted once, in the
first table that reaches it), sys.getsizeof of the per-object records, VmHWM/VmRSS right after
the open and, with ``trace``, tracemalloc's top allocation sites of the open.

    .venv/bin/python -m bench.memory_breakdown LOG_DIR [trace]

LOG_DIR is a chain as bench.open_compact builds it (``--keep``: the ``files`` directory).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec

from bench.open_compact import _request, _service


def deep_size(obj: object, seen: set[int]) -> int:
    """sys.getsizeof of ``obj`` and of everything it reaches not in ``seen`` (which grows)."""
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        elif isinstance(o, msgspec.Struct):
            stack.extend(getattr(o, f) for f in o.__struct_fields__)
        elif not isinstance(o, int | bytes | str | float) and hasattr(o, "__slots__"):
            stack.extend(getattr(o, s) for s in type(o).__slots__ if hasattr(o, s))
    return total


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])


def main(argv: list[str]) -> int:
    logdir, trace = Path(argv[0]), len(argv) > 1 and argv[1] == "trace"
    svc = _service(logdir)
    _request()
    if trace:
        tracemalloc.start(1)
    m = svc.open(_request(use_checkpoint=True))
    snap = tracemalloc.take_snapshot() if trace else None
    out: dict[str, Any] = {
        "vmhwm_after_open_kib": _status_kib("VmHWM"),
        "vmrss_after_open_kib": _status_kib("VmRSS"),
        "from_checkpoint": m.from_checkpoint,
    }
    index = m.session.index
    fsx = next(ix for ix in m.session.pipeline.indexers if hasattr(ix, "view"))
    seen: set[int] = set()
    rows = {
        "index.objects": deep_size(index.objects, seen),
        "index.children": deep_size(index.children, seen),
        "index.public_keys": deep_size(index.public_keys, seen),
    }
    for f in dataclasses.fields(fsx.view):
        rows["view." + f.name] = deep_size(getattr(fsx.view, f.name), seen)
    rows["indexer.confs"] = deep_size(fsx.confs, seen)
    n = len(index.objects)
    out |= {
        "objects": n,
        "inodes": len(fsx.view.inodes),
        "bytes": rows,
        "total": sum(rows.values()),
        "per_object": sum(rows.values()) / n,
        "per_inode": sum(rows.values()) / len(fsx.view.inodes),
        "sizeof": {
            "ObjectInfo": sys.getsizeof(next(iter(index.objects.values()))),
            "InodeData": sys.getsizeof(next(iter(fsx.view.inodes.values()))),
            "Confidentiality": sys.getsizeof(next(iter(fsx.confs.values()), None)),
        },
    }
    if snap is not None:
        stats = snap.statistics("lineno")
        out["tracemalloc_total"] = sum(s.size for s in stats)
        out["tracemalloc_top"] = [(str(s.traceback[0]), s.size, s.count) for s in stats[:12]]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
