"""The chain header: what a log (or a chain server) says about its chain before any event -
its id, name, whether it is encrypted and how its read key derives from the passcode (salted
Argon2id, docs/adr/0004), the key check, the root write key and the preset it was made with
(docs/adr/0014). Read by every session, the chain server and the replicas."""

from __future__ import annotations

import msgspec

from application.ports import KdfParams
from application.session_errors import ChainIntegrityError
from domain.events import WriteEveryone, WriteOption, WriteSpecific
from domain.kdf import argon2id_cost_problem

#: 2: signatures cover the seal's metadata too (domain/trust.py); version 1 chains keep their
#: older signatures valid
HEADER_VERSION = 2

DEFAULT_KDF = (3, 64 * 1024, 4)  # iterations, memory KiB, lanes: ~0.16 s here


class KdfHeader(msgspec.Struct, frozen=True):
    salt: bytes
    iterations: int
    memory_kib: int
    lanes: int

    def params(self) -> KdfParams:
        return KdfParams(self.salt, self.iterations, self.memory_kib, self.lanes)

    def check(self) -> None:
        """``ChainIntegrityError`` when a cost or the salt lies outside sane bounds
        (domain/kdf.py; checked before any key is derived)."""
        problem = argon2id_cost_problem(self.salt, self.iterations, self.memory_kib, self.lanes)
        if problem is not None:
            raise ChainIntegrityError(
                f"the chain header asks for {problem} (a damaged or hostile header)"
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
