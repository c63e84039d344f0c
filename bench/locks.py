"""Lock benchmark: lock round trips through the chain server on loopback (docs/adr/0010).

    .venv/bin/python -m bench.locks              # 2000 rounds each
    .venv/bin/python -m bench.locks --quick      # 200 rounds each
    .venv/bin/python -m bench.locks --json bench/results/locks.json

The server runs in its own process (the same ``ChainServer`` + ``WsChainServer`` as
`wasmer-dfs serve`, grace period 0); the clients run here. Figures (p50 / p95 / p99 in ms):

* **uncontended, protocol**: one client, ``Lock`` -> ``LockResult`` (granted), then ``Unlock``
  (not answered); the acquire round trip;
* **uncontended, mount stack**: ``LockService.setlk`` over ``WsLockCoordinator`` (what a FUSE
  handler awaits, minus the kernel): acquire, and release (which does not wait for the server);
* **contended hand-off**: two clients take turns on one exclusive lock; the holder releases while
  the other waits (``wait=True``): time from sending ``Unlock`` to the waiter's grant;
* **contended, N clients**: ``--clients`` mount stacks loop acquire(wait) -> release on one
  exclusive lock; per-acquire latency and total grants per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.ws_client import ChainClient
from adapters.ws_locks import WsLockCoordinator
from application.locks import LockService
from application.session import HEADER_VERSION, ChainHeader
from bench.common import free_port, machine_dict, terminate
from domain.locks import EOF, Kind
from domain.wire import Lock, LockStatus, Unlock

INO = 0x1234_5678_9ABC_DEF2


def header() -> bytes:
    return ChainHeader(
        version=HEADER_VERSION,
        chain_id=os.urandom(16),
        name="bench",
        created_ms=int(time.time() * 1000),
        encrypted=False,
        kdf=None,
        key_check=b"",
        root_key_hash=None,
        page_size=32768,
    ).encode()


# --- the server process ---------------------------------------------------------------------------
def serve(port: int, data_dir: str) -> None:
    """Run the chain server until SIGTERM (this module run with ``--serve``)."""
    import signal

    from application.chain_server import ServerConfig
    from application.lock_server import LockConfig
    from entrypoints.bootstrap import build_server

    async def main() -> None:
        config = ServerConfig(locks=LockConfig(lease=10.0, grace=0.0))
        server = build_server(Path(data_dir), config, "127.0.0.1", port)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await server.close()

    asyncio.run(main())


@contextlib.contextmanager
def server_process(data_dir: str) -> Any:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.locks", "--serve", str(port), data_dir],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"the server did not start: {line!r}")
        yield f"ws://127.0.0.1:{port}/db/bench", proc.pid
    finally:
        terminate(proc, timeout=15)


# --- figures --------------------------------------------------------------------------------------
def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"n": len(ms), "p50": q[49], "p95": q[94], "p99": q[98], "mean": statistics.fmean(ms)}


async def uncontended_protocol(url: str, hdr: bytes, rounds: int) -> dict[str, float]:
    client = await ChainClient.connect(url, header=hdr, client_id=os.urandom(16))
    try:
        times = []
        for i in range(rounds + 50):
            t0 = time.perf_counter()
            answer = await (await client.lock_call(Lock(i, INO, 1, 2, 0, 100)))
            t1 = time.perf_counter()
            assert answer.status is LockStatus.GRANTED
            await client.lock_send(Unlock(INO, 1, 0, 100))
            if i >= 50:  # warm-up
                times.append(t1 - t0)
        return summary(times)
    finally:
        await client.close()


class Stack:
    """A mount's lock stack without the kernel."""

    def __init__(self, url: str, hdr: bytes) -> None:
        self.coord = WsLockCoordinator(url, header=hdr)
        self.svc = LockService(self.coord, lambda fh: INO)

    async def __aenter__(self) -> Stack:
        self.coord.start()
        if not await self.coord.wait_online(20):
            raise SystemExit(f"cannot reach the server: {self.coord.last_error}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.svc.close()


async def uncontended_stack(url: str, hdr: bytes, rounds: int) -> dict[str, Any]:
    async with Stack(url, hdr) as m:
        acq, rel = [], []
        for i in range(rounds + 50):
            t0 = time.perf_counter()
            await m.svc.setlk(1, 1, Kind.WRITE, 0, 100, wait=False)
            t1 = time.perf_counter()
            await m.svc.setlk(1, 1, Kind.UNLOCK, 0, 100, wait=False)
            t2 = time.perf_counter()
            if i >= 50:
                acq.append(t1 - t0)
                rel.append(t2 - t1)
        return {"acquire": summary(acq), "release": summary(rel)}


async def handoff(url: str, hdr: bytes, rounds: int) -> dict[str, float]:
    a = await ChainClient.connect(url, header=hdr, client_id=os.urandom(16))
    b = await ChainClient.connect(url, header=hdr, client_id=os.urandom(16))
    try:
        assert (await (await a.lock_call(Lock(0, INO, 1, 2)))).status is LockStatus.GRANTED
        holder, waiter = a, b
        times = []
        for i in range(1, rounds + 51):
            fut = await waiter.lock_call(Lock(i, INO, 1, 2, wait=True))
            await asyncio.sleep(0)  # let the request leave first
            await asyncio.sleep(0.0005)
            t0 = time.perf_counter()
            await holder.lock_send(Unlock(INO, 1))
            answer = await fut
            t1 = time.perf_counter()
            assert answer.status is LockStatus.GRANTED
            if i > 50:
                times.append(t1 - t0)
            holder, waiter = waiter, holder
        await holder.lock_send(Unlock(INO, 1))
        await asyncio.sleep(0.05)
        return summary(times)
    finally:
        await a.close()
        await b.close()


async def contended(url: str, hdr: bytes, clients: int, rounds: int) -> dict[str, Any]:
    stacks = [Stack(url, hdr) for _ in range(clients)]
    async with contextlib.AsyncExitStack() as es:
        for s in stacks:
            await es.enter_async_context(s)
        times: list[float] = []
        per_client = max(1, rounds // clients)

        async def worker(m: Stack) -> None:
            for _ in range(per_client):
                t0 = time.perf_counter()
                await m.svc.setlk(1, 1, Kind.WRITE, 0, EOF, wait=True)
                times.append(time.perf_counter() - t0)
                await m.svc.setlk(1, 1, Kind.UNLOCK, 0, EOF, wait=False)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(m) for m in stacks))
        elapsed = time.perf_counter() - t0
        return {"acquire": summary(times), "grants_per_s": len(times) / elapsed}


