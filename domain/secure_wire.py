"""Wire encryption (``--wire-encryption 128 | 192 | 256``): the handshake messages, the key
schedule and the per-direction frame counters. Pure: the KEM, AES-GCM and randomness are the
adapters' (adapters/secure_channel.py); everything here takes keys and bytes as arguments. See
docs/adr/0013-wire-encryption.md.

Handshake (right after the websocket opens, before ``Hello``; each message one binary frame):

    C -> S  SecureOffer   level, client nonce, client's ephemeral ML-KEM public key
    S -> C  SecureAccept  level, server nonce, server's long-lived ML-KEM public key (pinned by
                          the client), encapsulation to the client's ephemeral key
            (or Fatal: this server refuses the level, or speaks no wire encryption)
    C -> S  SecureFinish  encapsulation to the server's long-lived key

Both ends derive, with HKDF-SHA-256 from the two shared secrets and the hash of the three frames,
one AES-256-GCM key per direction. Every later frame of the connection is sealed; its nonce is
the direction's frame counter (never sent: a replayed, reordered or dropped frame fails to open),
and the key is ratcheted forward (HKDF) every ``REKEY_FRAMES`` frames or ``REKEY_BYTES`` bytes.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from hashlib import sha256
from typing import Annotated, Any

import msgspec

from domain.errors import DomainError
from domain.wire import Fatal, WireError

#: security level (bits) -> the ML-KEM parameter set, its public key and ciphertext sizes
LEVELS: dict[int, tuple[str, int, int]] = {
    128: ("ML-KEM-512", 800, 768),
    192: ("ML-KEM-768", 1184, 1088),
    256: ("ML-KEM-1024", 1568, 1568),
}
NONCE_SIZE = 32
KEY_SIZE = 32
#: AES-GCM's tag: a sealed frame is this much longer than the plain one
TAG_SIZE = 16
#: the key of a direction is replaced after this many frames or bytes (whichever comes first)
REKEY_FRAMES = 1 << 20
REKEY_BYTES = 1 << 34
#: the frame counter is the 64-bit nonce; it never wraps
MAX_FRAMES = (1 << 64) - 1

_LABEL = b"wasmer-dfs wire encryption v1"

Level = Annotated[int, msgspec.Meta(ge=0, le=1024)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=NONCE_SIZE, max_length=NONCE_SIZE)]
KemBytes = Annotated[bytes, msgspec.Meta(min_length=1, max_length=4096)]


class HandshakeError(WireError):
    """A handshake frame that is not what this step of the handshake expects."""


# --- messages ------------------------------------------------------------------------------------
class SecureOffer(msgspec.Struct, frozen=True, tag="secure-offer", tag_field="t"):
    """The client's first frame when it asks for wire encryption (instead of ``Hello``)."""

    level: Level
    nonce: Nonce
    #: the client's ephemeral ML-KEM public key of that level (forward secrecy)
    ephemeral: KemBytes


class SecureAccept(msgspec.Struct, frozen=True, tag="secure-accept", tag_field="t"):
    level: Level
    nonce: Nonce
    #: the server's long-lived ML-KEM public key of that level (the one clients pin)
    server_key: KemBytes
    #: encapsulation to the client's ephemeral key
    ciphertext: KemBytes


class SecureFinish(msgspec.Struct, frozen=True, tag="secure-finish", tag_field="t"):
    #: encapsulation to the server's long-lived key (only its holder can open it)
    ciphertext: KemBytes


_encoder = msgspec.msgpack.Encoder()
_accept_decoder = msgspec.msgpack.Decoder(SecureAccept | Fatal)
_finish_decoder = msgspec.msgpack.Decoder(SecureFinish)
_offer_decoder = msgspec.msgpack.Decoder(SecureOffer)


class _Tag(msgspec.Struct):
    t: str = ""


_tag_decoder = msgspec.msgpack.Decoder(_Tag)


def encode(msg: SecureOffer | SecureAccept | SecureFinish) -> bytes:
    return _encoder.encode(msg)


def _decode(frame: Any, decoder: msgspec.msgpack.Decoder[Any], what: str) -> Any:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise HandshakeError(f"{what}: a handshake frame must be binary")
    try:
        return decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise HandshakeError(f"{what}: {exc}") from None
    except RecursionError:
        raise HandshakeError(f"{what}: nested too deeply") from None


