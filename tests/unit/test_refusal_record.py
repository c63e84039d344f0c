"""The record of what a replica refused from its chain server (adapters/refusals.py, ADR 0016)."""

from __future__ import annotations

from pathlib import Path

from adapters.refusals import FileRefusalRecord


def test_refusals_are_appended_and_read_back_in_order(tmp_path: Path) -> None:
    rec = FileRefusalRecord(tmp_path / "local.refused")
    assert rec.entries() == []  # no file: nothing refused
    rec.record("the chain server served a history that is forged: one")
    rec.record("a second, with a newline\nin it")
    entries = FileRefusalRecord(tmp_path / "local.refused").entries()
    assert len(entries) == 2
    assert entries[0].endswith(": the chain server served a history that is forged: one")
    assert entries[1].endswith("a second, with a newline\nin it")
    assert (tmp_path / "local.refused").stat().st_mode & 0o777 == 0o600


def test_a_damaged_line_is_still_reported(tmp_path: Path) -> None:
    path = tmp_path / "local.refused"
    path.write_text('not json\n\n{"reason": "no time"}\n')
    assert FileRefusalRecord(path).entries() == ["not json", '{"reason": "no time"}']
