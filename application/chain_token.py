"""Mounting with a token (issue 14 phase 3, docs/adr/0018 "Chains of users and groups"): what a
token gives a mount of ``ws://HOST:PORT/db/NAME`` - the signature that tells the chain server
who connects, and the chain's secret in place of a passcode.

* a user's chain: the secret is HKDF of the user's normal AES key (owner and chain name bound);
* a group's chain (``--group GROUP``): HKDF of an **observer** role key of the group (every
  member holds the observer keys: a role holds those of every lower role), of the epoch the
  chain was created under; a token holding several epochs tries each against the chain
  header's key check (``secrets``, newest first);
* a member whose token holds no contributor-or-higher key of the group mounts read-only.
"""

from __future__ import annotations

from collections.abc import Callable

from application.ports import Crypto
from domain.auth.chains import chain_secret, signed_chain_auth
from domain.auth.roles import Role, rank
from domain.auth.token import Token
from domain.wire import ChainAuth

#: the token's signature for a connection: (the server's nonce, the URL's chain) -> ChainAuth
ChainSigner = Callable[[bytes, str], ChainAuth]


class NoChainKey(Exception):
    """The token holds no key of the chain's owner (``reason`` says what to do)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def signer(token: Token, group: str | None, crypto: Crypto) -> ChainSigner:
    """Signs a connection's Hello with the token's normal key."""
    secret = token.normal.sign_secret

    def sign(nonce: bytes, chain: str) -> ChainAuth:
        payload = signed_chain_auth(nonce, chain, token.email, group)
        return ChainAuth(token.email, group, crypto.sign(secret, payload))

    return sign


def secrets(token: Token, group: str | None, name: str) -> list[bytes]:
    """The secrets that may open the chain ``name`` (the first creates it); ``NoChainKey`` when
    the token holds none (no key of ``group``)."""
    if group is None:
        return [chain_secret(token.normal.aes, "user", token.email, name)]
    observer = [r for r in token.role_keys(group) if r.role is Role.OBSERVER]
    if not observer:
        raise NoChainKey(
            f"the token of {token.email} holds no key of group {group}: a member gathers them"
            f" with `wasmer-dfs token gather {group}` (an owner or delegate adds members)"
        )
    return [chain_secret(r.keys.aes, "group", group, name) for r in observer]


def may_write(token: Token, group: str | None) -> bool:
    """Whether the token holds a key that writes the chain (its user's own; for a group a
    contributor-or-higher role key of any epoch - the server checks the role it holds now)."""
    if group is None:
        return True
    return any(rank(r.role) <= rank(Role.CONTRIBUTOR) for r in token.role_keys(group))
