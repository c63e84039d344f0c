"""The messages of the auth service at ``ws://HOST:PORT/auth`` (issue 14, docs/adr/0018), and the
events of its log. msgspec structs, tagged, every field bounded: a hostile frame is refused at
decoding (``WireError``-like ``AuthWireError``), never read as something else.

A connection starts with the server's ``Challenge`` (a fresh nonce); every reply carries the
nonce the next signed request must sign. A request is ``Plain`` (the body alone: creating an
account, asking for a password's parameters or the sealed record, public details) or ``Signed``:
the body signed, with the server's current nonce, by the user's normal key (who), optionally by
the user's sudo key (group create) and by a role key of a group (authority in a group's current
epoch). What is signed: ``signed_bytes(purpose, nonce, body)``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from domain.auth.errors import AuthError
from domain.auth.lockout import LockoutState
from domain.auth.records import (
    Email,
    Epoch,
    Group,
    GroupName,
    PasswordKdf,
    PublicKeys,
    UserRecord,
)
from domain.auth.roles import Role

#: the largest frame either side accepts (a group of 1024 members with its epochs stays under)
MAX_AUTH_FRAME = 16 * 1024 * 1024
NONCE_BYTES = 32
Nonce = Annotated[bytes, msgspec.Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
Hash32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Reason = Annotated[str, msgspec.Meta(max_length=2048)]
Code = Annotated[str, msgspec.Meta(max_length=64)]
Signature = Annotated[bytes, msgspec.Meta(max_length=8192)]
Body = Annotated[bytes, msgspec.Meta(max_length=MAX_AUTH_FRAME)]

SIGN_NORMAL = b"normal"
SIGN_SUDO = b"sudo"
SIGN_ROLE = b"role"


class AuthWireError(AuthError):
    """A frame that is not a message of this protocol (the connection ends)."""


def signed_bytes(purpose: bytes, nonce: bytes, body: bytes) -> bytes:
    """What a signature of a request covers: its purpose (normal, sudo or role key), the
    server's nonce (no replay on another connection or later) and the request's body."""
    return b"wasmer-dfs/auth-request/v1\0" + purpose + b"\0" + nonce + body


# --- operations (the body of a request) ---------------------------------------------------------
class CreateUser(msgspec.Struct, frozen=True, tag="create-user"):
    """A new account as the client made it (the server never sees the password): the record,
    the authenticator secret and the sudo share the server keeps, the SHA-256 of the login
    proof and of the recovery code."""

    record: UserRecord
    totp_secret: Annotated[bytes, msgspec.Meta(min_length=16, max_length=64)]
    sudo_share: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    login_verifier: Hash32
    recovery_hash: Hash32


class GetKdf(msgspec.Struct, frozen=True, tag="get-kdf"):
    """The Argon2id parameters of ``email``'s password (to derive the login proof)."""

    email: Email


class Login(msgspec.Struct, frozen=True, tag="login"):
    """The sealed record of ``email``, for the proof derived from the password."""

    email: Email
    proof: Hash32


class Sudo(msgspec.Struct, frozen=True, tag="sudo"):
    """The sudo share, for an authenticator code (or the one-time recovery code); signed by
    the user's normal key."""

    code: Code = ""
    recovery: Code = ""


class UserDetails(msgspec.Struct, frozen=True, tag="user-details"):
    email: Email


class CreateGroup(msgspec.Struct, frozen=True, tag="create-group"):
    """A new group made by the client (epoch 0 of each role sealed for the owner); signed by
    the owner's normal and sudo keys."""

    group: Group


class GetGroup(msgspec.Struct, frozen=True, tag="get-group"):
    """The group: whole to a signer holding a current role key of it, else only the epochs'
    blobs sealed for the signer (what ``token gather`` opens)."""

    name: GroupName


class UpdateGroup(msgspec.Struct, frozen=True, tag="update-group"):
    """A member added or removed: the new group record as the client sealed it; signed by the
    actor's normal key and by a current owner or delegate role key of the group."""

    group: Group
    added: Email | None = None
    removed: Email | None = None


