"""Benchmark figures of two trees side by side, the runs interleaved (before, after, before, ...).

    .venv/bin/python -m bench.compare 7e05a2a^ HEAD --json bench/results/house-before-after.json
    .venv/bin/python -m bench.compare 7e05a2a^ HEAD --parts fsbench --rounds 5
    .venv/bin/python -m bench.compare /var/tmp/wt-before /var/tmp/wt-after   # existing trees

BEFORE and AFTER are each a directory holding a checkout (used as it is) or a commit of this
repository (checked out into a temporary detached ``git worktree``, removed at the end). Each
side's own benchmark modules and code run: ``python -m bench.X`` with this interpreter (the
project's virtualenv, which has the patched pyfuse3), the tree as working directory and first on
``PYTHONPATH``; the mounts' ``wasmer-dfs`` is the console script beside this interpreter, which
then imports that tree's code. Before any run, each side checks where ``application``,
``entrypoints.cli`` and ``bench`` are imported from (as the console script would) and refuses to
go on if it is not that tree; the JSON keeps the paths.

Every part runs ``--rounds`` times per side, the sides taking turns, so that a slow minute of a
shared machine falls on both alike. With ``--order abba`` (the default) the side that goes first
alternates from round to round (before, after; after, before; before, after ...), so that load
that grows or shrinks during the run does not favour the side that always goes first; ``--order
abab`` keeps before first in every round. Besides each part's own figures, the CPU time of each
run (user + system of the benchmark and every process it started and waited for: mounts, servers,
workers) is a figure of its own, less sensitive to other work on the machine than wall times. The
report has, per figure, the median over the rounds of each side, the ratio after/before of the
medians, which direction is better, the paired ratios of each round, and a verdict: "better" or
"worse" when the medians differ by more than ``--noise`` (10 %), else "same". The load average at
each run's start and end is kept, to see whether other work shared the CPUs.

Parts: ``fsbench`` (target wasmer-dfs, ``--repeat 1`` per run at full size unless
``--fsbench-args`` says otherwise), ``replication`` (``--quick``), ``open_compact`` (``--files
20000 --compact-mib 64``). Only options both trees' tools accept should be passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine_dict, on_sigterm, terminate

REPO = Path(__file__).resolve().parent.parent
PARTS = ("fsbench", "replication", "open_compact")
DEFAULT_ARGS = {
    "fsbench": "--targets wasmer-dfs --repeat 1",
    "replication": "--quick",
    "open_compact": "--files 20000 --compact-mib 64",
}
SIDES = ("before", "after")


class CompareError(Exception):
    """A side that cannot be measured (bad ref, code imported from elsewhere, a failed run)."""


@dataclass(frozen=True)
class Figure:
    """One number a part reports: where it is in the part's JSON and which way is better."""

    part: str
    key: str
    label: str
    unit: str
    higher_is_better: bool
    get: Callable[[dict[str, Any]], float | None]


def _path(*keys: str) -> Callable[[dict[str, Any]], float | None]:
    def get(d: dict[str, Any]) -> float | None:
        cur: Any = d
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return float(cur) if isinstance(cur, (int, float)) and not isinstance(cur, bool) else None

    return get


def fsbench_figures(report: dict[str, Any]) -> list[Figure]:
    """The wasmer-dfs figures of an fsbench JSON report, in its order, and its overall peak RSS."""
    target = report.get("targets", {}).get("wasmer-dfs", {})
    figs = target.get("figures", {})
    out = [
        Figure(
            "fsbench",
            key,
            figs[key]["label"],
            figs[key]["unit"],
            bool(figs[key]["higher_is_better"]),
            _path("targets", "wasmer-dfs", "figures", key, "median"),
        )
        for key in report.get("figure_order", [])
        if key in figs
    ]

    def peak_mib(d: dict[str, Any]) -> float | None:
        kib = _path("targets", "wasmer-dfs", "rss_kib", "peak")(d)
        return None if kib is None else kib / 1024

    out.append(Figure("fsbench", "peak_rss", "peak RSS (all workloads)", "MiB", False, peak_mib))
    return out