def decode_offer(frame: Any) -> SecureOffer | None:
    """The client's ``SecureOffer`` when ``frame`` is one (None: another message, e.g. a plain
    ``Hello``, left to the protocol's decoder); ``HandshakeError`` for a malformed offer."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        return None
    try:
        tag = _tag_decoder.decode(frame).t
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError, RecursionError):
        return None
    if tag != "secure-offer":
        return None
    msg: SecureOffer = _decode(frame, _offer_decoder, "the client's wire encryption offer")
    check_offer(msg)
    return msg


def check_level(level: int) -> None:
    if level not in LEVELS:
        raise HandshakeError(f"unknown wire encryption level {level} (128, 192 or 256)")


def decode_accept(frame: Any, offered: int) -> SecureAccept | Fatal:
    """The server's answer to an offer of level ``offered``: its keys (checked against the
    level's sizes) or the reason it refused."""
    msg = _decode(frame, _accept_decoder, "the server's answer to the wire encryption offer")
    if isinstance(msg, SecureAccept):
        if msg.level != offered:
            raise HandshakeError(
                f"the server answered wire encryption {msg.level} to an offer of {offered}"
            )
        _, pk_size, ct_size = LEVELS[offered]
        if len(msg.server_key) != pk_size or len(msg.ciphertext) != ct_size:
            raise HandshakeError(
                f"the server's {LEVELS[offered][0]} key or ciphertext is malformed"
            )
    return msg  # type: ignore[no-any-return]


def decode_finish(frame: Any, level: int) -> SecureFinish:
    msg: SecureFinish = _decode(frame, _finish_decoder, "the client's wire encryption finish")
    if len(msg.ciphertext) != LEVELS[level][2]:
        raise HandshakeError(f"the client's {LEVELS[level][0]} ciphertext is malformed")
    return msg


def check_offer(msg: SecureOffer) -> None:
    check_level(msg.level)
    if len(msg.ephemeral) != LEVELS[msg.level][1]:
        raise HandshakeError(f"the client's ephemeral {LEVELS[msg.level][0]} key is malformed")