Operation = CreateUser | GetKdf | Login | Sudo | UserDetails | CreateGroup | GetGroup | UpdateGroup


class RoleSignature(msgspec.Struct, frozen=True):
    role: Role
    epoch: Epoch
    signature: Signature


class Plain(msgspec.Struct, frozen=True, tag="plain"):
    body: Body


class Signed(msgspec.Struct, frozen=True, tag="signed"):
    signer: Email
    body: Body
    normal: Signature
    sudo: Signature | None = None
    role: RoleSignature | None = None


Request = Plain | Signed


# --- replies ---------------------------------------------------------------------------------
class Challenge(msgspec.Struct, frozen=True, tag="challenge"):
    nonce: Nonce


class Refusal(msgspec.Struct, frozen=True, tag="refusal"):
    nonce: Nonce
    reason: Reason
    #: a lock: unix time until which codes are refused
    until: float | None = None


class Done(msgspec.Struct, frozen=True, tag="done"):
    nonce: Nonce


class KdfReply(msgspec.Struct, frozen=True, tag="kdf"):
    nonce: Nonce
    kdf: PasswordKdf


class RecordReply(msgspec.Struct, frozen=True, tag="record"):
    nonce: Nonce
    record: UserRecord


class ShareReply(msgspec.Struct, frozen=True, tag="share"):
    nonce: Nonce
    share: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class UserInfo(msgspec.Struct, frozen=True, tag="user-info"):
    """What one may see of an account: anyone its public keys; the user themself also their
    groups and whether sudo is locked."""

    nonce: Nonce
    email: Email
    normal: PublicKeys
    sudo: PublicKeys
    groups: Annotated[tuple[GroupName, ...], msgspec.Meta(max_length=4096)] | None = None
    failures: int | None = None
    locked_until: float | None = None


class GroupReply(msgspec.Struct, frozen=True, tag="group"):
    nonce: Nonce
    group: Group
    #: False: members and other members' blobs left out (the signer holds no current role key)
    whole: bool


Reply = Challenge | Refusal | Done | KdfReply | RecordReply | ShareReply | UserInfo | GroupReply


# --- events of the server's log ----------------------------------------------------------------
class UserCreated(msgspec.Struct, frozen=True, tag="user"):
    account: CreateUser


class CodeTried(msgspec.Struct, frozen=True, tag="code"):
    """The lock-out state of an account after a code (right, wrong or during a wait)."""

    email: Email
    state: LockoutState
    #: the recovery code was used (it is good once)
    recovery_used: bool = False


class GroupSaved(msgspec.Struct, frozen=True, tag="group"):
    group: Group


Event = UserCreated | CodeTried | GroupSaved

_request = msgspec.msgpack.Decoder(Request)
_reply = msgspec.msgpack.Decoder(Reply)
_operation = msgspec.msgpack.Decoder(Operation)
_event = msgspec.msgpack.Decoder(Event)


def encode(msg: Request | Reply | Operation | Event) -> bytes:
    return msgspec.msgpack.encode(msg)


def _decode(decoder: msgspec.msgpack.Decoder[Any], data: bytes, what: str) -> Any:
    if len(data) > MAX_AUTH_FRAME:
        raise AuthWireError(f"{what} of {len(data)} bytes, more than {MAX_AUTH_FRAME}: refused")
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AuthWireError(f"not a valid {what}: {exc}") from None


def decode_request(data: bytes) -> Request:
    result: Request = _decode(_request, data, "auth request")
    return result


def decode_reply(data: bytes) -> Reply:
    result: Reply = _decode(_reply, data, "auth reply")
    return result


def decode_operation(data: bytes) -> Operation:
    result: Operation = _decode(_operation, data, "auth operation")
    return result


def decode_event(data: bytes) -> Event:
    result: Event = _decode(_event, data, "auth event")
    return result