def replication_figures(report: dict[str, Any]) -> list[Figure]:
    """Propagation p50/p95 per recovery mode and operation, the upload and the initial sync."""
    out: list[Figure] = []
    for mode in report.get("propagation", {}):
        for op, what in (("create", "new file"), ("append", "append, B cached")):
            for q in ("p50", "p95"):
                out.append(
                    Figure(
                        "replication",
                        f"{mode}.{op}.{q}",
                        f"{what}, {mode}: A write -> B sees, {q}",
                        "ms",
                        False,
                        _path("propagation", mode, op, "total_ms", q),
                    )
                )
    for key, label in (
        ("a_write_until_confirmed_s", "A writes the sync chain, until the server confirmed"),
        ("c_mounted_s", "initial sync: new replica C mounted"),
        ("c_read_one_file_s", "initial sync: C mounted and one file read back"),
    ):
        out.append(
            Figure("replication", key, label, "s", False, _path("initial_sync", key))
        )  # fmt: skip
    return out


def open_compact_figures(report: dict[str, Any]) -> list[Figure]:
    """Build, open (checkpoint / full replay, time and peak RSS) and compaction speeds."""
    del report  # the figures are fixed

    def mib(*keys: str) -> Callable[[dict[str, Any]], float | None]:
        def get(d: dict[str, Any]) -> float | None:
            kib = _path(*keys)(d)
            return None if kib is None else kib / 1024

        return get

    p = "open_compact"
    return [
        Figure(p, "build_s", "build the many-files chain (service, no kernel)", "s", False,
               _path("build", "build_s")),
        Figure(p, "open_checkpoint_s", "open with checkpoint", "s", False,
               _path("open_with_checkpoint", "median_s")),
        Figure(p, "open_checkpoint_rss", "open with checkpoint, peak RSS", "MiB", False,
               mib("open_with_checkpoint", "peak_rss_kib")),
        Figure(p, "open_replay_s", "open by full replay", "s", False,
               _path("open_full_replay", "median_s")),
        Figure(p, "open_replay_rss", "open by full replay, peak RSS", "MiB", False,
               mib("open_full_replay", "peak_rss_kib")),
        Figure(p, "compact_files_events_s", "compaction of the many-files chain", "events/s",
               True, _path("compact_files", "events_per_s")),
        Figure(p, "compact_data_read_mb_s", "compaction of the data chain, log read", "MB/s",
               True, _path("compact_data", "read_mb_per_s")),
    ]  # fmt: skip


FIGURES: dict[str, Callable[[dict[str, Any]], list[Figure]]] = {
    "fsbench": fsbench_figures,
    "replication": replication_figures,
    "open_compact": open_compact_figures,
}


def cpu_figure(part: str) -> Figure:
    """The CPU time of a whole run, which ``run_part`` adds to the part's report."""
    return Figure(
        part, "cpu_s", "CPU time of the run (user+sys, all its processes)", "s", False,
        _path("bench_compare", "cpu_s"),
    )  # fmt: skip


def round_order(rnd: int, order: str) -> tuple[str, ...]:
    """Which side goes first in round ``rnd`` (0-based): always before ("abab"), or alternating."""
    if order == "abba" and rnd % 2 == 1:
        return tuple(reversed(SIDES))
    return SIDES


def verdict(before: float, after: float, higher_is_better: bool, noise: float) -> str:
    """'better', 'worse' or 'same' (the medians within ``noise``, a fraction, of each other)."""
    if before == 0:
        return "same" if after == 0 else ("better" if (after > 0) == higher_is_better else "worse")
    ratio = after / before
    if abs(ratio - 1) <= noise:
        return "same"
    return "better" if (ratio > 1) == higher_is_better else "worse"


def compare_part(
    part: str, runs: dict[str, list[dict[str, Any] | None]], noise: float
) -> list[dict[str, Any]]:
    """Per figure of ``part``: both sides' medians over the rounds, ratio, paired ratios, verdict.

    ``runs`` maps "before"/"after" to the part's JSON reports, one per round (None for a
    round that failed). The figures are those of the first report that has them.
    """
    reports = [r for side in SIDES for r in runs.get(side, []) if r]
    if not reports:
        return []
    rows: list[dict[str, Any]] = []
    for fig in [*FIGURES[part](reports[0]), cpu_figure(part)]:
        values = {side: [fig.get(r) if r else None for r in runs.get(side, [])] for side in SIDES}
        row: dict[str, Any] = {
            "part": part,
            "key": fig.key,
            "label": fig.label,
            "unit": fig.unit,
            "higher_is_better": fig.higher_is_better,
            "better_ratio": "> 1" if fig.higher_is_better else "< 1",
        }
        medians: dict[str, float | None] = {}
        for side in SIDES:
            got = [v for v in values[side] if v is not None]
            medians[side] = statistics.median(got) if got else None
            row[side] = {"median": medians[side], "rounds": values[side]}
        b, a = medians["before"], medians["after"]
        row["ratio"] = a / b if a is not None and b else None
        row["paired_ratios"] = [
            (y / x if x and y is not None else None)
            for x, y in zip(values["before"], values["after"], strict=False)
        ]
        row["verdict"] = (
            verdict(b, a, fig.higher_is_better, noise) if a is not None and b is not None else "n/a"
        )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the trees


