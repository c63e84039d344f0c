"""What the auth service keeps and what a token carries (docs/adr/0018).

The server's records (``UserRecord``, ``Group``, ``RoleEpoch``) hold emails, public keys and
sealed blobs only: a private key or a role key appears in clear only in ``KeySet`` and
``RoleKeys``, which live in a client's memory and in its token. Every byte and text field is
bounded, so a hostile record or token is refused at decoding instead of exhausting memory."""

from __future__ import annotations

from typing import Annotated

import msgspec

from domain.auth.errors import AuthError
from domain.auth.roles import Role
from domain.kdf import argon2id_cost_problem

#: larger than any ML-DSA-65 (4,032-byte secret) or ML-KEM-768 (2,400-byte secret) key
KEY_MAX = 8192
#: a sealed key set: two secret keys, an AES key, msgpack framing and the GCM overhead
SEALED_MAX = 4 * KEY_MAX
MAX_MEMBERS = 1024
MAX_EPOCHS = 4096

Key = Annotated[bytes, msgspec.Meta(max_length=KEY_MAX)]
Sealed = Annotated[bytes, msgspec.Meta(max_length=SEALED_MAX)]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]
GroupName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Epoch = Annotated[int, msgspec.Meta(ge=0, le=2**32)]


class PasswordKdf(msgspec.Struct, frozen=True):
    """Argon2id parameters of a user's password (salted, bounded costs)."""

    salt: Annotated[bytes, msgspec.Meta(max_length=64)]
    iterations: int
    memory_kib: int
    lanes: int

    def check(self) -> None:
        """``AuthError`` when a cost or the salt lies outside the chain header's bounds
        (domain/kdf.py; checked before any key is derived)."""
        problem = argon2id_cost_problem(self.salt, self.iterations, self.memory_kib, self.lanes)
        if problem is not None:
            raise AuthError(f"the account asks for {problem} (a damaged or hostile record)")


class PublicKeys(msgspec.Struct, frozen=True):
    """The public half of a key set: the ML-DSA-65 verifying key and the ML-KEM-768
    encapsulation key."""

    sign: Key
    kem: Key


class KeySet(msgspec.Struct, frozen=True):
    """A key set in clear: an ML-DSA-65 signing pair, an ML-KEM-768 pair and an AES-256 key.
    Only in a client's memory and its token."""

    sign_public: Key
    sign_secret: Key
    kem_public: Key
    kem_secret: Key
    aes: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]

    def public(self) -> PublicKeys:
        return PublicKeys(self.sign_public, self.kem_public)


class SealedKeySet(msgspec.Struct, frozen=True):
    """A key set as the server keeps it: the public keys in clear, the private parts sealed
    (AES-256-GCM) under a key the server never has."""

    public: PublicKeys
    sealed: Sealed


class UserRecord(msgspec.Struct, frozen=True):
    """A user as the server sees it: the email, the password's Argon2id parameters and the two
    sealed key sets (normal; sudo, whose sealing key also needs the server's sudo share, given
    out only for a valid authenticator code)."""

    email: Email
    kdf: PasswordKdf
    normal: SealedKeySet
    sudo: SealedKeySet


class SealedForMember(msgspec.Struct, frozen=True):
    """A role's private keys sealed for one member: an ML-KEM-768 ciphertext to the member's
    KEM public key, and the keys under AES-256-GCM with a key HKDF derives from the shared
    secret."""

    kem_ciphertext: Key
    sealed: Sealed


class RoleEpoch(msgspec.Struct, frozen=True):
    """One generation of a role's keys in a group: public keys in clear, the private keys
    sealed for each member holding the role (by email). Removing a member starts a new epoch
    sealed only for the others."""

    group: GroupName
    role: Role
    epoch: Epoch
    public: PublicKeys
    sealed: Annotated[dict[str, SealedForMember], msgspec.Meta(max_length=MAX_MEMBERS)]


class Group(msgspec.Struct, frozen=True):
    """A group as the server sees it: its members and their roles, and every epoch of every
    role's keys (old epochs stay: files written under them are still read with them)."""

    name: GroupName
    members: Annotated[dict[str, Role], msgspec.Meta(max_length=MAX_MEMBERS)]
    epochs: Annotated[tuple[RoleEpoch, ...], msgspec.Meta(max_length=MAX_EPOCHS)] = ()


class RoleKeys(msgspec.Struct, frozen=True):
    """A role's keys in clear, as ``token gather`` adds them to a token."""

    group: GroupName
    role: Role
    epoch: Epoch
    keys: KeySet


def role_seal_context(group: str, role: Role, epoch: int, email: str) -> bytes:
    """What a role key sealed for a member is bound to (HKDF info and GCM associated data): a
    blob copied to another member, role, epoch or group does not open."""
    return f"wasmer-dfs/role-seal/v1\0{group}\0{role.value}\0{epoch}\0{email}".encode()


def key_set_context(email: str, which: str) -> bytes:
    """What a user's sealed key set is bound to (``which``: "normal" or "sudo")."""
    return f"wasmer-dfs/user-keys/v1\0{email}\0{which}".encode()


def login_context(email: str) -> bytes:
    """What the login proof derived from a user's password key is bound to."""
    return f"wasmer-dfs/login/v1\0{email}".encode()


def check_email(email: str) -> str:
    """``email`` when it has the form of an address (one @, no spaces, at most 254 characters);
    ``AuthError`` saying so otherwise."""
    try:
        return msgspec.convert(email, Email)
    except msgspec.ValidationError:
        raise AuthError(f"{email!r} is not an email address (name@domain)") from None


def check_group_name(name: str) -> str:
    """``name`` when it is a group name (letters, digits, '.', '_', '-', at most 64)."""
    try:
        return msgspec.convert(name, GroupName)
    except msgspec.ValidationError:
        raise AuthError(
            f"{name!r} is not a group name: 1 to 64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        ) from None
