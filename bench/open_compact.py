"""Open time and memory with many files (with and without a checkpoint), and compaction speed.

    .venv/bin/python -m bench.open_compact                    # 100 000 files, 256 MiB log
    .venv/bin/python -m bench.open_compact --files 20000 --compact-mib 64 --json out.json

1. Builds a chain of ``--files`` small files (100 bytes, 1 000 per directory) through the
   file-system service directly on the file log (no kernel: fast), and closes it (which saves
   a checkpoint).
2. Opens it ``--repeat`` times in a fresh process each, with the checkpoint and without it
   (full replay), and reports the median open time and the process's peak RSS (VmHWM).
3. Compacts that chain (metadata-heavy: events per second, and the pause on the event loop
   when it runs in the background), then a chain of ``--compact-mib`` MiB in which every file
   was written 4 times (data-heavy: MB/s of old log read, MB/s of new log written).

Everything happens under a temporary directory in ``--workdir`` (removed unless ``--keep``).
The passcode's Argon2id uses the default cost, as a real mount does: it is part of the open.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine_dict, read_status_kib

MiB = 1 << 20
PASSCODE = b"bench passcode"


def _peak_rss_kib() -> int:
    return read_status_kib(os.getpid(), "VmHWM") or 0


def _service(logdir: Path) -> Any:
    from entrypoints.bootstrap import build_mount_service

    return build_mount_service(logdir)


def _request(**kw: Any) -> Any:
    from application.mount import MountRequest
    from application.session import Formats

    return MountRequest("local", PASSCODE, Formats(), os.getuid(), os.getgid(), **kw)


def build_files(logdir: Path, files: int) -> dict[str, float]:
    """A chain of ``files`` files of 100 bytes, 1 000 per directory."""
    svc = _service(logdir)
    t0 = time.perf_counter()
    m = svc.open(_request())
    fs = m.fs
    d = 1
    payload = b"x" * 100
    for i in range(files):
        if i % 1000 == 0:
            d = fs.mkdir(1, b"d%04d" % (i // 1000), 0o755, 0, 0).ino
        fh, _ = fs.create(d, b"f%06d" % i, 0o644, 0, 0)
        fs.write(fh, 0, payload)
        fs.release(fh)
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    m.close()  # flush, attest, checkpoint
    closed = time.perf_counter() - t1
    return {
        "build_s": built,
        "close_with_checkpoint_s": closed,
        "log_bytes": (logdir / "local.log").stat().st_size,
        "checkpoint_bytes": (logdir / "local.ckpt").stat().st_size,
    }


def measure_open(logdir: Path, checkpoint: bool) -> dict[str, Any]:
    """Run in a fresh process: open once, report time and peak memory, exit without closing
    (so that nothing is written)."""
    svc = _service(logdir)
    _request()
    baseline = _peak_rss_kib()  # the interpreter and every module loaded
    t0 = time.perf_counter()
    m = svc.open(_request(use_checkpoint=checkpoint))
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_rss_kib": _peak_rss_kib(),
        "rss_before_open_kib": baseline,
        "from_checkpoint": m.from_checkpoint,
        "transactions": m.transactions,
        "objects": len(m.session.index.objects),
    }


def _open_in_subprocess(logdir: Path, checkpoint: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.open_compact", "--measure-open", str(logdir)]
        + ([] if checkpoint else ["--no-checkpoint"]),
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def compact_files_chain(logdir: Path) -> dict[str, float]:
    """Compaction of the many-files chain, timed by phase (finish = the pause on the loop)."""
    svc = _service(logdir)
    m = svc.open(_request(use_checkpoint=True))
    c = m.compactor
    assert c is not None
    before = m.session.log.size()
    t0 = time.perf_counter()
    job = c.begin()
    job.build()
    job.catch_up()
    t1 = time.perf_counter()
    r = c.finish(job, save_checkpoint=False)  # as in the background: the loop encodes the
    blob = c.encode_checkpoint()  # checkpoint, a worker thread writes it
    t2 = time.perf_counter()
    assert blob is not None
    c.write_checkpoint(blob)
    m.close()
    return {
        "log_before_bytes": before,
        "log_after_bytes": r.after,
        "events": r.events,
        "kept": r.kept,
        "build_s": t1 - t0,
        "finish_on_loop_s": t2 - t1,
        "events_per_s": r.events / (t2 - t0),
        "log_mb_per_s": before / 1e6 / (t2 - t0),
    }


def compact_data_chain(logdir: Path, mib: int) -> dict[str, float]:
    """A chain of ``mib`` MiB of log in which every file was written 4 times, compacted."""
    svc = _service(logdir)
    m = svc.open(_request())
    fs = m.fs
    block = os.urandom(MiB)
    files = max(1, mib // 4 // 4)  # 4 MiB files, each written 4 times
    for rnd in range(4):
        for i in range(files):
            ino = (
                fs.lookup(1, b"f%d" % i).ino
                if rnd
                else fs.create(1, b"f%d" % i, 0o644, 0, 0)[1].ino
            )
            fh = fs.open(ino)
            for k in range(4):
                fs.write(fh, k * MiB, block[rnd:] + block[:rnd])
            fs.release(fh)
    fs.sync_all()
    c = m.compactor
    assert c is not None
    before = m.session.log.size()
    t0 = time.perf_counter()
    r = c.compact()
    seconds = time.perf_counter() - t0
    m.close()
    return {
        "log_before_bytes": before,
        "log_after_bytes": r.after,
        "seconds": seconds,
        "read_mb_per_s": before / 1e6 / seconds,
        "written_mb_per_s": r.after / 1e6 / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.open_compact", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--compact-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--measure-open", help=argparse.SUPPRESS)
    ap.add_argument("--no-checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure_open:
        print(json.dumps(measure_open(Path(args.measure_open), not args.no_checkpoint)))
        return 0

    work = Path(tempfile.mkdtemp(prefix="open-compact-", dir=args.workdir))
    results: dict[str, Any] = {
        "machine": machine_dict(),
        "config": {k: v for k, v in vars(args).items() if not k.startswith("measure")},
    }
    try:
        files_dir = work / "files"
        print(f"building a chain of {args.files} files ...", file=sys.stderr)
        results["build"] = b = build_files(files_dir, args.files)
        print(
            f"built in {b['build_s']:.1f} s: log {b['log_bytes'] / MiB:.1f} MiB, checkpoint"
            f" {b['checkpoint_bytes'] / MiB:.1f} MiB"
            f" (saved at close, {b['close_with_checkpoint_s']:.2f} s)"
        )
        for checkpoint in (True, False):
            runs = [_open_in_subprocess(files_dir, checkpoint) for _ in range(args.repeat)]
            assert all(r["from_checkpoint"] is checkpoint for r in runs)
            secs = statistics.median(r["seconds"] for r in runs)
            rss = statistics.median(r["peak_rss_kib"] for r in runs)
            base = statistics.median(r["rss_before_open_kib"] for r in runs)
            key = "open_with_checkpoint" if checkpoint else "open_full_replay"
            results[key] = {"median_s": secs, "peak_rss_kib": rss, "runs": runs}
            print(
                f"open {'with checkpoint' if checkpoint else 'full replay    '}: {secs:.2f} s"
                f" (median of {args.repeat}), peak RSS {rss / 1024:.0f} MiB"
                f" ({base / 1024:.0f} MiB before the open), {runs[0]['objects']} objects"
            )
        results["compact_files"] = cf = compact_files_chain(files_dir)
        print(
            f"compaction of the {args.files}-file chain: {cf['events']} events in"
            f" {cf['build_s'] + cf['finish_on_loop_s']:.2f} s ({cf['events_per_s']:.0f} events/s,"
            f" {cf['log_mb_per_s']:.1f} MB/s of log),"
            f" switch on the loop {cf['finish_on_loop_s']:.2f} s"
        )
        shutil.rmtree(files_dir, ignore_errors=True)
        results["compact_data"] = cd = compact_data_chain(work / "data", args.compact_mib)
        print(
            f"compaction of a {cd['log_before_bytes'] / MiB:.0f} MiB log (every file written 4"
            f" times) to {cd['log_after_bytes'] / MiB:.0f} MiB: {cd['seconds']:.2f} s,"
            f" {cd['read_mb_per_s']:.0f} MB/s read, {cd['written_mb_per_s']:.0f} MB/s written"
        )
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
