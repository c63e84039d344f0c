"""Chain server benchmark: `wasmer-dfs serve` in its own process on loopback, clients here.

    .venv/bin/python -m bench.server            # 100 subscribers, 300 commits, 256 MiB sync
    .venv/bin/python -m bench.server --quick    # 20 subscribers, 50 commits, 32 MiB sync

Figures:

* server RSS (VmRSS of the server process): idle, with the chain open, with ``--clients``
  subscribers connected and caught up, and after live fan-out to all of them;
* commit round trip (send ``Commit`` -> ``Confirmed``, which follows the server's fsync) of a
  small signed transaction (1 event of 4 KiB), p50/p95, alone and with the subscribers; and the
  fan-out time (send -> the last subscriber got the events);
* initial sync: a new client subscribes from 0 and receives a chain of ``--sync-mib`` MiB in
  history batches; MB/s (10^6 bytes) of record bytes (meta + data), and the server's peak RSS.
  If the 256 MiB sync projects to under 2 minutes at 1 GiB, the chain is grown to 1 GiB and
  synced again.

Transactions are real: signed with ML-DSA-65 by the chain's root key and validated by the server
(signatures are made before the timed phases). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapters.ws_client import ChainClient
from application.ports import Crypto
from application.session import HEADER_VERSION, ChainHeader
from bench.common import free_port, machine_dict, read_status_kib, terminate
from domain.events import DataKey, Meta, PublicKey, Signature, Timestamp, Type, make_header
from domain.formats import Format
from domain.hashing import key_hash
from domain.trust import signed_digest
from domain.wire import CommitRecord, EndOfHistory, Events
from entrypoints.bootstrap import build_crypto

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]


# --- a chain built from scratch (what a client sends) --------------------------------------------
class BenchChain:
    """A chain with its own root key: header, genesis, and signed transactions of blobs."""

    def __init__(self, crypto: Crypto) -> None:
        self.crypto = crypto
        self.public, self.secret = crypto.sign_keypair()
        self.root = key_hash(self.public)
        self.chain_id = os.urandom(16)
        self.header = ChainHeader(
            version=HEADER_VERSION,
            chain_id=self.chain_id,
            name="bench",
            created_ms=now_ms(),
            encrypted=False,
            kdf=None,
            key_check=b"",
            root_key_hash=self.root,
            page_size=32768,
        ).encode()
        self._key = 1000

    def _tx(self, events: list[tuple[list[Meta], bytes | None]]) -> list[CommitRecord]:
        records: list[CommitRecord] = []
        hashes: list[bytes] = []
        for meta, data in events:
            hdr = make_header(meta, Format.BINCODE, data)
            records.append(CommitRecord(hdr.meta_bytes, int(Format.BINCODE), data))
            hashes.append(hdr.hash)
        ts = Timestamp(now_ms())
        digest = signed_digest(self.chain_id, hashes, [ts])
        seal = make_header(
            [Signature(self.root, digest, self.crypto.sign(self.secret, digest)), ts],
            Format.BINCODE, None,
        )  # fmt: skip
        records.append(CommitRecord(seal.meta_bytes, int(Format.BINCODE), None))
        return records

    def genesis(self) -> list[CommitRecord]:
        return self._tx([([DataKey(2), Type("chain-key"), PublicKey(self.public)], None)])

    def blobs(self, payloads: list[bytes]) -> list[CommitRecord]:
        events: list[tuple[list[Meta], bytes | None]] = []
        for payload in payloads:
            self._key += 1
            events.append(([DataKey(self._key), Type("blob"), Timestamp(now_ms())], payload))
        return self._tx(events)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the server process --------------------------------------------------------------------------
@contextlib.contextmanager
def server_process(data_dir: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "entrypoints.serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(data_dir), "--max-lag", str(1 << 30)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            for _ in range(400):  # up to 20 s
                if b"serving chains at" in log.read_bytes() or proc.poll() is not None:
                    break
                time.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            yield proc
        finally:
            terminate(proc, timeout=30)


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    rss, hwm = read_status_kib(pid, "VmRSS"), read_status_kib(pid, "VmHWM")
    if rss is None or hwm is None:
        raise RuntimeError(f"no VmRSS/VmHWM in /proc/{pid}/status (has the server exited?)")
    return rss / 1024, hwm / 1024


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- phases --------------------------------------------------------------------------------------
async def round_trips(client: ChainClient, txs: list[list[CommitRecord]]) -> list[float]:
    out: list[float] = []
    for tx in txs:
        t0 = time.perf_counter()
        await client.commit(tx, timeout=60)
        out.append((time.perf_counter() - t0) * 1000)
    return out


class Subscriber:
    """A subscribed client that drains its stream and notes when each position arrived."""

    def __init__(self, client: ChainClient) -> None:
        self.client = client
        self.arrived: dict[int, float] = {}
        self.caught_up = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                msg = await self.client.next()
                if isinstance(msg, EndOfHistory):
                    self.caught_up.set()
                elif isinstance(msg, Events):
                    self.arrived[msg.end] = time.perf_counter()


async def upload(client: ChainClient, chain: BenchChain, mib: int, per_tx: int = 64) -> float:
    """Grow the chain by ``mib`` MiB of 32 KiB blobs (``per_tx`` per transaction), pipelined;
    seconds taken (signing included)."""
    block = os.urandom(32 * 1024)
    count = mib * MIB // len(block)
    t0 = time.perf_counter()
    inflight: list[asyncio.Future[Any]] = []
    for start in range(0, count, per_tx):
        tx = chain.blobs([block] * min(per_tx, count - start))
        inflight.append(await client.send_commit(tx))
        if len(inflight) >= 16:
            await asyncio.wait_for(inflight.pop(0), 120)
    for fut in inflight:
        await asyncio.wait_for(fut, 120)
    return time.perf_counter() - t0


async def sync(url: str, pid: int) -> dict[str, float]:
    """A fresh client pulls the whole chain; MB/s of record bytes."""
    client = await ChainClient.connect(url)
    try:
        t0 = time.perf_counter()
        await client.subscribe(0)
        nbytes = records = batches = 0
        peak = 0.0
        for _ in range(10_000_000):
            msg = await client.next(timeout=120)
            if isinstance(msg, EndOfHistory):
                break
            assert isinstance(msg, Events)
            batches += 1
            records += len(msg.records)
            nbytes += sum(len(r.meta) + len(r.data or b"") for r in msg.records)
            if batches % 64 == 0:
                peak = max(peak, rss_mib(pid)[0])
        seconds = time.perf_counter() - t0
    finally:
        await client.close()
    return {
        "bytes": nbytes,
        "records": records,
        "batches": batches,
        "seconds": round(seconds, 3),
        "MB_per_s": round(nbytes / seconds / 1e6, 1),
        "server_rss_peak_during_sync_mib": round(max(peak, rss_mib(pid)[0]), 1),
    }


async def run(args: argparse.Namespace, proc: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    pid = proc.pid
    chain = BenchChain(build_crypto())
    url = f"ws://127.0.0.1:{port}/db/bench"
    res: dict[str, Any] = {"rss_mib": {}}
    res["rss_mib"]["idle"] = round(rss_mib(pid)[0], 1)

    writer = await ChainClient.connect(url, header=chain.header)
    await writer.commit(chain.genesis(), timeout=30)
    res["rss_mib"]["chain_open"] = round(rss_mib(pid)[0], 1)

    payload = os.urandom(4096)
    print(f"signing {2 * args.commits} transactions ...", file=sys.stderr)
    alone_txs = [chain.blobs([payload]) for _ in range(args.commits)]
    fan_txs = [chain.blobs([payload]) for _ in range(args.commits)]

    print(f"commit round trips ({args.commits}) without subscribers ...", file=sys.stderr)
    alone = await round_trips(writer, alone_txs)

    print(f"connecting {args.clients} subscribers ...", file=sys.stderr)
    subs: list[Subscriber] = []
    for _ in range(args.clients):
        c = await ChainClient.connect(url)
        await c.subscribe(0)
        subs.append(Subscriber(c))
    await asyncio.wait_for(asyncio.gather(*(s.caught_up.wait() for s in subs)), 120)
    await asyncio.sleep(0.5)
    res["rss_mib"][f"{args.clients}_subscribers"] = round(rss_mib(pid)[0], 1)

    print(
        f"commit round trips ({args.commits}) with {args.clients} subscribers ...", file=sys.stderr
    )
    rtt: list[float] = []
    fanout: list[float] = []
    for tx in fan_txs:
        t0 = time.perf_counter()
        confirmed = await writer.commit(tx, timeout=60)
        rtt.append((time.perf_counter() - t0) * 1000)
        for _ in range(60_000):  # up to 60 s
            if all(confirmed.end in s.arrived for s in subs):
                break
            await asyncio.sleep(0.001)
        fanout.append((max(s.arrived.get(confirmed.end, t0) for s in subs) - t0) * 1000)
    res["rss_mib"][f"{args.clients}_subscribers_after_fanout"] = round(rss_mib(pid)[0], 1)
    for s in subs:
        s.task.cancel()
        await s.client.close()

    def summary(xs: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(xs), 2),
            "p95_ms": round(pct(xs, 95), 2),
            "max_ms": round(max(xs), 2),
            "n": len(xs),
        }

    res["commit_rtt_alone"] = summary(alone)
    res[f"commit_rtt_with_{args.clients}_subscribers"] = summary(rtt)
    res[f"fanout_to_{args.clients}_subscribers"] = summary(fanout)

    print(f"uploading a {args.sync_mib} MiB chain ...", file=sys.stderr)
    up = await upload(writer, chain, args.sync_mib)
    res["upload"] = {"mib": args.sync_mib, "seconds": round(up, 2)}
    print(f"initial sync of {args.sync_mib} MiB ...", file=sys.stderr)
    res[f"sync_{args.sync_mib}_mib"] = first = await sync(url, pid)
    if args.big_sync_mib > args.sync_mib:
        projected = first["seconds"] * args.big_sync_mib / args.sync_mib
        if projected < 120:
            grow = args.big_sync_mib - args.sync_mib
            print(f"growing the chain to {args.big_sync_mib} MiB ...", file=sys.stderr)
            up = await upload(writer, chain, grow)
            res["upload_more"] = {"mib": grow, "seconds": round(up, 2)}
            print(f"initial sync of {args.big_sync_mib} MiB ...", file=sys.stderr)
            res[f"sync_{args.big_sync_mib}_mib"] = await sync(url, pid)
        else:
            res[f"sync_{args.big_sync_mib}_mib"] = f"skipped: projected {projected:.0f} s"
    await writer.close()
    res["rss_mib"]["end"], res["rss_mib"]["peak"] = (round(x, 1) for x in rss_mib(pid))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=None, help="subscribers (default 100)")
    p.add_argument("--commits", type=int, default=None, help="commits per latency phase (300)")
    p.add_argument("--sync-mib", type=int, default=None, help="chain size to sync (256)")
    p.add_argument("--big-sync-mib", type=int, default=None, help="the larger sync (1024)")
    p.add_argument("--quick", action="store_true", help="20 clients, 50 commits, 32 MiB")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args(argv)
    quick = args.quick
    args.clients = args.clients or (20 if quick else 100)
    args.commits = args.commits or (50 if quick else 300)
    args.sync_mib = args.sync_mib or (32 if quick else 256)
    args.big_sync_mib = args.big_sync_mib or (0 if quick else 1024)

    work = Path(tempfile.mkdtemp(prefix="serverbench-", dir=args.workdir))
    port = free_port()
    try:
        with server_process(work / "data", port, work / "server.log") as proc:
            res = asyncio.run(run(args, proc, port))
            proc.send_signal(signal.SIGTERM)
            res["shutdown_exit_code"] = proc.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"] = machine_dict()
    res["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
