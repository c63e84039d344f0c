"""bench/compare.py: figures of two trees side by side (issue 13), without running a benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import compare


def fsbench_report(seq_mbs: float, tar_s: float, peak_kib: int) -> dict[str, Any]:
    def fig(label: str, unit: str, hib: bool, median: float) -> dict[str, Any]:
        return {"label": label, "unit": unit, "higher_is_better": hib, "median": median}

    return {
        "figure_order": ["seq_write", "untar", "not_run"],
        "targets": {
            "wasmer-dfs": {
                "figures": {
                    "seq_write": fig("seq write", "MB/s", True, seq_mbs),
                    "untar": fig("tar xf", "s", False, tar_s),
                },
                "rss_kib": {"peak": peak_kib},
            }
        },
    }


def test_cpu_time_of_the_runs_is_a_figure_and_the_first_side_alternates() -> None:
    def rep(cpu: float) -> dict[str, Any]:
        return {"propagation": {}, "bench_compare": {"cpu_s": cpu}}

    rows = compare.compare_part(
        "replication", {"before": [rep(10), rep(12)], "after": [rep(13), rep(15)]}, noise=0.1
    )
    (cpu,) = [r for r in rows if r["key"] == "cpu_s"]
    assert (cpu["before"]["median"], cpu["after"]["median"]) == (11, 14)
    assert cpu["verdict"] == "worse" and not cpu["higher_is_better"]
    assert [compare.round_order(r, "abba")[0] for r in range(4)] == [
        "before", "after", "before", "after"
    ]  # fmt: skip
    assert {compare.round_order(r, "abab") for r in range(3)} == {("before", "after")}


def test_verdict_follows_the_direction_and_the_noise_band() -> None:
    assert compare.verdict(100, 120, higher_is_better=True, noise=0.1) == "better"
    assert compare.verdict(100, 120, higher_is_better=False, noise=0.1) == "worse"
    assert compare.verdict(100, 80, higher_is_better=False, noise=0.1) == "better"
    assert compare.verdict(100, 80, higher_is_better=True, noise=0.1) == "worse"
    assert compare.verdict(100, 109, higher_is_better=True, noise=0.1) == "same"
    assert compare.verdict(100, 92, higher_is_better=False, noise=0.1) == "same"


def test_fsbench_figures_medians_ratio_and_paired_ratios() -> None:
    runs: dict[str, list[dict[str, Any] | None]] = {
        "before": [fsbench_report(200, 4.0, 100 * 1024), fsbench_report(100, 2.0, 100 * 1024),
                   fsbench_report(300, 3.0, 100 * 1024)],
        "after": [fsbench_report(150, 3.0, 50 * 1024), None, fsbench_report(150, 3.0, 50 * 1024)],
    }  # fmt: skip
    rows = {r["key"]: r for r in compare.compare_part("fsbench", runs, noise=0.1)}
    # a figure no side has is left out; the run's CPU time is one more
    assert list(rows) == ["seq_write", "untar", "peak_rss", "cpu_s"]
    seq = rows["seq_write"]
    assert seq["before"]["median"] == 200
    assert seq["after"] == {"median": 150, "rounds": [150, None, 150]}
    assert seq["ratio"] == pytest.approx(0.75)
    assert seq["paired_ratios"] == [pytest.approx(0.75), None, pytest.approx(0.5)]
    assert (seq["better_ratio"], seq["verdict"]) == ("> 1", "worse")
    tar = rows["untar"]
    assert tar["ratio"] == pytest.approx(1.0) and tar["verdict"] == "same"
    assert tar["better_ratio"] == "< 1"
    rss = rows["peak_rss"]
    assert (rss["unit"], rss["before"]["median"], rss["after"]["median"]) == ("MiB", 100, 50)
    assert rss["verdict"] == "better"


def test_replication_and_open_compact_figures_read_their_reports() -> None:
    prop = {"create": {"total_ms": {"p50": 30.0, "p95": 50.0}},
            "append": {"total_ms": {"p50": 15.0, "p95": 20.0}}}  # fmt: skip
    rep = {
        "propagation": {"async": prop},
        "initial_sync": {"a_write_until_confirmed_s": 4.0, "c_mounted_s": 2.5,
                         "c_read_one_file_s": 2.6},
    }  # fmt: skip
    figs = compare.replication_figures(rep)
    got = {f.key: f.get(rep) for f in figs}
    assert got == {
        "async.create.p50": 30.0, "async.create.p95": 50.0, "async.append.p50": 15.0,
        "async.append.p95": 20.0, "a_write_until_confirmed_s": 4.0, "c_mounted_s": 2.5,
        "c_read_one_file_s": 2.6,
    }  # fmt: skip
    assert not any(f.higher_is_better for f in figs)
    oc = {
        "build": {"build_s": 5.0},
        "open_with_checkpoint": {"median_s": 0.5, "peak_rss_kib": 2048},
        "compact_files": {"events_per_s": 1e4},
    }
    by_key = {f.key: f for f in compare.open_compact_figures(oc)}
    assert by_key["open_checkpoint_rss"].get(oc) == 2.0  # MiB
    assert by_key["compact_files_events_s"].higher_is_better
    assert by_key["open_replay_s"].get(oc) is None  # missing in the report: no figure, no crash


def test_code_check_names_this_tree_and_refuses_one_whose_code_comes_from_elsewhere(
    tmp_path: Path,
) -> None:
    files = compare.code_check(compare.REPO)
    assert set(files) == {"application", "entrypoints.cli", "bench"}
    assert all(Path(p).resolve().is_relative_to(compare.REPO) for p in files.values())
    # an empty directory: the editable install would supply the project, which is not that tree
    with pytest.raises(compare.CompareError, match=r"is imported from .*, not from this tree"):
        compare.code_check(tmp_path)


def test_code_check_reports_a_tree_whose_code_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "application").mkdir()
    (tmp_path / "application" / "__init__.py").write_text("raise ImportError('half a checkout')\n")
    with pytest.raises(
        compare.CompareError, match=r"importing the project failed.*half a checkout"
    ):
        compare.code_check(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parts", "fsbench,nope"], "unknown nope"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--fsbench-args", "--json x"], "--json is set by bench.compare"),
        (["--noise", "1.5"], "--noise must be a fraction"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.compare", "HEAD", "HEAD", *args],
        cwd=compare.REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_an_unknown_commit_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.compare", "no-such-ref-xyz", "HEAD", "--parts", "fsbench",
         "--workdir", str(tmp_path)],
        cwd=compare.REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "failed: git rev-parse" in out.stderr
    assert "Traceback" not in out.stderr
