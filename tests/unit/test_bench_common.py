"""bench/common.py: the helpers every benchmark shares (issue 13)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from bench import common


def test_free_port_can_be_bound_on_loopback() -> None:
    port = common.free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_machine_dict_has_the_fields_every_report_prints() -> None:
    m = common.machine_dict()
    assert set(m) == {"nproc", "memory_gib", "kernel", "date", "cpu", "python"}
    assert m["nproc"] >= 1
    assert m["memory_gib"] > 0
    assert m["python"].count(".") == 2
    assert common.machine_info().line().startswith("machine: nproc=")


def test_read_status_kib_reads_this_process_and_refuses_a_missing_field() -> None:
    hwm = common.read_status_kib(os.getpid(), "VmHWM")
    rss = common.read_status_kib(os.getpid(), "VmRSS")
    assert hwm is not None and rss is not None and hwm >= rss > 0
    assert common.read_status_kib(os.getpid(), "NoSuchField") is None


def test_terminate_stops_a_running_process_and_accepts_one_already_gone() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL
    )
    try:
        t0 = time.monotonic()
        common.terminate(proc, timeout=10)
        assert proc.returncode is not None
        assert time.monotonic() - t0 < 10
        common.terminate(proc, timeout=10)  # already gone: no error
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
