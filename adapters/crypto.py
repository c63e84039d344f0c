"""The real crypto adapter: AES-256-GCM and Argon2id from `cryptography`, ML-DSA-65 from
`pqcrypto`, ML-KEM-768 from `pqcrypto`, randomness from the OS."""

from __future__ import annotations

import os

import pqcrypto.kem.ml_kem_768 as ml_kem
import pqcrypto.sign.ml_dsa_65 as ml_dsa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from pqcrypto import InvalidSignatureError

from application.ports import Crypto, CryptoError, KdfParams

NONCE = 12


class PqCrypto(Crypto):
    def __init__(self) -> None:
        self._ciphers: dict[bytes, AESGCM] = {}

    def _aead(self, key: bytes) -> AESGCM:
        c = self._ciphers.get(key)
        if c is None:
            if len(self._ciphers) > 4096:
                self._ciphers.clear()
            c = self._ciphers[key] = AESGCM(key)
        return c

    def random(self, n: int) -> bytes:
        return os.urandom(n)

    def derive_key(self, passcode: bytes, params: KdfParams) -> bytes:
        return Argon2id(
            salt=params.salt,
            length=32,
            iterations=params.iterations,
            lanes=params.lanes,
            memory_cost=params.memory_kib,
        ).derive(passcode)

    def seal(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead(key).encrypt(nonce, plaintext, aad)

    def open(self, key: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
        if len(sealed) < NONCE + 16:
            raise CryptoError("sealed data is too short")
        try:
            return self._aead(key).decrypt(sealed[:NONCE], sealed[NONCE:], aad)
        except InvalidTag:
            raise CryptoError("authentication failed: wrong key or altered data") from None

    def sign_keypair(self) -> tuple[bytes, bytes]:
        public, secret = ml_dsa.keygen()
        return bytes(public), bytes(secret)

    def sign(self, secret: bytes, message: bytes) -> bytes:
        return bytes(ml_dsa.sign(secret, message))

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        try:
            ml_dsa.verify(public, message, signature)
        except (InvalidSignatureError, ValueError):
            return False
        return True

    def kem_keypair(self) -> tuple[bytes, bytes]:
        public, secret = ml_kem.keygen()
        return bytes(public), bytes(secret)

    def kem_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        try:
            ciphertext, shared = ml_kem.encaps(public)
        except (ValueError, TypeError) as exc:
            raise CryptoError(f"ML-KEM-768 encapsulation refused: {exc}") from None
        return bytes(ciphertext), bytes(shared)

    def kem_decapsulate(self, secret: bytes, ciphertext: bytes) -> bytes:
        try:
            return bytes(ml_kem.decaps(secret, ciphertext))
        except (ValueError, TypeError) as exc:
            raise CryptoError(f"ML-KEM-768 decapsulation refused: {exc}") from None
