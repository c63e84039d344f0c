"""Progress bars of the long commands: only on a terminal, only after a moment."""

from __future__ import annotations

import io

from entrypoints.progress import ProgressBar


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_not_a_terminal() -> None:
    out = io.StringIO()
    with ProgressBar("compacting", stream=out, delay=0) as bar:
        for i in range(10):
            bar("copy", i, 10)
    assert out.getvalue() == ""


def test_no_bar_for_work_shorter_than_the_delay() -> None:
    out = Tty()
    with ProgressBar("compacting", stream=out, delay=60) as bar:
        bar("scan", 1, 2)
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal_names_the_phase() -> None:
    out = Tty()
    with ProgressBar("compacting", stream=out, delay=0) as bar:
        bar("scan", 5, 10)
        bar("copy", 10, 10)
    text = out.getvalue()
    assert "compacting: reading the log" in text
    assert "compacting: writing the new log" in text
