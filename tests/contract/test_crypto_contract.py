"""The ``Crypto`` port's contract (application/ports/crypto.py), run against the real adapter
``PqCrypto``, its twin ``FastCrypto`` (adapters/memory/crypto.py: the same algorithms, a cheap
Argon2id; docs/adr/0017) and the test double ``DeterministicCrypto`` (tests/fakes.py)."""

from __future__ import annotations

import pytest

from adapters.crypto import PqCrypto
from application.ports import Crypto, CryptoError, KdfParams
from application.ports.crypto import (
    KEM_CIPHERTEXT_BYTES,
    KEM_PUBLIC_KEY_BYTES,
    KEM_SECRET_KEY_BYTES,
    KEM_SHARED_SECRET_BYTES,
)
from tests.fakes import DeterministicCrypto, FastCrypto

#: cheap enough for the real adapter too (the cost only changes the time spent)
PARAMS = KdfParams(salt=b"s" * 16, iterations=1, memory_kib=64, lanes=1)
KEY = bytes(range(32))


@pytest.fixture(params=["pq", "fast", "deterministic"])
def crypto(request: pytest.FixtureRequest) -> Crypto:
    if request.param == "pq":
        return PqCrypto()
    if request.param == "fast":
        return FastCrypto()
    return DeterministicCrypto(seed=7)


class TestCryptoContract:
    @pytest.mark.parametrize("n", [0, 1, 12, 32, 1000])
    def test_random_gives_n_bytes(self, crypto: Crypto, n: int) -> None:
        out = crypto.random(n)
        assert isinstance(out, bytes)
        assert len(out) == n

    def test_random_does_not_repeat(self, crypto: Crypto) -> None:
        assert len({crypto.random(16) for _ in range(50)}) == 50

    def test_derive_key_is_a_function_of_passcode_and_params(self, crypto: Crypto) -> None:
        key = crypto.derive_key(b"passcode", PARAMS)
        assert len(key) == 32
        assert crypto.derive_key(b"passcode", PARAMS) == key
        assert crypto.derive_key(b"passcode", KdfParams(b"t" * 16, 1, 64, 1)) != key
        assert crypto.derive_key(b"passcodf", PARAMS) != key

    @pytest.mark.parametrize("plaintext", [b"", b"x", b"hello world" * 1000])
    def test_seal_then_open_gives_the_plaintext(self, crypto: Crypto, plaintext: bytes) -> None:
        sealed = crypto.seal(KEY, plaintext, b"aad")
        assert crypto.open(KEY, sealed, b"aad") == plaintext
        assert crypto.open(KEY, memoryview(sealed), b"aad") == plaintext

    def test_seal_uses_a_fresh_nonce(self, crypto: Crypto) -> None:
        assert crypto.seal(KEY, b"same", b"") != crypto.seal(KEY, b"same", b"")

    @pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
    def test_an_altered_sealed_message_is_refused(self, crypto: Crypto, where: str) -> None:
        sealed = bytearray(crypto.seal(KEY, b"secret data", b"aad"))
        index = {"nonce": 0, "ciphertext": 14, "tag": len(sealed) - 1}[where]
        sealed[index] ^= 0x01
        with pytest.raises(CryptoError):
            crypto.open(KEY, bytes(sealed), b"aad")

    def test_another_key_or_aad_is_refused(self, crypto: Crypto) -> None:
        sealed = crypto.seal(KEY, b"secret data", b"aad")
        with pytest.raises(CryptoError):
            crypto.open(bytes(32), sealed, b"aad")
        with pytest.raises(CryptoError):
            crypto.open(KEY, sealed, b"other aad")

    @pytest.mark.parametrize("length", [0, 11, 27])
    def test_a_truncated_sealed_message_is_refused(self, crypto: Crypto, length: int) -> None:
        sealed = crypto.seal(KEY, b"", b"")
        with pytest.raises(CryptoError):
            crypto.open(KEY, sealed[:length], b"")

    def test_sign_then_verify(self, crypto: Crypto) -> None:
        public, secret = crypto.sign_keypair()
        signature = crypto.sign(secret, b"message")
        assert crypto.verify(public, b"message", signature) is True

    def test_a_wrong_message_key_or_signature_does_not_verify(self, crypto: Crypto) -> None:
        public, secret = crypto.sign_keypair()
        other_public, _ = crypto.sign_keypair()
        signature = crypto.sign(secret, b"message")
        assert other_public != public
        assert crypto.verify(public, b"messagf", signature) is False
        assert crypto.verify(other_public, b"message", signature) is False
        altered = bytes([signature[0] ^ 1]) + signature[1:]
        assert crypto.verify(public, b"message", altered) is False

    @pytest.mark.parametrize("signature", [b"", b"short", bytes(5000)])
    def test_a_malformed_signature_is_false_not_an_error(
        self, crypto: Crypto, signature: bytes
    ) -> None:
        public, _ = crypto.sign_keypair()
        assert crypto.verify(public, b"message", signature) is False

    def test_a_malformed_public_key_is_false_not_an_error(self, crypto: Crypto) -> None:
        _, secret = crypto.sign_keypair()
        assert crypto.verify(b"not a key", b"message", crypto.sign(secret, b"message")) is False

    def test_kem_keypairs_have_the_promised_sizes_and_differ(self, crypto: Crypto) -> None:
        public, secret = crypto.kem_keypair()
        assert (len(public), len(secret)) == (KEM_PUBLIC_KEY_BYTES, KEM_SECRET_KEY_BYTES)
        assert crypto.kem_keypair()[0] != public

    def test_kem_decapsulate_recovers_the_encapsulated_secret(self, crypto: Crypto) -> None:
        public, secret = crypto.kem_keypair()
        ciphertext, shared = crypto.kem_encapsulate(public)
        assert len(ciphertext) == KEM_CIPHERTEXT_BYTES
        assert len(shared) == KEM_SHARED_SECRET_BYTES
        assert crypto.kem_decapsulate(secret, ciphertext) == shared
        again, shared_again = crypto.kem_encapsulate(public)
        assert (again, shared_again) != (ciphertext, shared)

    def test_kem_another_key_or_altered_ciphertext_gives_another_secret(
        self, crypto: Crypto
    ) -> None:
        public, secret = crypto.kem_keypair()
        _, other_secret = crypto.kem_keypair()
        ciphertext, shared = crypto.kem_encapsulate(public)
        assert crypto.kem_decapsulate(other_secret, ciphertext) != shared
        altered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
        assert crypto.kem_decapsulate(secret, altered) != shared

    @pytest.mark.parametrize("public", [b"", b"short", bytes(KEM_PUBLIC_KEY_BYTES + 1)])
    def test_kem_a_malformed_public_key_is_a_crypto_error(
        self, crypto: Crypto, public: bytes
    ) -> None:
        with pytest.raises(CryptoError):
            crypto.kem_encapsulate(public)

    def test_kem_a_malformed_secret_or_ciphertext_is_a_crypto_error(self, crypto: Crypto) -> None:
        public, secret = crypto.kem_keypair()
        ciphertext, _ = crypto.kem_encapsulate(public)
        with pytest.raises(CryptoError):
            crypto.kem_decapsulate(secret, ciphertext[:-1])
        with pytest.raises(CryptoError):
            crypto.kem_decapsulate(secret[:100], ciphertext)