def row(name: str, s: dict[str, float]) -> str:
    return f"{name:<44} {s['p50']:8.3f} {s['p95']:8.3f} {s['p99']:8.3f}   n={s['n']}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    hdr = header()
    with tempfile.TemporaryDirectory(prefix="lockbench-") as tmp, server_process(tmp) as (url, _):
        out: dict[str, Any] = {"machine": machine_dict(), "rounds": args.rounds}
        out["uncontended_protocol"] = await uncontended_protocol(url, hdr, args.rounds)
        out["uncontended_stack"] = await uncontended_stack(url, hdr, args.rounds)
        out["handoff"] = await handoff(url, hdr, args.rounds)
        out["contended"] = await contended(url, hdr, args.clients, args.rounds)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="200 rounds")
    p.add_argument("--json", type=Path)
    p.add_argument("--serve", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return 0
    if args.quick:
        args.rounds = 200
    res = asyncio.run(run(args))
    print(f"{'lock round trips, loopback (ms)':<44} {'p50':>8} {'p95':>8} {'p99':>8}")
    print(row("uncontended acquire (protocol)", res["uncontended_protocol"]))
    print(row("uncontended acquire (mount stack)", res["uncontended_stack"]["acquire"]))
    print(row("uncontended release (mount stack)", res["uncontended_stack"]["release"]))
    print(row("contended hand-off (unlock -> waiter granted)", res["handoff"]))
    c = res["contended"]
    print(row(f"contended acquire, {args.clients} clients (mount stack)", c["acquire"]))
    print(f"{'contended grants per second':<44} {c['grants_per_s']:8.0f}")
    m = res["machine"]
    print(f"machine: nproc={m['nproc']} kernel={m['kernel']} python={m['python']} {m['date']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
