"""The chain header: what a log (or a chain server) says about its chain before any event -
its id, name, whether it is encrypted and how its read key derives from the passcode (salted
Argon2id, docs/adr/0004), the key check, the root write key and the preset it was made with
(docs/adr/0014). Read by every session, the chain server and the replicas."""

from __future__ import annotations

import msgspec

from application.ports import KdfParams
from application.session_errors import ChainIntegrityError
from domain.events import WriteEveryone, WriteOption, WriteSpecific

#: 2: signatures cover the seal's metadata too (domain/trust.py); version 1 chains keep their
#: older signatures valid
HEADER_VERSION = 2

#: Argon2id costs a chain header may demand (docs/adr/0014): they admit every cost this program
#: writes (DEFAULT_KDF, the tests' (1, 8, 1)) and refuse a header - maybe a hostile server's -
#: that would make a mount spend gigabytes or hours deriving a key
KDF_ITERATIONS = (1, 64)
KDF_MEMORY_KIB = (8, 4 * 1024 * 1024)  # 8 KiB .. 4 GiB
KDF_LANES = (1, 64)
KDF_SALT_BYTES = (16, 64)

DEFAULT_KDF = (3, 64 * 1024, 4)  # iterations, memory KiB, lanes: ~0.16 s here


class KdfHeader(msgspec.Struct, frozen=True):
    salt: bytes
    iterations: int
    memory_kib: int
    lanes: int

    def params(self) -> KdfParams:
        return KdfParams(self.salt, self.iterations, self.memory_kib, self.lanes)

    def check(self) -> None:
        """``ChainIntegrityError`` when a cost or the salt lies outside sane bounds (checked
        before any key is derived)."""
        for what, value, (low, high) in (
            ("iterations", self.iterations, KDF_ITERATIONS),
            ("memory (KiB)", self.memory_kib, KDF_MEMORY_KIB),
            ("lanes", self.lanes, KDF_LANES),
            ("salt length", len(self.salt), KDF_SALT_BYTES),
        ):
            if not low <= value <= high:
                raise ChainIntegrityError(
                    f"the chain header asks for Argon2id {what} {value}, outside {low}..{high}:"
                    " refused before deriving any key (a damaged or hostile header)"
                )
        if self.memory_kib < 8 * self.lanes:
            raise ChainIntegrityError(
                f"the chain header asks for Argon2id memory {self.memory_kib} KiB with"
                f" {self.lanes} lanes (at least 8 KiB a lane): refused"
            )


class ChainHeader(msgspec.Struct, frozen=True):
    version: int
    chain_id: bytes
    name: str
    created_ms: int
    encrypted: bool
    kdf: KdfHeader | None
    key_check: bytes
    root_key_hash: bytes | None
    page_size: int
    #: the --configured-for preset the chain was created with (docs/adr/0014); a remount
    #: without --configured-for keeps it. None: a chain from before presets were recorded.
    configured_for: str | None = None

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, body: bytes) -> ChainHeader:
        try:
            hdr = msgspec.msgpack.decode(body, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ChainIntegrityError(f"the chain header is unreadable: {exc}") from None
        if hdr.version > HEADER_VERSION:
            raise ChainIntegrityError(
                f"chain header version {hdr.version} is newer than this program"
            )
        return hdr

    @property
    def root_write(self) -> WriteOption:
        if self.root_key_hash is None:
            return WriteEveryone()
        return WriteSpecific(self.root_key_hash)
