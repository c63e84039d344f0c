"""The token (issue 14, docs/adr/0018): a user's session of keys - the normal key set, the sudo
key set once an authenticator code was given, the role keys gathered from groups - with an
expiry and the issuer, in a versioned, bounded text form.

Text form: ``wdfs-token.`` followed by unpadded base64url of a msgpack envelope
``[version, kind, body, check, kdf]``: kind "clear" carries the msgpack ``Token`` and its
SHA-256 (so any altered bit is refused, not read as other keys); kind "sealed" carries the token
sealed with AES-256-GCM under a key Argon2id derives from a passphrase with ``kdf`` (the sealing
is application/auth.py's). Every way a text can be wrong - not a token, truncated, a flipped bit,
an unknown version, too large - is a ``TokenError`` with a message, never another exception."""

from __future__ import annotations

import base64
import binascii
import re
from hashlib import sha256
from typing import Annotated, Literal

import msgspec

from domain.auth.errors import TokenError
from domain.auth.records import Email, KeySet, PasswordKdf, RoleKeys

TOKEN_VERSION = 1
ENVELOPE_VERSION = 1
PREFIX = "wdfs-token."
MAX_ROLES = 256
#: a token with the sudo keys and MAX_ROLES role keys stays under this
MAX_BODY = 4 * 1024 * 1024
MAX_TEXT = len(PREFIX) + (MAX_BODY * 4) // 3 + 1024
#: what a sealed token's AES-GCM binds (another use of the same passphrase key never opens it)
SEALED_AAD = b"wasmer-dfs/token/v1"

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class Token(msgspec.Struct, frozen=True):
    version: int
    email: Email
    #: the auth service that issued it (its URL)
    issuer: Annotated[str, msgspec.Meta(max_length=1024)]
    issued_at: int
    expires_at: int
    normal: KeySet
    sudo: KeySet | None = None
    roles: Annotated[tuple[RoleKeys, ...], msgspec.Meta(max_length=MAX_ROLES)] = ()

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def role_keys(self, group: str) -> list[RoleKeys]:
        """The role keys of ``group`` this token holds, newest epoch first."""
        return sorted(
            (r for r in self.roles if r.group == group), key=lambda r: r.epoch, reverse=True
        )


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    version: int
    kind: Literal["clear", "sealed"]
    body: Annotated[bytes, msgspec.Meta(max_length=MAX_BODY)]
    check: Annotated[bytes, msgspec.Meta(max_length=32)]
    kdf: PasswordKdf | None


class ClearToken(msgspec.Struct, frozen=True):
    token: Token


class SealedToken(msgspec.Struct, frozen=True):
    """A token sealed under a passphrase: open it with the key Argon2id derives with ``kdf``."""

    kdf: PasswordKdf
    sealed: bytes


def token_body(token: Token) -> bytes:
    """The msgpack encoding of ``token`` (what a sealed token seals)."""
    return msgspec.msgpack.encode(token)


def read_token_body(body: bytes) -> Token:
    """The token encoded in ``body``; ``TokenError`` for anything else."""
    if len(body) > MAX_BODY:
        raise TokenError(f"the token is {len(body)} bytes, more than {MAX_BODY}: refused")
    try:
        token = msgspec.msgpack.decode(body, type=Token)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TokenError(f"the token is malformed: {exc}") from None
    if token.version != TOKEN_VERSION:
        raise TokenError(
            f"token version {token.version} is not {TOKEN_VERSION}, the one this program reads:"
            " generate a new token with `wasmer-dfs token generate`"
        )
    return token


def _text(envelope: Envelope) -> str:
    raw = msgspec.msgpack.encode(envelope)
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def clear_text(token: Token) -> str:
    """The text form of ``token`` in clear (its keys readable by whoever reads the text)."""
    body = token_body(token)
    return _text(Envelope(ENVELOPE_VERSION, "clear", body, sha256(body).digest(), None))


def sealed_text(kdf: PasswordKdf, sealed: bytes) -> str:
    """The text form of a token sealed (by the application) under a passphrase key."""
    return _text(Envelope(ENVELOPE_VERSION, "sealed", sealed, b"", kdf))


def read_text(text: str | bytes) -> ClearToken | SealedToken:
    """The token in ``text`` (surrounding whitespace ignored), or the sealed token to open."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise TokenError("this is not a wasmer-dfs token (not ASCII text)") from None
    text = text.strip()
    if len(text) > MAX_TEXT:
        raise TokenError(f"the token is {len(text)} characters, more than {MAX_TEXT}: refused")
    if not text.startswith(PREFIX):
        raise TokenError(f"this is not a wasmer-dfs token (it does not start with {PREFIX!r})")
    payload = text[len(PREFIX) :]
    if not _BASE64URL.fullmatch(payload) or len(payload) % 4 == 1:
        raise TokenError("the token is damaged (not base64url text)")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("the token is damaged (not base64url text)") from None
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != payload:
        raise TokenError("the token is damaged (altered base64 text)")
    try:
        envelope = msgspec.msgpack.decode(raw, type=Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TokenError(f"the token is damaged or truncated: {exc}") from None
    if envelope.version != ENVELOPE_VERSION:
        raise TokenError(
            f"token format {envelope.version} is not {ENVELOPE_VERSION}, the one this program"
            " reads: generate a new token"
        )
    if envelope.kind == "sealed":
        if envelope.kdf is None or envelope.check:
            raise TokenError("the sealed token is damaged (no key derivation parameters)")
        return SealedToken(envelope.kdf, envelope.body)
    if envelope.kdf is not None or sha256(envelope.body).digest() != envelope.check:
        raise TokenError("the token is damaged (its checksum does not match)")
    return ClearToken(read_token_body(envelope.body))