# --- key schedule --------------------------------------------------------------------------------
def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869)."""
    return hmac.digest(salt or bytes(32), ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-Expand length out of range")
    out, block, i = b"", b"", 0
    while len(out) < length:
        i += 1
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        out += block
    return out[:length]


def transcript(*frames: bytes) -> bytes:
    """The hash of the handshake's frames as sent (each length-prefixed): the keys depend on
    every byte of them, so a frame altered on the way gives the two ends different keys."""
    th = sha256(_LABEL)
    for frame in frames:
        th.update(len(frame).to_bytes(4, "big"))
        th.update(frame)
    return th.digest()


@dataclass(frozen=True, slots=True)
class SessionKeys:
    client_to_server: bytes
    server_to_client: bytes


def session_keys(ephemeral_secret: bytes, static_secret: bytes, th: bytes) -> SessionKeys:
    """One AES-256 key per direction from both KEM shared secrets and the transcript hash."""
    prk = hkdf_extract(th, ephemeral_secret + static_secret)
    return SessionKeys(
        hkdf_expand(prk, _LABEL + b" client->server"),
        hkdf_expand(prk, _LABEL + b" server->client"),
    )


def rekey(key: bytes, epoch: int) -> bytes:
    """The key of ``epoch`` from the key of the epoch before (a one-way ratchet)."""
    return hkdf_expand(key, _LABEL + b" rekey " + epoch.to_bytes(8, "big"))


class Direction:
    """The state of one direction of a connection: its key and frame counter. ``next(length)``
    gives the key, the 12-byte AES-GCM nonce and the associated data of the next frame of
    ``length`` plaintext bytes, and advances. The nonce is the 64-bit counter, which counts every
    frame of the connection in this direction and never repeats; the associated data binds the
    direction, the key's epoch and the counter again. The key is ratcheted forward after
    ``rekey_frames`` frames or ``rekey_bytes`` bytes under it (both ends count the same)."""

    __slots__ = ("_bytes", "_frames", "_rb", "_rf", "counter", "epoch", "key", "label")

    def __init__(
        self,
        key: bytes,
        label: bytes,
        *,
        rekey_frames: int = REKEY_FRAMES,
        rekey_bytes: int = REKEY_BYTES,
    ) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("a direction key is 32 bytes")
        if rekey_frames < 1 or rekey_bytes < 1:
            raise ValueError("rekey limits must be positive")
        self.key = key
        self.label = label
        self.counter = 0
        self.epoch = 0
        self._frames = 0
        self._bytes = 0
        self._rf = rekey_frames
        self._rb = rekey_bytes

    def next(self, length: int) -> tuple[bytes, bytes, bytes]:
        if self.counter >= MAX_FRAMES:
            raise WireError("wire encryption: the frame counter is exhausted; reconnect")
        if self._frames >= self._rf or (self._frames and self._bytes + length > self._rb):
            self.epoch += 1
            self.key = rekey(self.key, self.epoch)
            self._frames = self._bytes = 0
        counter = self.counter.to_bytes(8, "big")
        nonce = b"\0\0\0\0" + counter
        aad = self.label + self.epoch.to_bytes(8, "big") + counter
        self.counter += 1
        self._frames += 1
        self._bytes += length
        return self.key, nonce, aad


def directions(
    keys: SessionKeys,
    *,
    client: bool,
    rekey_frames: int = REKEY_FRAMES,
    rekey_bytes: int = REKEY_BYTES,
) -> tuple[Direction, Direction]:
    """(sending, receiving) of one end."""
    c2s = Direction(
        keys.client_to_server, b"c2s", rekey_frames=rekey_frames, rekey_bytes=rekey_bytes
    )
    s2c = Direction(
        keys.server_to_client, b"s2c", rekey_frames=rekey_frames, rekey_bytes=rekey_bytes
    )
    return (c2s, s2c) if client else (s2c, c2s)


# --- known servers -------------------------------------------------------------------------------
def fingerprint(public_key: bytes) -> str:
    """What the known-servers file holds of a server key: base64 of its SHA-256."""
    return base64.b64encode(sha256(public_key).digest()).decode()


class KnownServerError(DomainError):
    """The known-servers file refuses this server (a changed key) or cannot be read."""


@dataclass(frozen=True, slots=True)
class KnownEntry:
    name: str
    level: int
    fingerprint: str
    line: int


def parse_known_servers(text: str, path: str) -> list[KnownEntry]:
    """The entries of a known-servers file: ``host:port level fingerprint`` per line; blank lines
    and ``#`` comments are skipped. A malformed line is an error naming it (it is never skipped:
    a pin that silently stopped applying would accept any key)."""
    entries = []
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        ok = len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in LEVELS
        if ok:
            try:
                ok = len(base64.b64decode(parts[2], validate=True)) == 32
            except ValueError:
                ok = False
        if not ok:
            raise KnownServerError(
                f"{path} line {no} is not 'HOST:PORT LEVEL BASE64-SHA256': {stripped[:200]!r};"
                " correct or delete that line"
            )
        entries.append(KnownEntry(parts[0], int(parts[1]), parts[2], no))
    return entries


def check_known(
    entries: list[KnownEntry], name: str, level: int, public_key: bytes, path: str
) -> bool:
    """Whether the server ``name`` presenting ``public_key`` at ``level`` is pinned already
    (True) or new (False: the caller pins it); ``KnownServerError`` when another key is pinned."""
    fp = fingerprint(public_key)
    for entry in entries:
        if entry.name == name and entry.level == level:
            if hmac.compare_digest(entry.fingerprint, fp):
                return True
            raise KnownServerError(
                f"the chain server {name} presented a different wire encryption key"
                f" ({LEVELS[level][0]}, SHA-256 {fp}) than the one pinned in {path} line"
                f" {entry.line} ({entry.fingerprint}). Someone may be intercepting the connection;"
                " or the server's key was replaced (its data directory's wire-keys). If you know"
                f" it was replaced, delete line {entry.line} of {path} and connect again."
            )
    return False


def known_line(name: str, level: int, public_key: bytes) -> str:
    return f"{name} {level} {fingerprint(public_key)}\n"
