"""Fast tests of the benchmark harness: workloads on a plain directory, table math, JSON."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench import fsbench as fb

TINY = fb.WorkloadConfig(seq_bytes=3 * fb.MIB + 123, files=150, random_bytes=fb.MIB, random_ops=64)


def _counting_cfg(**changes: object) -> tuple[fb.WorkloadConfig, list[int]]:
    drops: list[int] = []
    cfg = replace(TINY, drop_caches=lambda: drops.append(1), **changes)  # type: ignore[arg-type]
    return cfg, drops


# --------------------------------------------------------------------------- workloads


def test_seq_workload_reports_rates_and_cleans_up(tmp_path: Path) -> None:
    cfg, drops = _counting_cfg()
    figures = fb.workload_seq(tmp_path, 0, cfg)
    assert set(figures) == {"seq_write", "seq_read"}
    assert all(v > 0 for v in figures.values())
    assert drops == [1]  # the page cache is dropped before the read
    assert list(tmp_path.iterdir()) == []


def test_small_file_layout_is_dirs_of_100() -> None:
    dirs, paths = fb.small_file_paths(Path("/x"), 5000)
    assert len(dirs) == 50 and len(paths) == 5000
    assert paths[0] == Path("/x/d000/f00000")
    assert paths[99].parent == dirs[0] and paths[100].parent == dirs[1]
    assert len(set(paths)) == 5000
    dirs, paths = fb.small_file_paths(Path("/x"), 1)
    assert len(dirs) == 1 and len(paths) == 1
    dirs, _ = fb.small_file_paths(Path("/x"), 101)
    assert len(dirs) == 2


def test_small_files_workload(tmp_path: Path) -> None:
    cfg, drops = _counting_cfg()
    figures = fb.workload_small(tmp_path, 3, cfg)
    assert set(figures) == {"small_create", "small_stat", "small_read", "small_unlink"}
    assert all(v > 0 for v in figures.values())
    assert drops == [1]
    assert list(tmp_path.iterdir()) == []


def test_random_offsets_are_aligned_reproducible_and_in_range() -> None:
    offsets = fb.random_offsets(fb.MIB, 500, seed=7)
    assert offsets == fb.random_offsets(fb.MIB, 500, seed=7)
    assert offsets != fb.random_offsets(fb.MIB, 500, seed=8)
    assert all(o % fb.IO_SIZE == 0 and 0 <= o <= fb.MIB - fb.IO_SIZE for o in offsets)
    with pytest.raises(fb.BenchError):
        fb.random_offsets(100, 1, seed=1)


def test_random_workload(tmp_path: Path) -> None:
    cfg, drops = _counting_cfg()
    figures = fb.workload_random(tmp_path, 1, cfg)
    assert set(figures) == {"rand_read", "rand_write"}
    assert all(v > 0 for v in figures.values())
    assert drops == [1]
    assert list(tmp_path.iterdir()) == []


def _source_tree(root: Path) -> Path:
    src = root / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "site-packages" / "x").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"\0")
    (src / "site-packages" / "x" / "y.py").write_text("")
    (src / "top.py").write_text("")
    return src


def test_make_tarball_excludes_caches_and_site_packages(tmp_path: Path) -> None:
    src = _source_tree(tmp_path)
    tarball = fb.make_tarball(tmp_path / "t.tar", source=src)
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
    assert any(n.endswith("pkg/mod.py") for n in names)
    assert not any("__pycache__" in n or "site-packages" in n for n in names)

    subset = fb.make_tarball(tmp_path / "s.tar", source=src, members=["top.py", "missing"])
    with tarfile.open(subset) as tf:
        assert tf.getnames() == ["top.py"]
    with pytest.raises(fb.BenchError):
        fb.make_tarball(tmp_path / "n.tar", source=src, members=["missing"])


def test_untar_workload(tmp_path: Path) -> None:
    src = _source_tree(tmp_path)
    tarball = fb.make_tarball(tmp_path / "t.tar", source=src)
    root = tmp_path / "mnt"
    root.mkdir()
    cfg, drops = _counting_cfg(tarball=tarball)
    figures = fb.workload_untar(root, 0, cfg)
    assert set(figures) == {"untar", "rm_rf"}
    assert all(v > 0 for v in figures.values())
    assert drops == [1]
    assert list(root.iterdir()) == []
    with pytest.raises(fb.BenchError):
        fb.workload_untar(root, 1, TINY)


def test_workload_registry_matches_figures(tmp_path: Path) -> None:
    assert [w.name for w in fb.WORKLOADS] == ["seq", "small", "untar", "random"]
    keys = [f.key for f in fb.FIGURES]
    assert len(keys) == len(set(keys)) == 10
    assert {f.key for f in fb.FIGURES if not f.higher_is_better} == {"untar", "rm_rf"}


# --------------------------------------------------------------------------- math, table, JSON


def test_summarize() -> None:
    assert fb.summarize([]) is None
    assert fb.summarize([3.0, 1.0, 2.0]) == fb.Summary(1.0, 2.0, 3.0)
    assert fb.summarize([4.0, 1.0, 2.0, 3.0]) == fb.Summary(1.0, 2.5, 4.0)
    assert fb.summarize([5.0]) == fb.Summary(5.0, 5.0, 5.0)


def test_ratio_is_above_one_when_faster() -> None:
    assert fb.ratio_to_baseline(200.0, 100.0, higher_is_better=True) == pytest.approx(2.0)
    assert fb.ratio_to_baseline(50.0, 100.0, higher_is_better=True) == pytest.approx(0.5)
    # durations: half the seconds of the baseline is twice as fast
    assert fb.ratio_to_baseline(1.0, 2.0, higher_is_better=False) == pytest.approx(2.0)
    assert fb.ratio_to_baseline(4.0, 2.0, higher_is_better=False) == pytest.approx(0.5)
    assert fb.ratio_to_baseline(1.0, 0.0, higher_is_better=True) is None
    assert fb.ratio_to_baseline(0.0, 1.0, higher_is_better=False) is None


def test_cell_formatting() -> None:
    assert fb.fmt_cell(None) == "-"
    assert fb.fmt_cell(fb.Summary(90.0, 100.0, 110.0)) == "100 (90.0\u2013110)"
    assert fb.fmt_cell(fb.Summary(0.0121, 0.0125, 0.013)) == "0.013 (0.012\u20130.013)"
    assert fb.fmt_num(1.234) == "1.23" and fb.fmt_num(12.34) == "12.3"
    assert fb.fmt_ratio(None) == "-" and fb.fmt_ratio(1.2345) == "1.23"


def _fake_results() -> list[fb.TargetResult]:
    goc = fb.TargetResult("gocryptfs", status="ok", pid=10)
    goc.samples = {"seq_write": [100.0, 110.0, 90.0], "untar": [2.0, 2.2, 1.8]}
    goc.rss_kib = {"seq": [10240, 12288, 11264], "untar": [20480]}
    goc.startup_hwm_kib = 40960
    plain = fb.TargetResult("plain", status="ok")
    plain.samples = {"seq_write": [200.0, 220.0, 180.0], "untar": [1.0, 1.1, 0.9]}
    cry = fb.TargetResult("cryfs", status="skipped", note="not installed: cryfs")
    wdfs = fb.TargetResult("wasmer-dfs", status="failed", note="boom", pid=11)
    wdfs.samples = {"seq_write": [50.0]}
    wdfs.rss_kib = {"seq": [30720]}
    return [plain, goc, cry, wdfs]


def _row(table: str, label: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(label))
    return line[len(label) :].split("  ")


def test_render_table_cells_ratios_rss_and_notes() -> None:
    machine = fb.MachineInfo(2, 4.0, "6.1.0", "2024-01-01T00:00:00+00:00", "cpu", "3.11")
    table = fb.render_table(_fake_results(), machine)
    header = table.splitlines()[0].split()
    assert header == [
        "figure",
        "unit",
        "plain",
        "plain/gocryptfs",
        "gocryptfs",
        "wasmer-dfs",
        "wasmer-dfs/gocryptfs",
    ]  # the skipped target gets no column
    seq = [c.strip() for c in _row(table, "seq write") if c.strip()]
    assert seq[-5:] == [
        "200 (180\u2013220)",
        "2.00",
        "100 (90.0\u2013110)",
        "50.0 (50.0\u201350.0)",
        "0.50",
    ]
    untar = [c.strip() for c in _row(table, "tar xf") if c.strip()]
    assert untar[-5:] == ["1.00 (0.900\u20131.10)", "2.00", "2.00 (1.80\u20132.20)", "-", "-"]
    rss = [c.strip() for c in _row(table, "peak RSS during sequential") if c.strip()]
    assert rss[-3:] == ["n/a", "12.0", "30.0"]
    total = [c.strip() for c in _row(table, "peak RSS (all workloads)") if c.strip()]
    assert total[-3:] == ["n/a", "20.0", "30.0"]
    startup = [c.strip() for c in _row(table, "peak RSS at mount") if c.strip()]
    assert startup[-3:] == ["n/a", "40.0", "n/a"]
    assert "cryfs: skipped: not installed: cryfs" in table
    assert "wasmer-dfs: failed: boom" in table
    assert "> 1.0 = faster than gocryptfs" in table
    assert table.splitlines()[-1] == machine.line()
    assert "nproc=2" in machine.line() and "kernel=6.1.0" in machine.line()


def test_render_table_without_baseline_has_no_ratio_columns() -> None:
    results = [r for r in _fake_results() if r.name != "gocryptfs"]
    table = fb.render_table(results, notes=["extra note"])
    assert "/gocryptfs" not in table.splitlines()[0]
    assert "extra note" in table


def test_results_to_json_shape() -> None:
    machine = fb.machine_info()
    doc = fb.results_to_json(_fake_results(), machine, {"repeat": 3})
    json.dumps(doc)  # serialisable
    assert doc["baseline"] == "gocryptfs"
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["memory_gib"] > 0
    assert doc["figure_order"] == [f.key for f in fb.FIGURES]
    assert set(doc["targets"]) == {"plain", "gocryptfs", "cryfs", "wasmer-dfs"}
    plain = doc["targets"]["plain"]
    seq = plain["figures"]["seq_write"]
    assert seq["samples"] == [200.0, 220.0, 180.0]
    assert (seq["min"], seq["median"], seq["max"]) == (180.0, 200.0, 220.0)
    assert seq["ratio_to_gocryptfs"] == pytest.approx(2.0)
    assert seq["unit"] == "MB/s" and seq["higher_is_better"] is True
    assert plain["figures"]["untar"]["ratio_to_gocryptfs"] == pytest.approx(2.0)
    assert plain["figures"]["seq_read"]["median"] is None
    goc = doc["targets"]["gocryptfs"]
    assert goc["figures"]["seq_write"]["ratio_to_gocryptfs"] is None
    assert goc["rss_kib"]["per_workload_peak"]["seq"] == 12288
    assert goc["rss_kib"]["peak"] == 20480
    assert goc["rss_kib"]["startup_peak"] == 40960
    assert doc["targets"]["cryfs"]["status"] == "skipped"


# --------------------------------------------------------------------------- main()


def test_main_quick_plain_writes_json_and_cleans_workdir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    out = tmp_path / "out" / "r.json"
    argv = ["--quick", "--targets", "plain", "--repeat", "2", "--no-drop-caches"]
    rc = fb.main([*argv, "--workdir", str(work), "--json", str(out)])
    assert rc == 0
    assert list(work.iterdir()) == []  # the run directory is removed
    doc = json.loads(out.read_text())
    assert doc["config"]["quick"] is True and doc["config"]["repeat"] == 2
    assert doc["config"]["seq_mib"] == 8 and doc["config"]["files"] == 200
    assert doc["config"]["drop_caches"] is False
    plain = doc["targets"]["plain"]
    assert plain["status"] == "ok"
    for fig in fb.FIGURES:
        assert len(plain["figures"][fig.key]["samples"]) == 2
        assert plain["figures"][fig.key]["median"] > 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["figure", "unit", "plain"]
    assert "machine: nproc=" in printed


def test_main_skips_unavailable_wasmer_dfs(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = fb.main(
        [
            "--quick",
            "--repeat",
            "1",
            "--no-drop-caches",
            "--targets",
            "wasmer-dfs,plain",
            "--workloads",
            "seq",
            "--wasmer-dfs-cmd",
            str(tmp_path / "no-such-wasmer-dfs"),
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(out),
            "--size-mib",
            "1",
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["targets"]["wasmer-dfs"]["status"] == "skipped"
    assert "command not found" in doc["targets"]["wasmer-dfs"]["note"]
    assert doc["config"]["seq_mib"] == 1 and doc["config"]["workloads"] == ["seq"]
    assert len(doc["targets"]["plain"]["figures"]["seq_write"]["samples"]) == 1


@pytest.mark.parametrize(
    "argv",
    [["--targets", "plain,zfs"], ["--workloads", "nope"], ["--repeat", "0"], ["--files", "0"]],
)
def test_main_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fb.main(argv)
    assert exc.value.code == 2


def test_make_target_names() -> None:
    assert [fb.make_target(n).name for n in fb.ALL_TARGETS] == list(fb.ALL_TARGETS)
    with pytest.raises(ValueError):
        fb.make_target("zfs")
    assert fb.WasmerDfsTarget("python -m x").argv == ["python", "-m", "x"]


# --------------------------------------------------------------------------- /proc helpers


def test_mount_table_parsing(tmp_path: Path) -> None:
    assert fb._unescape_mount_field("/a\\040b\\011c") == "/a b\tc"
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "proc /proc proc rw 0 0\ngocryptfs /var/tmp/x\\040y/mnt fuse.gocryptfs rw 0 0\n"
    )
    assert fb.mounted_paths(str(mounts)) == ["/proc", "/var/tmp/x y/mnt"]
    assert fb.mounted_paths(str(tmp_path / "missing")) == []
    assert not fb.is_mounted(tmp_path)
    assert fb.mounts_under(tmp_path) == []


def _wait_cmdline(pid: int, needle: str) -> None:
    deadline = time.monotonic() + 5
    while needle not in fb._proc_cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_find_daemon_pid_direct_and_wrapped(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    direct = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", str(mnt)], stdin=subprocess.PIPE
    )
    try:
        _wait_cmdline(direct.pid, str(mnt))
        assert fb.find_daemon_pid(mnt, direct.pid) == direct.pid
        assert fb.find_daemon_pid(mnt) == direct.pid
        assert fb.find_daemon_pid(tmp_path / "other", direct.pid) is None
    finally:
        assert direct.stdin is not None
        direct.stdin.close()
        direct.wait(timeout=10)

    # A wrapper that runs the daemon as a child: the child is the one to measure.
    child_code = "import sys; sys.stdin.read()"
    wrapper_code = (
        "import subprocess, sys; "
        f"subprocess.run([sys.executable, '-c', {child_code!r}, sys.argv[1], 'daemon'])"
    )
    wrapper = subprocess.Popen(
        [sys.executable, "-c", wrapper_code, str(mnt)], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 5
        found = None
        while time.monotonic() < deadline:
            found = fb.find_daemon_pid(mnt, wrapper.pid)
            if found not in (None, wrapper.pid):
                break
            time.sleep(0.01)
        assert found is not None and found != wrapper.pid
        assert fb._is_descendant(found, wrapper.pid)
        assert "daemon" in fb._proc_cmdline(found)
        assert found in fb.child_pids(wrapper.pid)
    finally:
        assert wrapper.stdin is not None
        wrapper.stdin.close()  # EOF reaches the child too: both exit
        wrapper.wait(timeout=10)


def test_status_fields_and_peak_reset() -> None:
    hwm = fb.read_status_kib(os.getpid(), "VmHWM")
    assert hwm is not None and hwm > 0
    assert fb.read_status_kib(os.getpid(), "NoSuchField") is None
    assert fb.read_status_kib(2**22 + 12345, "VmHWM") is None
    assert isinstance(fb.reset_peak_rss(os.getpid()), bool)


def test_stop_process_terminates_by_pid() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    rc = fb.stop_process(proc, timeout=0.1)
    assert rc is not None and rc != 0
    assert proc.poll() is not None


def test_plain_reporter_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with fb.Reporter(2, fancy=False) as rep:
        rep.start("plain: seq #1/1")
        rep.advance()
        rep.start("plain: unmounting", counted=False)
        rep.note("hello")
        rep.advance(5)
    err = capsys.readouterr().err
    assert "[1/2] plain: seq #1/1" in err
    assert "fsbench: plain: unmounting" in err and "fsbench: hello" in err
    assert rep.done == 2


# --------------------------------------------------------------------------- interleaving


class _DirTarget:
    """A target that "mounts" a directory and records what happens to it."""

    def __init__(self, name: str, events: list[str], missing: str | None = None) -> None:
        self.name = name
        self.events = events
        self.missing = missing

    def unavailable(self) -> str | None:
        return self.missing

    def version(self) -> str:
        return "1"

    @contextlib.contextmanager
    def mount(self, workdir: Path, notes: fb.Notes) -> Iterator[fb.MountedTarget]:
        path = workdir / self.name
        path.mkdir()
        self.events.append(f"mount {self.name}")
        try:
            yield fb.MountedTarget(path)
        finally:
            self.events.append(f"unmount {self.name}")


def test_targets_run_interleaved_and_a_failing_one_is_left_out(tmp_path: Path) -> None:
    events: list[str] = []

    def step(path: Path, index: int, cfg: fb.WorkloadConfig) -> dict[str, float]:
        name = path.name
        if name == "b" and index == 1:
            raise fb.BenchError("disk full")
        events.append(f"{name}#{index}")
        return {"x": float(index + 1)}

    wl = fb.Workload("w", "w", (fb.Figure("x", "x", "ops/s", True),), step)
    targets = [
        _DirTarget("a", events),
        _DirTarget("b", events),
        _DirTarget("c", events, missing="not installed"),
        _DirTarget("d", events),
    ]
    with fb.Reporter(3 * 4, fancy=False) as reporter:
        results = fb.run_targets(targets, tmp_path, [wl], TINY, 3, reporter)

    assert events == [
        "mount a", "mount b", "mount d",
        "a#0", "b#0", "d#0", "a#1", "d#1", "a#2", "d#2",
        "unmount d", "unmount b", "unmount a",
    ]  # fmt: skip
    status = {r.name: (r.status, r.samples.get("x")) for r in results}
    assert status == {
        "a": ("ok", [1.0, 2.0, 3.0]),
        "b": ("failed", [1.0]),
        "c": ("skipped", None),
        "d": ("ok", [1.0, 2.0, 3.0]),
    }
    assert "disk full" in results[1].note


def test_settle_returns_for_an_idle_process_and_waits_for_a_busy_one() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        start = time.monotonic()
        fb.settle(idle.pid, quiet=0.2, limit=5.0)
        assert time.monotonic() - start < 2.0
        start = time.monotonic()
        fb.settle(busy.pid, quiet=0.2, limit=1.5)
        assert time.monotonic() - start >= 1.4
    finally:
        for proc in (idle, busy):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["bench", "--bogus"], "usage: wasmer-dfs bench"),
        (["bench", "replication", "--bogus"], "usage: python -m bench.replication"),
    ],
)
def test_the_bench_command_reaches_both_suites(argv: list[str], usage: str) -> None:
    exe = Path(sys.executable).with_name("wasmer-dfs")
    proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert usage in proc.stderr and "--bogus" in proc.stderr
