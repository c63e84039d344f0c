"""Port of the cryptographic primitives (docs/adr/0004-trust-and-encryption.md).

Adapter: ``adapters.crypto.PqCrypto``; test adapter ``tests.fakes.FastCrypto`` (see
docs/adr/0017-ports-and-twins.md). Contract: tests/contract/test_crypto_contract.py."""

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


class Crypto(abc.ABC):
    """Quantum-resistant primitives: AES-256-GCM, ML-DSA-65 signatures, Argon2id, randomness."""

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
