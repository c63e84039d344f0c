"""The Argon2id costs anything read from outside may demand (docs/adr/0014, 0018): a chain
header (a log, or a chain server answering a new replica) and an account's password record.
They admit every cost this program writes (the defaults, the tests' (1, 8, 1)) and refuse one
that would make a client spend gigabytes or hours deriving a key - checked before any key is
derived."""

from __future__ import annotations

KDF_ITERATIONS = (1, 64)
KDF_MEMORY_KIB = (8, 4 * 1024 * 1024)  # 8 KiB .. 4 GiB
KDF_LANES = (1, 64)
KDF_SALT_BYTES = (16, 64)


def argon2id_cost_problem(salt: bytes, iterations: int, memory_kib: int, lanes: int) -> str | None:
    """What is out of bounds in these Argon2id parameters, as the end of a sentence ("asks for
    Argon2id lanes 99, outside 1..64: refused"), or None when they may be used."""
    for what, value, (low, high) in (
        ("iterations", iterations, KDF_ITERATIONS),
        ("memory (KiB)", memory_kib, KDF_MEMORY_KIB),
        ("lanes", lanes, KDF_LANES),
        ("salt length", len(salt), KDF_SALT_BYTES),
    ):
        if not low <= value <= high:
            return (
                f"Argon2id {what} {value}, outside {low}..{high}: refused before deriving any key"
            )
    if memory_kib < 8 * lanes:
        return (
            f"Argon2id memory {memory_kib} KiB with {lanes} lanes (at least 8 KiB a lane): refused"
        )
    return None
