"""Chains owned by users and groups (issue 14 phase 3, docs/adr/0018 "Chains of users and
groups"): where the server stores them, what a connection signs to say who it is, and the
secret a token gives for such a chain. Pure: the nonce and keys come in as arguments."""

from __future__ import annotations

import hashlib

from domain.auth.kdf import hkdf_sha256

#: the prefixes of the server-side names of user and group chains; a passcode chain may not
#: take a name that starts with one (it would share their namespace)
USER_PREFIX = "user."
GROUP_PREFIX = "group."
#: what a connection signs (with the server's nonce and the chain it asks for)
CHAIN_AUTH_PURPOSE = b"wasmer-dfs/chain-auth/v1"
#: the length of the server nonce a connection signs
CHAIN_NONCE_BYTES = 32
#: the websocket handshake header that carries it (hex)
NONCE_HEADER = "x-wasmer-dfs-nonce"


def reserved(name: str) -> bool:
    """Whether ``name`` lies in the namespace of user and group chains."""
    return name.startswith((USER_PREFIX, GROUP_PREFIX))


def user_dir(email: str) -> str:
    """The file-safe stand-in of an email in stored names (emails hold '@' and '+', which a
    chain file name may not): the first 20 bytes of its SHA-256, in hex."""
    return hashlib.sha256(email.encode()).hexdigest()[:40]


def stored_name(name: str, email: str | None, group: str | None) -> str:
    """The server-side name of the chain ``name`` of ``group`` (when given), else of the user
    ``email`` (when given), else ``name`` itself (a passcode chain): ``user.HASH.NAME``,
    ``group.GROUP.NAME`` - the same ``NAME`` of two owners never collide."""
    if group is not None:
        return f"{GROUP_PREFIX}{group}.{name}"
    if email is not None:
        return f"{USER_PREFIX}{user_dir(email)}.{name}"
    return name


def signed_chain_auth(nonce: bytes, chain: str, email: str, group: str | None) -> bytes:
    """What a connection to ``chain`` (the URL's name) signs with the user's normal key: the
    purpose, the server's nonce, the chain, the email and the group, each length-prefixed."""
    parts = (CHAIN_AUTH_PURPOSE, nonce, chain.encode(), email.encode(), (group or "").encode())
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def chain_secret(aes: bytes, kind: str, owner: str, name: str) -> bytes:
    """The secret a token gives for the chain ``name`` of ``owner`` (``kind`` "user": its
    email, the user's normal AES key; "group": the group, an observer role key's AES key): it
    stands where a passcode stood, through the chain header's Argon2id."""
    info = f"wasmer-dfs/chain-secret/v1\0{kind}\0{owner}\0{name}".encode()
    return hkdf_sha256(aes, salt=b"", info=info)
