"""The `--configured-for` presets (docs/adr/0014): what each one means here.

A preset picks the serialisation formats of new records, the clock tolerance a mount applies to
the transactions a chain server streams to it, and whether the chain server's host name must be
DNSSEC-validated. It never changes the trust rules: every write is still authenticated and
authorised (ADR 0004), whatever the preset.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from domain.formats import Format


class Preset(enum.StrEnum):
    RAW = "raw"
    BAREBONE = "barebone"
    SPEED = "speed"
    COMPATIBILITY = "compatibility"
    BALANCED = "balanced"
    SECURITY = "security"


#: the manual's default
DEFAULT_PRESET = Preset.SPEED


class PresetError(ValueError):
    """A preset that cannot be used (the message says why, for a human)."""


@dataclass(frozen=True, slots=True)
class PresetSettings:
    meta: Format
    data: Format
    #: milliseconds a streamed event may be stamped in the future (None: not checked)
    tolerance_ms: int | None
    dnssec: bool


SETTINGS: dict[Preset, PresetSettings] = {
    Preset.BAREBONE: PresetSettings(Format.BINCODE, Format.BINCODE, None, False),
    Preset.SPEED: PresetSettings(Format.BINCODE, Format.BINCODE, 60_000, False),
    Preset.COMPATIBILITY: PresetSettings(Format.JSON, Format.JSON, 40_000, False),
    Preset.BALANCED: PresetSettings(Format.BINCODE, Format.JSON, 40_000, False),
    Preset.SECURITY: PresetSettings(Format.BINCODE, Format.JSON, 30_000, True),
}

RAW_REFUSED = (
    "--configured-for raw is refused: in the original it means a chain with no validators at"
    " all, so anyone could write to it without a key; this file system never accepts"
    " unauthenticated writes (use --configured-for barebone for the leanest safe setting)"
)


def parse(name: str) -> Preset:
    """The preset named ``name`` (``PresetError`` when unknown, e.g. recorded by a newer
    program)."""
    try:
        return Preset(name)
    except ValueError:
        raise PresetError(
            f"unknown preset {name!r}: expected one of {', '.join(p.value for p in Preset)}"
        ) from None


def settings(preset: Preset) -> PresetSettings:
    """What ``preset`` means here; ``PresetError`` for ``raw`` (see ``RAW_REFUSED``)."""
    found = SETTINGS.get(preset)
    if found is None:
        raise PresetError(RAW_REFUSED)
    return found


def choose(explicit: Preset | None, recorded: str | None) -> tuple[Preset, str | None]:
    """The preset a mount uses: the explicit one, else the one recorded in the chain header,
    else the default; with a warning (for a human) when an explicit preset differs from the
    recorded one. ``PresetError`` for a preset refused or unknown."""
    warning = None
    if explicit is not None:
        preset = explicit
        if recorded is not None and recorded != explicit.value:
            warning = (
                f"this chain was created --configured-for {recorded}; this mount uses"
                f" {explicit.value} (its formats for new records, its clock tolerance and"
                f" DNSSEC setting); the chain header keeps {recorded}, and a mount without"
                " --configured-for uses it again"
            )
    elif recorded is not None:
        preset = parse(recorded)
    else:
        preset = DEFAULT_PRESET
    settings(preset)  # refuses raw
    return preset, warning
