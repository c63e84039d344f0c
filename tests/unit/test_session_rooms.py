"""The rooms ChainSession delegates to (issue 13): key handling (application/keys.py) and
payload sealing (application/payloads.py). The stored bytes are pinned: AES-256-GCM under the
object key with the chain id and the hash of the event's metadata as associated data."""

from __future__ import annotations

from hashlib import sha256

import pytest

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application.keys import ChainKeys
from application.payloads import PayloadMapper
from application.ports import CryptoError
from application.session import ChainIntegrityError, ChainSession, Formats, SessionError
from domain.events import Confidentiality
from tests.fakes import FAST_KDF, FastCrypto

PW = b"pw"
#: the hash of metadata b"meta" (SHA-256, as the chain hashes an event's metadata)
META_HASH = sha256(b"meta").digest()


def make(passcode: bytes | None = PW) -> ChainSession:
    return ChainSession.create(
        MemoryRedoLogFactory(), "rooms", passcode, FastCrypto(), FakeClock(), Formats(), 4096,
        kdf=FAST_KDF,
    )  # fmt: skip


def test_stored_data_is_aes_gcm_with_chain_id_and_meta_hash_as_aad() -> None:
    session = make()
    okey = session.new_object_key()
    ev = session.write(9, type_name="blob", payload=b"secret words", okey=okey)
    session.commit()
    assert ev.locator is not None
    raw = session.log.read_data(ev.locator)
    assert b"secret words" not in raw
    aad = session.header.chain_id + sha256(ev.header.meta_bytes).digest()
    assert session.crypto.open(okey.key, raw, aad) == b"secret words"
    with pytest.raises(CryptoError):  # another event's (or chain's) AAD does not open it
        session.crypto.open(okey.key, raw, session.header.chain_id + sha256(b"other").digest())
    assert session.read_payload(ev.header, ev.locator) == b"secret words"


def test_the_mapper_refuses_altered_misplaced_and_unencrypted_data() -> None:
    crypto = FastCrypto()
    keys = ChainKeys(make().header, crypto, crypto.random(32))
    mapper = PayloadMapper(crypto, keys.chain_id, encrypted=True)
    okey = keys.new_object_key()
    stored = mapper.to_stored(b"page", okey, b"meta")
    assert mapper.from_stored(stored, 7, META_HASH, okey) == b"page"
    altered = stored[:-1] + bytes((stored[-1] ^ 1,))
    with pytest.raises(ChainIntegrityError, match="offset 7 fails authentication"):
        mapper.from_stored(altered, 7, META_HASH, okey)
    with pytest.raises(ChainIntegrityError, match="fails authentication"):
        mapper.from_stored(stored, 7, sha256(b"other meta").digest(), okey)
    with pytest.raises(ChainIntegrityError, match="unencrypted data in an encrypted chain"):
        mapper.from_stored(b"page", 7, META_HASH, None)
    plain = PayloadMapper(crypto, keys.chain_id, encrypted=False)
    assert plain.to_stored(b"page", None, b"meta") == b"page"
    assert plain.from_stored(b"page", 7, META_HASH, None) == b"page"


def test_object_keys_unwrap_only_under_the_read_key_that_wrapped_them() -> None:
    session = make()
    crypto = FastCrypto()
    okey = session.keys.new_object_key()
    reopened = ChainKeys(session.header, crypto, session.keys.read_key)
    assert reopened.unwrap(okey.conf) == okey.key
    stranger = ChainKeys(session.header, crypto, crypto.random(32))
    with pytest.raises(ChainIntegrityError, match="a key this session lacks"):
        stranger.unwrap(okey.conf)
    forged = Confidentiality(session.keys.read_key_hash, b"\0" * len(okey.conf.wrapped_key))
    with pytest.raises(ChainIntegrityError, match="does not unwrap"):
        reopened.unwrap(forged)


def test_a_chain_without_keys_has_nothing_to_wrap_or_sign() -> None:
    session = make(None)
    assert not session.keys.encrypted and not session.can_sign
    assert session.checkpoint_key is None and session.keys.seal_key is None
    with pytest.raises(SessionError, match="not encrypted"):
        session.new_object_key()
    with pytest.raises(SessionError, match="not loaded"):
        session.keys.signature(b"digest")


def test_a_compaction_twin_shares_the_keys() -> None:
    session = make()
    twin = session.shadow(MemoryRedoLogFactory().create("twin", session.header.encode()))
    assert twin.keys is session.keys and twin.can_sign
    assert twin.checkpoint_key == session.checkpoint_key is not None
