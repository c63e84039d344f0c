"""Port of the cryptographic primitives (docs/adr/0004-trust-and-encryption.md).

Adapter: ``adapters.crypto.PqCrypto``; twin: ``adapters.memory.FastCrypto`` (the same
primitives, the cheapest Argon2id; docs/adr/0017-ports-and-twins.md). Contract:
tests/contract/test_crypto_contract.py."""

from __future__ import annotations

import abc
from dataclasses import dataclass


class CryptoError(Exception):
    """Decryption or authentication failed."""


@dataclass(frozen=True, slots=True)
class KdfParams:
    """The Argon2id parameters a chain header records: the same passcode and parameters always
    derive the same key."""

    salt: bytes
    iterations: int
    memory_kib: int
    lanes: int


#: ML-KEM-768 sizes (FIPS 203): public key, secret key, ciphertext, shared secret
KEM_PUBLIC_KEY_BYTES = 1184
KEM_SECRET_KEY_BYTES = 2400
KEM_CIPHERTEXT_BYTES = 1088
KEM_SHARED_SECRET_BYTES = 32


class Crypto(abc.ABC):
    """Quantum-resistant primitives: AES-256-GCM, ML-DSA-65 signatures, ML-KEM-768 key
    encapsulation, Argon2id, randomness."""

    @abc.abstractmethod
    def random(self, n: int) -> bytes:
        """``n`` bytes from a cryptographically secure source (keys, nonces, chain ids)."""

    @abc.abstractmethod
    def derive_key(self, passcode: bytes, params: KdfParams) -> bytes:
        """A 32-byte key, a function of ``passcode`` and ``params`` alone: another passcode or
        another salt gives another key."""

    @abc.abstractmethod
    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """nonce || ciphertext || tag, with a fresh random nonce."""

    @abc.abstractmethod
    def open(self, key: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
        """Inverse of ``seal``; raises ``CryptoError`` when anything was altered."""

    @abc.abstractmethod
    def sign_keypair(self) -> tuple[bytes, bytes]:
        """(public, secret) of a new signing key."""

    @abc.abstractmethod
    def sign(self, secret: bytes, message: bytes) -> bytes:
        """A signature of ``message`` by ``secret`` that ``verify`` accepts with its public key."""

    @abc.abstractmethod
    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        """True only when ``signature`` is the signature of exactly ``message`` by the secret
        key of ``public``; False (never an exception) for anything else, malformed input too."""

    @abc.abstractmethod
    def kem_keypair(self) -> tuple[bytes, bytes]:
        """(public, secret) of a new ML-KEM-768 key pair (``KEM_PUBLIC_KEY_BYTES`` and
        ``KEM_SECRET_KEY_BYTES`` long); every call gives another pair."""

    @abc.abstractmethod
    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """(ciphertext, shared secret) for ``public``: a fresh 32-byte secret that only the
        holder of the matching secret key recovers from the ciphertext with
        ``kem_decapsulate``. A malformed public key raises ``CryptoError``."""

    @abc.abstractmethod
    def kem_decapsulate(self, secret: bytes, ciphertext: bytes) -> bytes:
        """The 32-byte shared secret ``kem_encapsulate`` made for ``secret``'s public key.

        A ciphertext made for another key, or altered, gives another secret (ML-KEM's implicit
        rejection: no error, so callers must authenticate what they derive from it, e.g. with
        AES-GCM); a secret key or ciphertext of the wrong length raises ``CryptoError``."""
