"""Who may use which chain of the chain server (issue 14 phase 3, docs/adr/0018 "Chains of
users and groups"), over the auth service of the same ``serve`` (application/auth_server.py).

A connection with a token's ``ChainAuth`` in its Hello asks for the chain NAME of its user
(stored as ``user.HASH.NAME``) or of a group (``group.GROUP.NAME``); its signature over the
server's nonce must verify with the user's normal key on record. Then:

* a user's chain: only that user connects, creates and writes;
* a group's chain: any member connects (reads); creating and writing need the role
  contributor or higher **now** - checked at every commit against the group's current
  membership, so a member removed (or lowered to observer) is refused from their next commit,
  on a connection opened before as on a new one.

A connection without a token (a passcode chain) may not take a name of the user and group
namespace, and may create or write only when the server allows anonymous chains
(``serve --allow-anonymous``, the default, so that passcode chains keep working).

Sans I/O: the websocket adapter hands ``admit`` the Hello and the nonce it gave; the peer
(application/server_peer.py) asks ``may_write`` before every commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from application.auth_server import AuthService
from application.chain_admission import Refused
from application.ports import Crypto
from domain.auth.chains import reserved, signed_chain_auth, stored_name
from domain.auth.roles import Role, rank
from domain.wire import Hello


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted connection: the chain's stored name, and who it is (None: anonymous)."""

    chain: str
    email: str | None = None
    group: str | None = None


class ChainAccess:
    """The server's access rules for chains (one per server; ``auth`` None: a server without
    an auth service, which serves passcode chains only)."""

    def __init__(self, auth: AuthService | None, crypto: Crypto, allow_anonymous: bool) -> None:
        self.auth = auth
        self.crypto = crypto
        self.allow_anonymous = allow_anonymous

    def admit(self, msg: Hello, url_chain: str, nonce: bytes) -> Admission:
        """The admission of a connection to ``url_chain`` whose Hello is ``msg``, signed (when
        it has a token) over ``nonce``; ``Refused`` with the reason otherwise."""
        auth = msg.auth
        if auth is None:
            if reserved(url_chain):
                raise Refused(
                    f"the chain name {url_chain!r} is reserved for chains of users and groups"
                    " (names starting with 'user.' or 'group.'): choose another name"
                )
            return Admission(url_chain)
        if self.auth is None:
            raise Refused("this server has no auth service: it serves passcode chains only")
        account = self.auth.accounts.get(auth.email)
        if account is None or not nonce:
            raise Refused(f"no account for {auth.email} on this server")
        public = account.record.normal.public.sign
        if not self.crypto.verify(
            public, signed_chain_auth(nonce, url_chain, auth.email, auth.group), auth.signature
        ):
            raise Refused(
                f"the token's signature for {auth.email} does not verify: a token of another"
                " server or an old account? (`wasmer-dfs token generate` makes a new one)"
            )
        if auth.group is not None:
            self._role(auth.email, auth.group)  # a member (any role) to connect
        return Admission(stored_name(url_chain, auth.email, auth.group), auth.email, auth.group)

    def _role(self, email: str, group: str) -> Role:
        assert self.auth is not None
        found = self.auth.groups.get(group)
        role = found.members.get(email) if found is not None else None
        if found is None or role is None:
            raise Refused(
                f"{email} is not a member of group {group}: an owner or delegate adds members"
                f" (`wasmer-dfs group add-user {group} {email} --role ROLE`)"
            )
        return role

    def may_read(self, who: Admission) -> str | None:
        """Why ``who`` may no longer read its chain (None: it may): a member removed from the
        group since the connection was admitted."""
        if who.email is None or who.group is None:
            return None
        try:
            self._role(who.email, who.group)
        except Refused as exc:
            return exc.reason
        return None

    def may_write(self, who: Admission) -> str | None:
        """Why ``who`` may not create or write its chain now (None: it may)."""
        if who.email is None:
            if self.allow_anonymous:
                return None
            return (
                "this server refuses chains without a token (started without"
                " --allow-anonymous): mount with --token or --token-path"
            )
        if who.group is None:
            return None  # the user's own chain (the name was derived from the signer)
        try:
            role = self._role(who.email, who.group)
        except Refused as exc:
            return exc.reason
        if rank(role) > rank(Role.CONTRIBUTOR):
            return (
                f"{who.email} is an observer of group {who.group}: observers read, contributors"
                " and higher write"
            )
        return None
