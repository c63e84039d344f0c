"""`--configured-for` presets (docs/adr/0014): what each one sets, explicit formats overriding
the preset, the preset recorded in the chain header at creation and kept by a remount, a
different explicit preset warned about, ``raw`` refused."""

from __future__ import annotations

import msgspec
import pytest

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application.mount import Configuration, Mounted, MountRequest, MountService
from application.session import ChainHeader, Formats, SessionError
from domain.formats import Format
from domain.presets import DEFAULT_PRESET, Preset, PresetError, choose, settings
from tests.fakes import FAST_KDF, FastCrypto

PW = b"pw"


def mount(
    logs: MemoryRedoLogFactory, formats: Formats | Configuration, passcode: bytes | None = PW
) -> Mounted:
    service = MountService(logs, FastCrypto(), FakeClock())
    return service.open(MountRequest("local", passcode, formats, 0, 0, kdf=FAST_KDF))


def recorded(logs: MemoryRedoLogFactory) -> str | None:
    return ChainHeader.decode(logs.read_header("local")).configured_for


def test_what_each_preset_means() -> None:
    b, j = Format.BINCODE, Format.JSON
    table = {p: (s.meta, s.data, s.tolerance_ms, s.dnssec) for p in Preset if p is not Preset.RAW
             for s in [settings(p)]}  # fmt: skip
    assert table == {
        Preset.BAREBONE: (b, b, None, False),
        Preset.SPEED: (b, b, 60_000, False),
        Preset.COMPATIBILITY: (j, j, 40_000, False),
        Preset.BALANCED: (b, j, 40_000, False),
        Preset.SECURITY: (b, j, 30_000, True),
    }
    assert DEFAULT_PRESET is Preset.SPEED


def test_raw_is_refused_with_the_reason() -> None:
    with pytest.raises(PresetError, match="unauthenticated writes"):
        settings(Preset.RAW)
    logs = MemoryRedoLogFactory()
    with pytest.raises(SessionError, match="raw is refused"):
        mount(logs, Configuration(Preset.RAW))
    assert not logs.exists("local"), "a chain was created for a refused preset"


def test_preset_is_recorded_and_kept_by_a_remount() -> None:
    logs = MemoryRedoLogFactory()
    m = mount(logs, Configuration(Preset.COMPATIBILITY))
    assert recorded(logs) == "compatibility"
    assert m.session.formats == Formats(Format.JSON, Format.JSON)
    assert (m.preset, m.preset_warning) == (Preset.COMPATIBILITY, None)
    m.close()

    m = mount(logs, Configuration())  # no --configured-for
    assert m.preset is Preset.COMPATIBILITY
    assert m.session.formats == Formats(Format.JSON, Format.JSON)
    assert m.fs.fmt is Format.JSON
    assert m.preset_warning is None
    m.close()


def test_explicit_formats_override_the_preset() -> None:
    logs = MemoryRedoLogFactory()
    m = mount(logs, Configuration(Preset.BALANCED, meta=Format.MPACK))
    assert m.session.formats == Formats(Format.MPACK, Format.JSON)
    m.close()
    m = mount(logs, Configuration(data=Format.BINCODE))
    assert m.session.formats == Formats(Format.BINCODE, Format.BINCODE)
    assert m.preset is Preset.BALANCED
    m.close()


def test_a_different_explicit_preset_is_used_with_a_warning_and_the_header_keeps_its_own() -> None:
    logs = MemoryRedoLogFactory()
    mount(logs, Configuration(Preset.SECURITY)).close()
    m = mount(logs, Configuration(Preset.COMPATIBILITY))
    assert m.preset is Preset.COMPATIBILITY
    assert m.preset_warning is not None and "created --configured-for security" in m.preset_warning
    assert m.session.formats == Formats(Format.JSON, Format.JSON)
    m.close()
    assert recorded(logs) == "security"
    m = mount(logs, Configuration())
    assert (m.preset, m.preset_warning) == (Preset.SECURITY, None)
    m.close()


def test_a_header_from_before_presets_decodes_and_gets_the_default() -> None:
    logs = MemoryRedoLogFactory()
    mount(logs, Configuration(Preset.COMPATIBILITY)).close()
    hdr = msgspec.msgpack.decode(logs.read_header("local"))
    del hdr["configured_for"]  # as a header written before the field existed
    old = MemoryRedoLogFactory()
    old.create("local", msgspec.msgpack.encode(hdr)).close()
    assert ChainHeader.decode(old.read_header("local")).configured_for is None
    assert choose(None, None) == (DEFAULT_PRESET, None)


def test_an_unknown_recorded_preset_is_a_clear_error() -> None:
    with pytest.raises(PresetError, match="unknown preset 'turbo'"):
        choose(None, "turbo")
