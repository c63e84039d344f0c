"""The keys of one chain as a session holds them (docs/adr/0004): the read key (from the
passcode through the header's Argon2id, checked against the header's key check before anything
is opened for writing), the per-object keys it wraps and unwraps, the signing key sealed in the
chain's key object, the local seal key and the checkpoint key (both derived from the read key).

A chain without keys (``--no-auth``) has a ``ChainKeys`` too: no read key, nothing to wrap,
seal or sign."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from application.chain_header import ChainHeader, KdfHeader
from application.ports import Crypto, CryptoError, LogError, RedoLog, ScannedRecord
from application.session_errors import ChainIntegrityError, SessionError, WrongPasscode
from domain.chain import ChainIndex
from domain.events import (
    Confidentiality,
    EncryptedPrivateKey,
    EventHeader,
    LocalSeal,
    Meta,
    PublicKey,
    Signature,
)
from domain.hashing import checkpoint_key, key_hash, local_mac, seal_key

#: the object that holds the chain's signing key (its secret sealed under an object key)
CHAIN_KEY_OBJECT = 2
TYPE_CHAIN_KEY = "chain-key"
#: what the header's key check seals under the read key (the chain id as associated data)
KEY_CHECK = b"wasmer-dfs/key-check/v1"


@dataclass(frozen=True, slots=True)
class ObjectKey:
    key: bytes
    conf: Confidentiality


@dataclass(frozen=True, slots=True)
class NewChainKeys:
    """The keys of a new encrypted chain: what its header records (the Argon2id parameters,
    the key check, the root key's hash), the read key and the signing key pair."""

    kdf: KdfHeader
    read_key: bytes
    key_check: bytes
    public: bytes
    secret: bytes
    root_key_hash: bytes


@dataclass(frozen=True, slots=True)
class KeyObject:
    """What the chain's key object holds: the signing key's secret sealed under ``okey``, and
    its metadata (the public key, and which key seals the secret)."""

    okey: ObjectKey
    sealed_secret: bytes
    meta: tuple[Meta, ...]


class ChainKeys:
    """Key handling of one chain: wraps and unwraps object keys (each unwrapped once, then
    remembered), holds the signing key once loaded, and makes local seals and signatures."""

    def __init__(self, header: ChainHeader, crypto: Crypto, read_key: bytes | None) -> None:
        self.crypto = crypto
        self.chain_id = header.chain_id
        self.root_key_hash = header.root_key_hash
        self.read_key = read_key
        self.read_key_hash = key_hash(read_key) if read_key is not None else b""
        #: keys the local seals' MACs are made with (None: a chain without keys)
        self.seal_key = seal_key(read_key) if read_key is not None else None
        self._unwrapped: dict[bytes, bytes] = {}
        #: (public key hash, secret key) once loaded from the key object (or made by ``create``)
        self.signing: tuple[bytes, bytes] | None = None

    # -- the read key --------------------------------------------------------------------------
    @staticmethod
    def new_chain(
        crypto: Crypto, passcode: bytes, chain_id: bytes, kdf: tuple[int, int, int]
    ) -> NewChainKeys:
        """The keys of a new chain: a read key from a fresh salt and Argon2id at cost ``kdf``
        (iterations, memory KiB, lanes), the key check the header carries, and a new ML-DSA
        signing key pair (the chain's root write key)."""
        kdf_hdr = KdfHeader(crypto.random(16), *kdf)
        read_key = crypto.derive_key(passcode, kdf_hdr.params())
        key_check = crypto.seal(read_key, KEY_CHECK, chain_id)
        public, secret = crypto.sign_keypair()
        return NewChainKeys(kdf_hdr, read_key, key_check, public, secret, key_hash(public))

    @staticmethod
    def check_passcode(header: ChainHeader, passcode: bytes | None, crypto: Crypto) -> bytes | None:
        """The read key ``passcode`` gives for the chain of ``header`` (None for a chain without
        keys). Refuses a passcode for an unencrypted chain, none for an encrypted one, Argon2id
        costs out of bounds (``KdfHeader.check``, before deriving anything) and a passcode the
        key check does not confirm (``WrongPasscode``)."""
        if not header.encrypted:
            if passcode is not None:
                raise SessionError(
                    "this chain was created with --no-auth and is not encrypted: mount it with"
                    " --no-auth (no passcode)"
                )
            return None
        if passcode is None:
            raise SessionError("this chain is encrypted: a passcode is needed to mount it")
        if header.kdf is None:
            raise ChainIntegrityError("the chain header has no key-derivation parameters")
        header.kdf.check()
        read_key = crypto.derive_key(passcode, header.kdf.params())
        try:
            if crypto.open(read_key, header.key_check, header.chain_id) != KEY_CHECK:
                raise CryptoError("key check mismatch")
        except CryptoError:
            raise WrongPasscode(
                "wrong passcode: it does not open this chain (nothing was changed)"
            ) from None
        return read_key

    @property
    def encrypted(self) -> bool:
        return self.read_key is not None

    # -- object keys ---------------------------------------------------------------------------
    def new_object_key(self) -> ObjectKey:
        """A random object key, wrapped by the read key for the events' ``Confidentiality``."""
        if self.read_key is None:
            raise SessionError("no read key: the chain is not encrypted")
        key = self.crypto.random(32)
        wrapped = self.crypto.seal(self.read_key, key, self.chain_id)
        self._unwrapped[wrapped] = key
        return ObjectKey(key, Confidentiality(self.read_key_hash, wrapped))

    def unwrap(self, conf: Confidentiality) -> bytes:
        """The object key ``conf`` wraps; ``ChainIntegrityError`` when it is not ours or does
        not unwrap."""
        key = self._unwrapped.get(conf.wrapped_key)
        if key is None:
            if self.read_key is None or conf.key_hash != self.read_key_hash:
                raise ChainIntegrityError("data is encrypted for a key this session lacks")
            try:
                key = self.crypto.open(self.read_key, conf.wrapped_key, self.chain_id)
            except CryptoError:
                raise ChainIntegrityError("an object key does not unwrap") from None
            self._unwrapped[conf.wrapped_key] = key
        return key

    def object_key(self, conf: Confidentiality) -> ObjectKey:
        return ObjectKey(self.unwrap(conf), conf)

    # -- the signing key -----------------------------------------------------------------------
    @property
    def can_sign(self) -> bool:
        return self.signing is not None

    def new_key_object(self, new: NewChainKeys) -> KeyObject:
        """Take ``new``'s signing key, and the content of the key object that keeps it: its
        secret sealed under a new object key (the chain id as associated data)."""
        self.signing = (new.root_key_hash, new.secret)
        okey = self.new_object_key()
        sealed = self.crypto.seal(okey.key, new.secret, self.chain_id)
        sealed_by = EncryptedPrivateKey(new.root_key_hash, self.read_key_hash, b"")
        return KeyObject(okey, sealed, (PublicKey(new.public), sealed_by))

    def load_signing_key(
        self, index: ChainIndex, log: RedoLog, parse: Callable[[ScannedRecord], EventHeader]
    ) -> None:
        """Unseal the signing key from the chain's key object (the replayed ``index`` says
        where it is in ``log``; ``parse`` reads its event)."""
        info = index.objects.get(CHAIN_KEY_OBJECT)
        if info is None or info.type_name != TYPE_CHAIN_KEY or self.root_key_hash is None:
            raise ChainIntegrityError("the chain's signing key is missing from the log")
        try:
            rec = log.read_record(info.position)
        except LogError as exc:
            raise ChainIntegrityError(f"the chain's signing key is unreadable: {exc}") from None
        hdr = parse(rec)
        conf = hdr.find(Confidentiality)
        ref = rec.data
        if hdr.key != CHAIN_KEY_OBJECT or not isinstance(conf, Confidentiality) or ref is None:
            raise ChainIntegrityError("the chain's signing key is not sealed")
        try:
            secret = self.crypto.open(self.unwrap(conf), log.read_data(ref), self.chain_id)
        except CryptoError:
            raise ChainIntegrityError("the chain's signing key does not decrypt") from None
        self.signing = (self.root_key_hash, secret)

    def signature(self, digest: bytes) -> Signature:
        """The root key's ML-DSA signature of ``digest`` (the signing key must be loaded)."""
        if self.signing is None:
            raise SessionError("the chain's signing key is not loaded yet")
        pk_hash, secret = self.signing
        return Signature(pk_hash, digest, self.crypto.sign(secret, digest))

    # -- keys derived from the read key --------------------------------------------------------
    def local_seal(self, tx_head: bytes, digest: bytes) -> LocalSeal:
        """A local seal (HMAC under the seal key) over a transaction's ``digest`` following
        ``tx_head``; only for a chain with keys."""
        assert self.seal_key is not None
        return LocalSeal(local_mac(self.seal_key, tx_head, digest))

    @property
    def checkpoint_key(self) -> bytes | None:
        """The key that seals this chain's checkpoints (None for a chain without keys)."""
        return checkpoint_key(self.read_key) if self.read_key is not None else None
