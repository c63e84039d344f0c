"""The ``AuthConnector`` / ``AuthLink`` port's contract (application/ports/auth.py), run through
the ``AuthClient`` against the websocket adapter (``WsAuthConnector`` to a chain server in
process with its ``/auth``) and its in-memory twin (``MemoryAuthConnector``: the same service,
no socket; docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from adapters.memory import FakeClock, MemoryRedoLogFactory
from adapters.memory.auth import MemoryAuthConnector
from adapters.ws_auth import AuthHost, WsAuthConnector
from adapters.ws_server import WsChainServer
from application.auth import AuthKeys, WrongPassword
from application.auth_client import AuthClient, AuthRefused
from application.auth_server import AuthService
from application.chain_server import ChainServer, ServerConfig
from application.ports.auth import AuthConnector, AuthLink, AuthUnavailable
from domain.auth.records import RoleKeys
from domain.auth.roles import Role
from domain.auth.token import Token
from domain.auth.totp import totp
from domain.auth.wire import GetKdf, Plain, Refusal, Signed, Sudo, encode, signed_bytes
from tests.fakes import FAST_KDF, FastCrypto, closed_udp_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
T = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Auth:
    connector: AuthConnector
    unreachable: Callable[[], AuthConnector]
    clock: FakeClock
    keys: AuthKeys = field(default_factory=lambda: AuthKeys(FastCrypto(), password_kdf=FAST_KDF))
    links: list[AuthLink] = field(default_factory=list)

    async def client(self) -> AuthClient:
        link = await asyncio.wait_for(self.connector.open(), T)
        self.links.append(link)
        return AuthClient(link, self.keys)

    def code(self, secret: bytes) -> str:
        return totp(secret, self.clock.now_ms() / 1000)


@pytest.fixture(params=["ws", "memory"])
async def auth(request: pytest.FixtureRequest) -> AsyncIterator[Auth]:
    clock = FakeClock()
    service = AuthService(MemoryRedoLogFactory(), FastCrypto(), clock)
    if request.param == "memory":
        gone = MemoryAuthConnector(service)
        gone.closed = True
        a = Auth(MemoryAuthConnector(service), lambda: gone, clock)
        try:
            yield a
        finally:
            for link in a.links:
                await link.close()
            service.close()
        return
    app = ChainServer(MemoryRedoLogFactory(), FastCrypto(), clock, ServerConfig())
    server = WsChainServer(app, "127.0.0.1", 0, auth=AuthHost(service))
    await server.start()
    a = Auth(
        WsAuthConnector(f"{server.url}/auth", timeout=T),
        lambda: WsAuthConnector(f"ws://127.0.0.1:{closed_udp_port()}/auth", timeout=T),
        clock,
    )
    try:
        yield a
    finally:
        for link in a.links:
            await link.close()
        await server.close()


async def _token(auth: Auth, email: str, password: bytes, sudo_code: str | None = None) -> Token:
    client = await auth.client()
    record, normal = await client.login(email, password)
    sudo = None
    if sudo_code is not None:
        share = await client.sudo_share(email, normal, code=sudo_code)
        sudo = auth.keys.unseal_sudo(record, password, share)
    return auth.keys.build_token(email, "test", auth.clock.now_ms() / 1000, normal, sudo)


async def test_an_account_is_created_and_logged_into_with_its_password(auth: Auth) -> None:
    client = await auth.client()
    created = await client.create_user("a@x.org", b"pw-a")
    record, normal = await client.login("a@x.org", b"pw-a")
    assert normal == created.normal and record == created.account.record
    with pytest.raises(AuthRefused, match=r"wrong password for a@x\.org"):
        await client.login("a@x.org", b"not it")
    with pytest.raises(AuthRefused, match=r"no account for b@x\.org"):
        await client.login("b@x.org", b"pw")
    with pytest.raises(AuthRefused, match="exists already"):
        await client.create_user("a@x.org", b"other")
    info = await client.details("a@x.org")
    assert info.normal == normal.public() and info.groups is None


async def test_a_right_code_gives_the_sudo_share_and_a_wrong_one_is_counted(auth: Auth) -> None:
    client = await auth.client()
    created = await client.create_user("a@x.org", b"pw")
    _, normal = await client.login("a@x.org", b"pw")
    with pytest.raises(AuthRefused, match=r"wrong authenticator code .*\(1 in a row\)"):
        await client.sudo_share(
            "a@x.org", normal, code=_wrong(auth.code(created.account.totp_secret))
        )
    share = await client.sudo_share("a@x.org", normal, code=auth.code(created.account.totp_secret))
    assert share == created.account.sudo_share
    token = auth.keys.build_token("a@x.org", "t", 0, normal)
    info = await client.details("a@x.org", token)
    assert info.failures == 0 and info.groups == () and info.locked_until is None


async def test_a_request_signed_over_an_old_nonce_is_refused(auth: Auth) -> None:
    client = await auth.client()
    await client.create_user("a@x.org", b"pw")
    _, normal = await client.login("a@x.org", b"pw")
    link = client.link
    old = link.nonce
    body = encode(Sudo("123456"))
    sig = auth.keys.crypto.sign(normal.sign_secret, signed_bytes(b"normal", old, body))
    await link.request(Plain(encode(GetKdf("a@x.org"))))  # the nonce moves on
    reply = await link.request(Signed("a@x.org", body, sig))
    assert isinstance(reply, Refusal) and "not signed by the normal key" in reply.reason


async def test_groups_follow_the_roles_of_their_members(auth: Auth) -> None:
    client = await auth.client()
    created = {}
    for who in ("a", "b", "c"):
        created[who] = await client.create_user(f"{who}@x.org", f"pw-{who}".encode())
    a = await _token(auth, "a@x.org", b"pw-a")
    with pytest.raises(AuthRefused, match="needs a sudo token"):
        await client.create_group("team", a)
    a = await _token(auth, "a@x.org", b"pw-a", auth.code(created["a"].account.totp_secret))
    await client.create_group("team", a)
    with pytest.raises(AuthRefused, match="exists already"):
        await client.create_group("team", a)
    with pytest.raises(AuthRefused, match="token gather team"):
        await client.add_member("team", a, "b@x.org", Role.CONTRIBUTOR)
    a = _with_roles(a, await client.gather("team", a))
    await client.add_member("team", a, "b@x.org", Role.CONTRIBUTOR)
    whole = (await client.group("team", a)).group
    assert whole.members == {"a@x.org": Role.OWNER, "b@x.org": Role.CONTRIBUTOR}

    b = await _token(auth, "b@x.org", b"pw-b")
    part = await client.group("team", b)
    assert not part.whole and part.group.members == {"b@x.org": Role.CONTRIBUTOR}
    b = _with_roles(b, await client.gather("team", b))
    assert {k.role for k in b.roles} == {Role.CONTRIBUTOR, Role.OBSERVER}
    assert (await client.group("team", b)).whole  # a current role key shows the members
    with pytest.raises(AuthRefused, match="role too low"):
        await client.remove_member("team", b, "a@x.org")

    c = await _token(auth, "c@x.org", b"pw-c")
    with pytest.raises(AuthRefused, match=r"c@x\.org is not a member of group team"):
        await client.gather("team", c)
    with pytest.raises(AuthRefused, match="not a member"):
        await client.add_member("team", c, "c@x.org", Role.OWNER)

    await client.remove_member("team", a, "b@x.org")
    after = (await client.group("team", a)).group
    assert after.members == {"a@x.org": Role.OWNER}
    assert {(e.role, e.epoch) for e in after.epochs if e.epoch == 1} == {
        (Role.CONTRIBUTOR, 1),
        (Role.OBSERVER, 1),
    }
    with pytest.raises(AuthRefused, match="not a member"):
        await client.gather("team", b)
    with pytest.raises(WrongPassword):
        auth.keys.unseal_normal(created["b"].account.record, b"pw-a")


async def test_an_unreachable_service_is_a_clear_error(auth: Auth) -> None:
    with pytest.raises(AuthUnavailable, match="auth service"):
        await asyncio.wait_for(auth.unreachable().open(), T)


def _with_roles(token: Token, roles: list[RoleKeys]) -> Token:
    return msgspec.structs.replace(token, roles=tuple(roles))


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"
