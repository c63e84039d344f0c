"""The client of the auth service (issue 14, docs/adr/0018), over the ``AuthLink`` port: each
operation as one typed call. Keys are made, sealed and opened here with ``AuthKeys`` (the server
never sees a password or a private key); requests that act are signed over the server's nonce.
A refusal is ``AuthRefused`` with the server's message (and, for a lock, until when)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import TypeVar

from application.auth import AuthKeys, NewAccount
from application.ports.auth import AuthLink, AuthUnavailable
from domain.auth.errors import AuthError
from domain.auth.records import Group, KeySet, RoleKeys, UserRecord
from domain.auth.roles import Role, may_manage
from domain.auth.token import Token
from domain.auth.wire import (
    SIGN_NORMAL,
    SIGN_ROLE,
    SIGN_SUDO,
    CreateGroup,
    CreateUser,
    GetGroup,
    GetKdf,
    GroupReply,
    KdfReply,
    Login,
    Operation,
    Plain,
    RecordReply,
    Refusal,
    Reply,
    RoleSignature,
    ShareReply,
    Signed,
    Sudo,
    UpdateGroup,
    UserDetails,
    UserInfo,
    encode,
    signed_bytes,
)

RECOVERY_BYTES = 20
_T = TypeVar("_T")


class AuthRefused(AuthError):
    """The auth service refused (its message says why; ``until``: a lock's end, unix time)."""

    def __init__(self, reason: str, until: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until


@dataclass(frozen=True, slots=True)
class Created:
    account: NewAccount
    normal: KeySet
    recovery_code: str


def recovery_code(raw: bytes) -> str:
    """A recovery code as a person copies it: base32 in groups of four."""
    text = base64.b32encode(raw).decode().rstrip("=")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


class AuthClient:
    """The auth service's operations over one link."""

    def __init__(self, link: AuthLink, keys: AuthKeys) -> None:
        self.link = link
        self.keys = keys
        self.crypto = keys.crypto

    async def _send(self, op: Operation) -> Reply:
        reply = await self.link.request(Plain(encode(op)))
        return _checked(reply)

    async def _signed(
        self,
        op: Operation,
        email: str,
        normal: KeySet,
        sudo: KeySet | None = None,
        role: RoleKeys | None = None,
    ) -> Reply:
        body = encode(op)
        nonce = self.link.nonce
        sign = self.crypto.sign
        request = Signed(
            email,
            body,
            sign(normal.sign_secret, signed_bytes(SIGN_NORMAL, nonce, body)),
            None if sudo is None else sign(sudo.sign_secret, signed_bytes(SIGN_SUDO, nonce, body)),
            None
            if role is None
            else RoleSignature(
                role.role,
                role.epoch,
                sign(role.keys.sign_secret, signed_bytes(SIGN_ROLE, nonce, body)),
            ),
        )
        return _checked(await self.link.request(request))

    # -- users --------------------------------------------------------------------------------
    async def create_user(self, email: str, password: bytes) -> Created:
        """A new account: keys made and sealed here, the record stored by the server."""
        account, normal = self.keys.create_user(email, password)
        proof = self.keys.login_proof(email, password, account.record.kdf)
        recovery = recovery_code(self.crypto.random(RECOVERY_BYTES))
        await self._send(
            CreateUser(
                account.record,
                account.totp_secret,
                account.sudo_share,
                hashlib.sha256(proof).digest(),
                hashlib.sha256(recovery.encode()).digest(),
            )
        )
        return Created(account, normal, recovery)

    async def login(self, email: str, password: bytes) -> tuple[UserRecord, KeySet]:
        """The user's record and normal keys (the password proven, then the keys unsealed)."""
        kdf = _expect(await self._send(GetKdf(email)), KdfReply).kdf
        try:
            kdf.check()
        except AuthError as exc:
            raise AuthRefused(str(exc)) from None
        proof = self.keys.login_proof(email, password, kdf)
        record = _expect(await self._send(Login(email, proof)), RecordReply).record
        if record.email != email or record.kdf != kdf:
            raise AuthRefused("the auth service answered with another account's record")
        return record, self.keys.unseal_normal(record, password)

    async def sudo_share(
        self, email: str, normal: KeySet, code: str = "", recovery: str = ""
    ) -> bytes:
        reply = await self._signed(Sudo(code, recovery), email, normal)
        return _expect(reply, ShareReply).share

    async def details(self, email: str, token: Token | None = None) -> UserInfo:
        if token is None:
            return _expect(await self._send(UserDetails(email)), UserInfo)
        reply = await self._signed(UserDetails(email), token.email, token.normal)
        return _expect(reply, UserInfo)

    # -- groups -------------------------------------------------------------------------------
    async def create_group(self, name: str, token: Token) -> list[RoleKeys]:
        if token.sudo is None:
            raise AuthRefused(
                "creating a group needs a sudo token: run `wasmer-dfs token sudo --email"
                f" {token.email} --code CODE` first"
            )
        group, made = self.keys.create_group(name, token.email, token.normal.public())
        await self._signed(CreateGroup(group), token.email, token.normal, sudo=token.sudo)
        return made

    async def group(self, name: str, token: Token, *, with_role: bool = True) -> GroupReply:
        """The group as the server shows it to this token: whole when it is signed with a
        current role key of the group (the token's newest), else only what is sealed for the
        token's user."""
        held = token.role_keys(name) if with_role else []
        role = held[0] if held else None
        reply = await self._signed(GetGroup(name), token.email, token.normal, role=role)
        return _expect(reply, GroupReply)

    async def gather(self, name: str, token: Token) -> list[RoleKeys]:
        """Every role key of the group sealed for this token's user (each role, each epoch)."""
        reply = await self.group(name, token, with_role=False)
        return self.keys.gather(reply.group, token.email, token.normal)

    def _manager_key(self, group: Group, token: Token) -> RoleKeys:
        current = {(e.role, e.epoch) for e in group.epochs if _latest(group, e.role) == e.epoch}
        for keys in token.role_keys(group.name):
            if may_manage(keys.role) and (keys.role, keys.epoch) in current:
                return keys
        role = group.members.get(token.email)
        if role is not None and not may_manage(role):
            raise AuthRefused(
                f"{token.email} is {role.value} of group {group.name}: only an owner or a"
                " delegate manages its members (role too low)"
            )
        raise AuthRefused(
            f"this token holds no current owner or delegate key of group {group.name}: run"
            f" `wasmer-dfs token gather {group.name}` and retry"
        )

    async def _whole(self, name: str, token: Token) -> tuple[Group, RoleKeys]:
        reply = await self.group(name, token)
        if not reply.whole:
            role = reply.group.members.get(token.email)
            what = "no role key" if role is None else f"{role.value}"
            raise AuthRefused(
                f"{token.email} is {what} of group {name} and holds no current key of it to"
                f" manage members: run `wasmer-dfs token gather {name}` (an owner or delegate"
                " key is needed)"
            )
        return reply.group, self._manager_key(reply.group, token)

    async def add_member(self, name: str, token: Token, email: str, role: Role) -> None:
        group, manager = await self._whole(name, token)
        member = (await self.details(email)).normal
        changed = self.keys.add_member(group, token.email, token.roles, email, role, member)
        await self._signed(
            UpdateGroup(changed, added=email), token.email, token.normal, role=manager
        )

    async def remove_member(self, name: str, token: Token, email: str) -> None:
        group, manager = await self._whole(name, token)
        publics = {}
        for member in group.members:
            if member != email:
                publics[member] = (await self.details(member)).normal
        changed, _ = self.keys.remove_member(group, token.email, email, publics)
        await self._signed(
            UpdateGroup(changed, removed=email), token.email, token.normal, role=manager
        )


def _latest(group: Group, role: Role) -> int:
    return max((e.epoch for e in group.epochs if e.role is role), default=-1)


def _checked(reply: Reply) -> Reply:
    if isinstance(reply, Refusal):
        raise AuthRefused(reply.reason, reply.until)
    return reply


def _expect(reply: Reply, kind: type[_T]) -> _T:
    if not isinstance(reply, kind):
        raise AuthUnavailable(
            f"the auth service answered {type(reply).__name__}, not {kind.__name__}"
        )
    return reply
