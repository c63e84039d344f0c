"""`wasmer-dfs status MNT` and `wasmer-dfs stats MNT`: the mount's own state, read from its
emulated files (``MNT/.wasmer-dfs/status`` and ``stats``, application/views/builtin.py), so
they work for any user who may read the mount, with no channel to the mount process."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import typer

from entrypoints.console import USAGE, fail

VIEWS_DIR = ".wasmer-dfs"


def _read(mount_path: Path, name: str) -> dict[str, Any]:
    path = mount_path / VIEWS_DIR / name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        fail(f"{mount_path} is not a wasmer-dfs mount (there is no {VIEWS_DIR}/{name})", USAGE)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    try:
        doc = json.loads(raw)
    except ValueError:
        fail(f"{path} is not JSON: is {mount_path} a wasmer-dfs mount of this version?")
    if not isinstance(doc, dict):
        fail(f"{path} is not a JSON object")
    return doc


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def show_status(mount_path: Path, as_json: bool) -> None:
    doc = _read(mount_path, "status")
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    chain = doc.get("chain") or {}
    log = doc.get("log") or {}
    conn = doc.get("connection")
    sealed = "encrypted" if chain.get("encrypted") else "UNENCRYPTED"
    lines = [
        ("chain", f"{chain.get('name')} ({sealed}, id {chain.get('id')})"),
        ("server", doc.get("server") or "none (a local chain)"),
        ("mode", "read-only" if doc.get("read_only") else "read-write"),
        ("log", f"{_size(log.get('size', 0))}, committed up to {log.get('committed_end')}"),
    ]  # fmt: skip
    if conn is not None:
        state = "connected" if conn.get("connected") else "disconnected"
        if conn.get("connected"):
            state += ", in sync" if conn.get("synced") else ", catching up"
        if conn.get("last_error"):
            state += f" (last error: {conn['last_error']})"
        lines.append(("connection", state))
        lines.append(("recovery mode", str(doc.get("recovery_mode"))))
    positions = doc.get("positions") or {}
    lines.append(("positions", ", ".join(f"{k} {v}" for k, v in positions.items())))
    lines.append(("pending uploads", str(doc.get("pending_uploads", 0))))
    comp = doc.get("compaction")
    if comp is None:
        lines.append(("compaction", "not known to this mount's views"))
    elif comp.get("running"):
        lines.append(("compaction", "running"))
    elif comp.get("last"):
        last = comp["last"]
        lines.append((
            "last compaction",
            f"{_size(last['before'])} -> {_size(last['after'])} in {last['seconds']:.1f} s",
        ))  # fmt: skip
    else:
        lines.append(("last compaction", "none since the mount"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        typer.echo(f"{key.ljust(width)}  {value}")


def _rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    ops: dict[str, dict[str, float]] = {}
    for name, now in (after.get("ops") or {}).items():
        was = (before.get("ops") or {}).get(name, {"calls": 0, "errors": 0, "seconds": 0.0})
        calls = now["calls"] - was["calls"]
        if calls:
            ops[name] = {
                "calls": calls,
                "errors": now["errors"] - was["errors"],
                "avg_ms": (now["seconds"] - was["seconds"]) / calls * 1000,
            }
    return {
        "ops_per_s": (after["operations"] - before["operations"]) / seconds,
        "errors": after["errors"] - before["errors"],
        "read_per_s": (after["bytes_read"] - before["bytes_read"]) / seconds,
        "written_per_s": (after["bytes_written"] - before["bytes_written"]) / seconds,
        "ops": ops,
    }


def show_stats(mount_path: Path, as_json: bool, interval: float, count: int | None) -> None:
    """``--json``: one snapshot, then exit. Otherwise a line per ``interval`` with the rates of
    the last interval (as `juicefs stats` and `vmstat`), until Ctrl-C or ``count`` lines."""
    if interval <= 0:
        fail("--interval must be more than 0 seconds", USAGE)
    before = _read(mount_path, "stats")
    if as_json:
        typer.echo(json.dumps(before, indent=2))
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    header = f"{'ops/s':>9} {'errors':>7} {'read/s':>11} {'written/s':>11}  busiest (calls, avg ms)"
    typer.echo(header)
    shown = 0
    at = time.monotonic()
    try:
        while count is None or shown < count:
            time.sleep(interval)
            after = _read(mount_path, "stats")
            now = time.monotonic()
            r = _rates(before, after, now - at)
            top = sorted(r["ops"].items(), key=lambda kv: -kv[1]["calls"])[:3]
            busiest = "  ".join(f"{k} {int(v['calls'])} {v['avg_ms']:.2f}" for k, v in top)
            typer.echo(
                f"{r['ops_per_s']:>9.1f} {r['errors']:>7} {_size(r['read_per_s']):>11}"
                f" {_size(r['written_per_s']):>11}  {busiest}"
            )
            before, at = after, now
            shown += 1
    except KeyboardInterrupt:
        pass


def show_installed_views() -> None:
    """``wasmer-dfs views``: the installed views (the ``wasmer_dfs.views`` entry points), one a
    line: name, where its factory is, what it shows."""
    from entrypoints import bootstrap

    views = bootstrap.installed_views()
    if not views:
        typer.echo("no views installed (a package adds them to the wasmer_dfs.views entry points)")
        return
    width = max(len(v.name) for v in views)
    mod_width = max(len(v.module) for v in views)
    for v in views:
        typer.echo(f"{v.name:<{width}}  {v.module:<{mod_width}}  {v.description}")
