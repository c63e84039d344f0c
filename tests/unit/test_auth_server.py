"""The auth service (application/auth_server.py) in process: the back-off on its clock, its
state replayed from its log, hostile frames and forged group changes refused with a message."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from adapters.memory import FakeClock, MemoryRedoLogFactory
from adapters.memory.auth import MemoryAuthConnector
from application.auth import AuthKeys
from application.auth_client import AuthClient, AuthRefused, Created
from application.auth_server import AuthService, AuthSession
from domain.auth.records import Group, RoleKeys
from domain.auth.roles import Role
from domain.auth.token import Token
from domain.auth.totp import totp
from domain.auth.wire import (
    CreateGroup,
    GetGroup,
    Plain,
    Refusal,
    RoleSignature,
    Signed,
    UpdateGroup,
    decode_reply,
    encode,
    signed_bytes,
)
from tests.fakes import FAST_KDF, FastCrypto


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.logs = MemoryRedoLogFactory()
        self.keys = AuthKeys(FastCrypto(), password_kdf=FAST_KDF)
        self.service = AuthService(self.logs, FastCrypto(), self.clock)

    def restart(self) -> None:
        self.service.close()
        self.service = AuthService(self.logs, FastCrypto(), self.clock)

    def client(self) -> AuthClient:
        link = asyncio.run(MemoryAuthConnector(self.service).open())
        return AuthClient(link, self.keys)

    def now(self) -> float:
        return self.clock.now_ms() / 1000

    def code(self, created: Created) -> str:
        return totp(created.account.totp_secret, self.now())

    def token(self, email: str, password: bytes, created: Created | None = None) -> Token:
        client = self.client()
        record, normal = asyncio.run(client.login(email, password))
        sudo = None
        if created is not None:
            share = asyncio.run(client.sudo_share(email, normal, code=self.code(created)))
            sudo = self.keys.unseal_sudo(record, password, share)
        return self.keys.build_token(email, "t", self.now(), normal, sudo)


def _wrong(code: str) -> str:
    return f"{(int(code) + 500_000) % 10**6:06d}"


def _roles(token: Token, roles: list[RoleKeys]) -> Token:
    return msgspec.structs.replace(token, roles=tuple(roles))


def test_twenty_wrong_codes_lock_and_the_right_code_waits_for_the_back_off() -> None:
    rig = Rig()
    client = rig.client()
    created = asyncio.run(client.create_user("a@x.org", b"pw"))
    _, normal = asyncio.run(client.login("a@x.org", b"pw"))
    until = None
    for n in range(1, 21):
        with pytest.raises(AuthRefused) as caught:
            asyncio.run(client.sudo_share("a@x.org", normal, code=_wrong(rig.code(created))))
        until = caught.value.until
        if n < 3:  # two typos are free; from the third wrong code the account waits
            assert until is None and f"({n} in a row)" in caught.value.reason
        else:
            assert until is not None and "after unix time" in caught.value.reason
    assert until == pytest.approx(rig.now() + 24 * 3600)
    rig.clock.advance(3600)  # an hour later the right code is still refused: a lock
    with pytest.raises(AuthRefused, match="locked after 21 wrong codes") as caught:
        asyncio.run(client.sudo_share("a@x.org", normal, code=rig.code(created)))
    assert caught.value.until == pytest.approx(rig.now() + 24 * 3600)
    rig.restart()  # the counters are events: they survive a restart
    client = rig.client()
    with pytest.raises(AuthRefused, match="locked after 22 wrong codes"):
        asyncio.run(client.sudo_share("a@x.org", normal, code=rig.code(created)))
    rig.clock.advance(24 * 3600 + 1)
    share = asyncio.run(client.sudo_share("a@x.org", normal, code=rig.code(created)))
    assert share == created.account.sudo_share


def test_the_recovery_code_opens_a_locked_account_once() -> None:
    rig = Rig()
    client = rig.client()
    created = asyncio.run(client.create_user("a@x.org", b"pw"))
    _, normal = asyncio.run(client.login("a@x.org", b"pw"))
    for _ in range(20):
        with pytest.raises(AuthRefused):
            asyncio.run(client.sudo_share("a@x.org", normal, code="000000"))
    share = asyncio.run(client.sudo_share("a@x.org", normal, recovery=created.recovery_code))
    assert share == created.account.sudo_share
    with pytest.raises(AuthRefused, match="recovery code is wrong or used"):
        asyncio.run(client.sudo_share("a@x.org", normal, recovery=created.recovery_code))


def test_accounts_and_groups_are_replayed_from_the_log_at_start() -> None:
    rig = Rig()
    client = rig.client()
    created = asyncio.run(client.create_user("a@x.org", b"pw"))
    a = rig.token("a@x.org", b"pw", created)
    asyncio.run(client.create_group("team", a))
    rig.restart()
    client = rig.client()
    assert asyncio.run(client.login("a@x.org", b"pw"))[0] == created.account.record
    assert len(asyncio.run(client.gather("team", a))) == 4


def test_hostile_frames_are_refused_and_the_session_goes_on() -> None:
    rig = Rig()
    session = AuthSession(rig.service)
    for frame in (b"", b"\xff" * 100, encode(Plain(b"\x93\x01\x02")), b"\x81\xa4type\xa3bad"):
        reply = decode_reply(session.handle(frame))
        assert isinstance(reply, Refusal) and reply.reason
    huge = encode(Plain(encode(GetGroup("x" * 65))))
    reply = decode_reply(session.handle(huge))
    assert isinstance(reply, Refusal) and "not a valid" in reply.reason
    reply = decode_reply(session.handle(encode(Plain(encode(GetGroup("team"))))))
    assert isinstance(reply, Refusal) and "must be signed" in reply.reason


class _Forger:
    """Sends hand-made group records, signed as a real client would sign them."""

    def __init__(self, rig: Rig, token: Token) -> None:
        self.rig, self.token = rig, token
        self.session = AuthSession(rig.service)

    def send(self, op: CreateGroup | UpdateGroup, role: RoleKeys | None, sudo: bool = False) -> str:
        crypto = self.rig.keys.crypto
        nonce, body = self.session.nonce, encode(op)
        token = self.token
        assert token.sudo is not None or not sudo
        request = Signed(
            token.email,
            body,
            crypto.sign(token.normal.sign_secret, signed_bytes(b"normal", nonce, body)),
            crypto.sign(token.sudo.sign_secret, signed_bytes(b"sudo", nonce, body))
            if sudo and token.sudo is not None
            else None,
            None
            if role is None
            else RoleSignature(
                role.role,
                role.epoch,
                crypto.sign(role.keys.sign_secret, signed_bytes(b"role", nonce, body)),
            ),
        )
        reply = decode_reply(self.session.handle(encode(request)))
        return reply.reason if isinstance(reply, Refusal) else "done"


def test_forged_group_changes_are_refused() -> None:
    rig = Rig()
    client = rig.client()
    made = {w: asyncio.run(client.create_user(f"{w}@x.org", b"pw")) for w in "abc"}
    a = rig.token("a@x.org", b"pw", made["a"])
    forger = _Forger(rig, a)
    bpub = made["b"].normal.public()
    group, owner_keys = rig.keys.create_group("team", "a@x.org", a.normal.public())
    # a group whose first owner is someone else, or with members already
    other, _ = rig.keys.create_group("team", "b@x.org", bpub)
    assert "its owner (the signer)" in forger.send(CreateGroup(other), None, sudo=True)
    assert "sudo token" in forger.send(CreateGroup(group), None, sudo=False)
    assert forger.send(CreateGroup(group), None, sudo=True) == "done"
    a = _roles(a, owner_keys)
    owner = next(k for k in owner_keys if k.role is Role.OWNER)
    observer = next(k for k in owner_keys if k.role is Role.OBSERVER)
    added = rig.keys.add_member(group, "a@x.org", owner_keys, "b@x.org", Role.CONTRIBUTOR, bpub)
    # signed with a key too low to manage
    assert "role too low" in forger.send(UpdateGroup(added, added="b@x.org"), observer)
    # adding one member while changing another's role
    sneaky = msgspec.structs.replace(added, members={**added.members, "a@x.org": Role.DELEGATE})
    assert "changes more than" in forger.send(UpdateGroup(sneaky, added="b@x.org"), owner)
    # adding a member who holds no keys (not sealed for them)
    assert "not sealed for b@x.org" in forger.send(
        UpdateGroup(msgspec.structs.replace(group, members=added.members), added="b@x.org"), owner
    )
    assert forger.send(UpdateGroup(added, added="b@x.org"), owner) == "done"
    # removing without rotating, or rotating for the removed member too
    bare = msgspec.structs.replace(added, members={"a@x.org": Role.OWNER})
    assert "new epoch of exactly" in forger.send(UpdateGroup(bare, removed="b@x.org"), owner)
    publics = {"a@x.org": a.normal.public(), "b@x.org": bpub}
    leaky, _ = rig.keys.remove_member(added, "a@x.org", "b@x.org", publics)
    epochs = tuple(
        msgspec.structs.replace(
            e, sealed={**e.sealed, "b@x.org": e.sealed["a@x.org"]} if e.epoch == 1 else e.sealed
        )
        for e in leaky.epochs
    )
    leaky = msgspec.structs.replace(leaky, epochs=epochs)
    assert "exactly its remaining holders" in forger.send(
        UpdateGroup(leaky, removed="b@x.org"), owner
    )
    removed, _ = rig.keys.remove_member(added, "a@x.org", "b@x.org", publics)
    assert forger.send(UpdateGroup(removed, removed="b@x.org"), owner) == "done"
    # the observer key of epoch 0 is retired now: it no longer signs for the group
    retired = GetGroup("team")
    session = AuthSession(rig.service)
    crypto = rig.keys.crypto
    body = encode(retired)
    reply = decode_reply(
        session.handle(
            encode(
                Signed(
                    "a@x.org",
                    body,
                    crypto.sign(a.normal.sign_secret, signed_bytes(b"normal", session.nonce, body)),
                    None,
                    RoleSignature(
                        Role.OBSERVER,
                        0,
                        crypto.sign(
                            observer.keys.sign_secret, signed_bytes(b"role", session.nonce, body)
                        ),
                    ),
                )
            )
        )
    )
    assert isinstance(reply, Refusal) and "not the current one" in reply.reason
    assert isinstance(rig.service.groups["team"], Group)
    assert rig.service.groups["team"].members == {"a@x.org": Role.OWNER}
