"""The twin of the ``Crypto`` port (docs/adr/0017): the real primitives with the cheapest
Argon2id. A twin that only pretended (a signature every key "verifies", a cipher that does not
authenticate) would make every trust and tamper test meaningless, so this one holds a
``PqCrypto`` - AES-256-GCM, ML-DSA-65, ML-KEM-768 - and delegates to it; only the key derivation
runs at the smallest Argon2id cost, whatever the chain header asks for. Salt and passcode still
go through Argon2id, so a wrong passcode or another salt still gives another key; only the time
spent changes. Tests, benchmarks and tools build services on it."""

from __future__ import annotations

from adapters.crypto import PqCrypto
from application.ports import Crypto, KdfParams

#: Argon2id (iterations, memory KiB, lanes) at its minimum: well under a millisecond
FAST_KDF = (1, 8, 1)


class FastCrypto(Crypto):
    """The real primitives (``PqCrypto``, held, not inherited: a double subclasses the port) with
    the cheapest Argon2id, whatever cost the chain header records."""

    def __init__(self) -> None:
        self.real = PqCrypto()

    def random(self, n: int) -> bytes:
        return self.real.random(n)

    def derive_key(self, passcode: bytes, params: KdfParams) -> bytes:
        return self.real.derive_key(passcode, KdfParams(params.salt, *FAST_KDF))

    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self.real.seal(key, plaintext, aad)

    def open(self, key: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
        return self.real.open(key, sealed, aad)

    def sign_keypair(self) -> tuple[bytes, bytes]:
        return self.real.sign_keypair()

    def sign(self, secret: bytes, message: bytes) -> bytes:
        return self.real.sign(secret, message)

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        return self.real.verify(public, message, signature)

    def kem_keypair(self) -> tuple[bytes, bytes]:
        return self.real.kem_keypair()

    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        return self.real.kem_encapsulate(public)

    def kem_decapsulate(self, secret: bytes, ciphertext: bytes) -> bytes:
        return self.real.kem_decapsulate(secret, ciphertext)
