"""bench/replication.py's wire encryption comparison: the settings parsed, the medians over
rounds and the ratios to the first setting."""

from __future__ import annotations

from typing import Any

import pytest

from bench.replication import compare_wires, parse_wires, render_wires


def test_settings_are_parsed_and_checked() -> None:
    assert parse_wires("none,256") == [None, 256]
    assert parse_wires("128, 192") == [128, 192]
    for bad in ("512", "none,none", ""):
        with pytest.raises(ValueError, match="--wire-encryption"):
            parse_wires(bad)


def _prop(p50: float, p95: float) -> dict[str, Any]:
    t = {"total_ms": {"p50": p50, "p95": p95}}
    return {"create": t, "append": t}


def _sync(mounted: float) -> dict[str, Any]:
    return {
        "c_mounted_s": mounted,
        "c_read_one_file_s": mounted + 1,
        "a_write_until_confirmed_s": 2.0,
    }


def test_comparison_takes_medians_and_ratios_to_the_first_setting() -> None:
    runs = {
        "none": {
            "propagation": {"m": [_prop(10, 20), _prop(30, 40), _prop(20, 30)]},
            "initial_sync": [_sync(4.0), _sync(6.0), _sync(5.0)],
        },
        "256": {
            "propagation": {"m": [_prop(22, 33), _prop(21, 31), _prop(99, 99)]},
            "initial_sync": [_sync(5.5), _sync(5.5), _sync(1.0)],
        },
    }
    cmp = compare_wires(runs, ["m"])
    assert cmp["none"]["create_m_p50_ms"] == 20
    assert cmp["256"]["create_m_p50_ms"] == 22
    assert cmp["256"]["ratio_to_none"]["create_m_p50_ms"] == 1.1
    assert cmp["256"]["ratio_to_none"]["sync_mounted_s"] == 1.1
    assert cmp["none"]["ratio_to_none"]["sync_upload_confirmed_s"] == 1.0
    text = "\n".join(render_wires(cmp))
    assert "256/none" in text and "1.100" in text