def _git(*args: str, cwd: Path = REPO) -> str:
    out = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if out.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {out.stderr.strip() or out.returncode}")
    return out.stdout.strip()


@contextlib.contextmanager
def checked_out(spec: str, scratch: Path, name: str) -> Iterator[dict[str, Any]]:
    """A tree for ``spec``: an existing directory as it is, or a commit in a temporary worktree."""
    if Path(spec).is_dir():
        tree = Path(spec).resolve()
        info = {"spec": spec, "tree": str(tree), "worktree_made": False}
        with contextlib.suppress(CompareError):
            info["commit"] = _git("rev-parse", "HEAD", cwd=tree)
            info["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=tree))
        yield info
        return
    commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
    tree = scratch / name
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        yield {"spec": spec, "tree": str(tree), "commit": commit, "worktree_made": True}
    finally:
        with contextlib.suppress(CompareError):
            _git("worktree", "remove", "--force", str(tree))


def side_env(tree: Path) -> dict[str, str]:
    """This environment with ``tree`` first on PYTHONPATH (before the editable install's finder)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tree), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    env.pop("PYTHONSAFEPATH", None)
    return env


CHECK = """
import json, sys
sys.path[0] = {bindir!r}  # as the wasmer-dfs console script starts
import application, entrypoints.cli, bench
print(json.dumps({{m.__name__: m.__file__ for m in (application, entrypoints.cli, bench)}}))
"""


def code_check(tree: Path) -> dict[str, str]:
    """Where this tree's side imports the project from, as the mounts' console script would."""
    bindir = str(Path(sys.executable).parent)
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(bindir=bindir)],
        cwd=tree, env=side_env(tree), capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        raise CompareError(f"{tree}: importing the project failed: {last}")
    files: dict[str, str] = json.loads(out.stdout)
    for mod, path in files.items():
        if not Path(path).resolve().is_relative_to(tree):
            raise CompareError(f"{tree}: {mod} is imported from {path}, not from this tree")
    return files


# --------------------------------------------------------------------------- the runs


def run_part(
    part: str, tree: Path, extra: Sequence[str], out_json: Path, log: Path, timeout: float
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """One run of ``python -m bench.PART`` in ``tree``; its JSON report and a record of the run."""
    cmd = [sys.executable, "-m", f"bench.{part}", *extra, "--json", str(out_json)]
    if part == "fsbench" and not any(a.startswith("--wasmer-dfs-cmd") for a in extra):
        cmd += ["--wasmer-dfs-cmd", str(Path(sys.executable).parent / "wasmer-dfs")]
    rec: dict[str, Any] = {"cmd": cmd, "cwd": str(tree), "load_start": os.getloadavg()}
    t0 = time.time()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, cwd=tree, env=side_env(tree), stdin=subprocess.DEVNULL, stdout=f, stderr=f
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            terminate(proc, 120)  # SIGTERM: the benchmark tears its mounts down
            code = -1
        except BaseException:
            terminate(proc, 120)
            raise
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    rec.update(
        exit=code, seconds=round(time.time() - t0, 1), cpu_s=round(cpu, 2),
        load_end=os.getloadavg(),
    )  # fmt: skip
    rec["log"] = str(log)
    if code != 0 or not out_json.exists():
        rec["error"] = f"exit {code}; see {log}"
        return None, rec
    report: dict[str, Any] = json.loads(out_json.read_text())
    report["bench_compare"] = {"cpu_s": cpu, "wall_s": time.time() - t0}
    return report, rec


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    a = abs(v)
    return (
        f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
    )


def render(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    head = ("figure", "unit", "before", "after", "after/before", "better if", "verdict")
    lines = []
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            (f"{r['part']}: {r['label']}", r["unit"], fmt(r["before"]["median"]),
             fmt(r["after"]["median"]), ratio, r["better_ratio"], r["verdict"])
        )  # fmt: skip
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def note(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.compare", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("before", help="a commit of this repository or a directory with a checkout")
    ap.add_argument("after", help="the same, for the side compared with BEFORE")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each part per side (3)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list among {','.join(PARTS)}")
    for part in PARTS:
        ap.add_argument(
            f"--{part.replace('_', '-')}-args",
            dest=f"{part}_args",
            default=DEFAULT_ARGS[part],
            help=f"options for bench.{part} (default: {DEFAULT_ARGS[part]!r})",
        )
    ap.add_argument(
        "--order", choices=("abba", "abab"), default="abba",
        help="abba: the side that goes first alternates by round (default); abab: before first",
    )  # fmt: skip
    ap.add_argument("--noise", type=float, default=0.10, help="'same' within this fraction (0.10)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run (1800)")
    ap.add_argument("--json", type=Path, help="write both sides, ratios and raw reports here")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="parent of the run dir")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the logs of every run")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        ap.error(f"--parts: unknown {','.join(bad) or '(empty)'}; choose among {','.join(PARTS)}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not 0 <= args.noise < 1:
        ap.error("--noise must be a fraction in [0, 1)")
    try:
        extras = {p: shlex.split(getattr(args, f"{p}_args")) for p in parts}
    except ValueError as exc:
        ap.error(f"bad options string: {exc}")
    for p, extra in extras.items():
        if "--json" in extra:
            ap.error(f"--{p.replace('_', '-')}-args: --json is set by bench.compare")

    args.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="benchcompare-", dir=args.workdir)).resolve()
    previous: Any = None
    with contextlib.suppress(ValueError):
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    result: dict[str, Any] = {
        "schema": "wasmer-dfs-benchcompare/1",
        "command": [Path(sys.executable).name, "-m", "bench.compare", *sys.argv[1:]]
        if argv is None
        else ["bench.compare", *argv],
        "machine": machine_dict(),
        "config": {
            "rounds": args.rounds,
            "parts": parts,
            "args": {p: extras[p] for p in parts},
            "noise": args.noise,
            "order": args.order,
            "python": sys.executable,
        },
        "sides": {},
        "runs": [],
        "figures": [],
        "raw": {p: {s: [] for s in SIDES} for p in parts},
    }
    code = 0
    try:
        with contextlib.ExitStack() as stack:
            trees: dict[str, Path] = {}
            for side, spec in zip(SIDES, (args.before, args.after), strict=True):
                info = stack.enter_context(checked_out(spec, run_dir, f"tree-{side}"))
                trees[side] = Path(info["tree"])
                info["imports"] = code_check(trees[side])
                result["sides"][side] = info
                note(f"{side}: {info.get('commit', '?')[:12]} in {info['tree']}")
            for rnd in range(args.rounds):
                for part in parts:
                    for side in round_order(rnd, args.order):
                        tag = f"{part}-{side}-{rnd + 1}"
                        note(f"round {rnd + 1}/{args.rounds}: {part}, {side} ...")
                        report, rec = run_part(
                            part, trees[side], extras[part], run_dir / f"{tag}.json",
                            run_dir / f"{tag}.log", args.timeout,
                        )  # fmt: skip
                        rec.update(part=part, side=side, round=rnd + 1)
                        result["runs"].append(rec)
                        result["raw"][part][side].append(report)
                        note(
                            f"  {rec['seconds']} s ({rec['cpu_s']} s CPU), exit {rec['exit']},"
                            " load average"
                            f" {rec['load_start'][0]:.2f} -> {rec['load_end'][0]:.2f}"
                        )
                        if report is None:
                            code = 1
                            note(f"  failed: {rec['error']}")
    except KeyboardInterrupt:  # also SIGTERM (bench.common.Terminated)
        note("interrupted")
        code = 130
    except (CompareError, OSError, json.JSONDecodeError) as exc:
        note(f"failed: {exc}")
        code = 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if args.keep_workdir or code != 0:
            note(f"run logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    for part in parts:
        result["figures"] += compare_part(part, result["raw"][part], args.noise)
    if result["figures"]:
        print(render(result["figures"], markdown=args.markdown))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        note(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
