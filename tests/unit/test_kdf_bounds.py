"""Argon2id costs read from a chain header are bounded (issue 12, docs/adr/0014): a header that
names absurd costs - a damaged log, or a hostile chain server answering a new replica - is
refused with a clear message *before* any key is derived, and every cost this program writes is
still accepted."""

from __future__ import annotations

import msgspec
import pytest

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application.mount import MountRequest, MountService
from application.ports import KdfParams
from application.session import (
    DEFAULT_KDF,
    ChainHeader,
    ChainIntegrityError,
    ChainSession,
    Formats,
    KdfHeader,
)
from tests.fakes import FAST_KDF, FastCrypto

PW = b"pw"
GIB_KIB = 1024 * 1024


class RecordingCrypto(FastCrypto):
    """``FastCrypto`` that records every key derivation it is asked for (the real Argon2id is
    never run at the header's cost, so a test of an absurd cost cannot eat the machine)."""

    def __init__(self) -> None:
        super().__init__()
        self.derived: list[KdfParams] = []

    def derive_key(self, passcode: bytes, params: KdfParams) -> bytes:
        self.derived.append(params)
        return super().derive_key(passcode, params)


def sound_header(crypto: RecordingCrypto) -> ChainHeader:
    logs = MemoryRedoLogFactory()
    session = ChainSession.create(
        logs, "local", PW, crypto, FakeClock(), Formats(), 4096, kdf=FAST_KDF
    )
    session.close()
    crypto.derived.clear()
    return session.header


ABSURD = {
    "1 TiB of memory": {"memory_kib": 1024 * GIB_KIB},
    "10^6 iterations": {"iterations": 10**6},
    "no lanes": {"lanes": 0},
    "10^6 lanes": {"lanes": 10**6, "memory_kib": 8 * 10**6},
    "0 iterations": {"iterations": 0},
    "memory below 8 KiB a lane": {"lanes": 4, "memory_kib": 16},
    "a 4-byte salt": {"salt": b"salt"},
    "a 1 MiB salt": {"salt": b"s" * 1024 * 1024},
}


def absurd(header: ChainHeader, change: dict[str, object]) -> ChainHeader:
    assert header.kdf is not None
    return msgspec.structs.replace(header, kdf=msgspec.structs.replace(header.kdf, **change))


@pytest.mark.parametrize("change", ABSURD.values(), ids=ABSURD.keys())
def test_local_log_with_absurd_costs_is_refused_before_deriving(change: dict[str, object]) -> None:
    crypto = RecordingCrypto()
    header = absurd(sound_header(crypto), change)
    logs = MemoryRedoLogFactory()
    logs.create("local", header.encode()).close()
    with pytest.raises(ChainIntegrityError, match=r"Argon2id .* refused"):
        ChainSession.open(logs, "local", PW, crypto, FakeClock(), Formats())
    assert crypto.derived == [], "a key was derived at the header's cost"


@pytest.mark.parametrize("change", ABSURD.values(), ids=ABSURD.keys())
def test_server_header_with_absurd_costs_is_refused_before_deriving(
    change: dict[str, object],
) -> None:
    """A new replica takes the chain's header from the server (``MountRequest.replica_header``):
    a server naming absurd costs is refused, and no log is created."""
    crypto = RecordingCrypto()
    header = absurd(sound_header(crypto), change)
    logs = MemoryRedoLogFactory()
    service = MountService(logs, crypto, FakeClock())
    request = MountRequest(
        "local", PW, Formats(), 0, 0, remote=True, replica_header=header.encode()
    )
    with pytest.raises(ChainIntegrityError, match=r"Argon2id .* refused"):
        service.open(request)
    assert crypto.derived == []
    assert not logs.exists("local")


@pytest.mark.parametrize("kdf", [DEFAULT_KDF, FAST_KDF], ids=["DEFAULT_KDF", "FAST_KDF"])
def test_every_cost_this_program_writes_is_accepted(kdf: tuple[int, int, int]) -> None:
    crypto = RecordingCrypto()
    logs = MemoryRedoLogFactory()
    ChainSession.create(logs, "local", PW, crypto, FakeClock(), Formats(), 4096, kdf=kdf).close()
    session = ChainSession.open(logs, "local", PW, crypto, FakeClock(), Formats())
    session.start()
    session.close()
    assert [(p.iterations, p.memory_kib, p.lanes) for p in crypto.derived] == [kdf, kdf]


def test_bounds_edges() -> None:
    salt = b"s" * 16
    KdfHeader(salt, 64, 4 * GIB_KIB, 64).check()  # the largest accepted
    KdfHeader(salt, 1, 8, 1).check()  # the smallest
    with pytest.raises(ChainIntegrityError, match="memory"):
        KdfHeader(salt, 1, 4 * GIB_KIB + 1, 1).check()
    with pytest.raises(ChainIntegrityError, match="iterations 65"):
        KdfHeader(salt, 65, 8, 1).check()
