"""The key hierarchy service (application/auth.py, docs/adr/0018) over ``FastCrypto`` (the real
algorithms, the cheapest Argon2id) and once over the real ``PqCrypto`` at the default cost."""

from __future__ import annotations

import msgspec
import pytest

from adapters.crypto import PqCrypto
from application.auth import AuthKeys, NoRoleKeys, WrongPassword
from domain.auth.errors import AuthError, PermissionRefused, TokenError
from domain.auth.records import RoleEpoch, UserRecord
from domain.auth.roles import Role
from tests.fakes import FAST_KDF, FastCrypto

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def auth() -> AuthKeys:
    return AuthKeys(FastCrypto(), password_kdf=FAST_KDF)


def test_a_users_keys_unseal_with_the_password_only(auth: AuthKeys) -> None:
    account, normal = auth.create_user("a@x.io", b"correct horse")
    record = account.record
    assert auth.unseal_normal(record, b"correct horse") == normal
    with pytest.raises(WrongPassword, match=r"wrong password for a@x\.io"):
        auth.unseal_normal(record, b"correct horsf")
    sudo = auth.unseal_sudo(record, b"correct horse", account.sudo_share)
    assert sudo.public() == record.sudo.public
    assert sudo != normal
    with pytest.raises(WrongPassword):
        auth.unseal_sudo(record, b"correct horse", bytes(32))
    with pytest.raises(WrongPassword):
        auth.unseal_sudo(record, b"wrong", account.sudo_share)
    assert len(account.totp_secret) == 20


def test_the_server_record_holds_no_secret(auth: AuthKeys) -> None:
    account, normal = auth.create_user("a@x.io", b"pw-123456")
    stored = msgspec.msgpack.encode(account.record)
    sudo = auth.unseal_sudo(account.record, b"pw-123456", account.sudo_share)
    for secret in (b"pw-123456", normal.sign_secret, normal.kem_secret, normal.aes, sudo.aes):
        assert secret not in stored
    assert msgspec.msgpack.decode(stored, type=UserRecord) == account.record


def test_bad_account_input_is_refused(auth: AuthKeys) -> None:
    with pytest.raises(AuthError, match="not an email"):
        auth.create_user("nobody", b"pw")
    with pytest.raises(AuthError, match="empty"):
        auth.create_user("a@x.io", b"")


def test_a_hostile_kdf_cost_is_refused_before_deriving(auth: AuthKeys) -> None:
    account, _ = auth.create_user("a@x.io", b"pw")
    kdf = msgspec.structs.replace(account.record.kdf, memory_kib=64 * 1024 * 1024)
    hostile = msgspec.structs.replace(account.record, kdf=kdf)
    with pytest.raises(AuthError, match="outside"):
        auth.unseal_normal(hostile, b"pw")


def test_a_group_its_members_and_a_removal(auth: AuthKeys) -> None:
    users = {e: auth.create_user(e, b"pw")[1] for e in ("a@x.io", "b@x.io", "d@x.io")}
    publics = {e: k.public() for e, k in users.items()}
    group, owner_keys = auth.create_group("team", "a@x.io", publics["a@x.io"])
    assert [k.role for k in owner_keys] == list(Role)
    group = auth.add_member(
        group, "a@x.io", owner_keys, "b@x.io", Role.CONTRIBUTOR, publics["b@x.io"]
    )
    group = auth.add_member(group, "a@x.io", owner_keys, "d@x.io", Role.OBSERVER, publics["d@x.io"])
    b_keys = auth.gather(group, "b@x.io", users["b@x.io"])
    assert {(k.role, k.epoch) for k in b_keys} == {(Role.CONTRIBUTOR, 0), (Role.OBSERVER, 0)}
    assert [k.role for k in auth.gather(group, "d@x.io", users["d@x.io"])] == [Role.OBSERVER]
    # B cannot add anyone, and D's keys do not open B's blob
    with pytest.raises(PermissionRefused):
        auth.add_member(group, "b@x.io", b_keys, "c@x.io", Role.OBSERVER, publics["d@x.io"])
    contributor0 = next(e for e in group.epochs if e.role is Role.CONTRIBUTOR)
    with pytest.raises(NoRoleKeys, match="holds no contributor keys"):
        auth.unseal_role(contributor0, "d@x.io", users["d@x.io"])
    stolen = msgspec.structs.replace(contributor0, sealed={"d@x.io": contributor0.sealed["b@x.io"]})
    with pytest.raises(NoRoleKeys, match="do not open"):
        auth.unseal_role(stolen, "d@x.io", users["d@x.io"])

    group, rotated = auth.remove_member(group, "a@x.io", "b@x.io", publics)
    assert {(k.role, k.epoch) for k in rotated} == {(Role.CONTRIBUTOR, 1), (Role.OBSERVER, 1)}
    new_epochs = [e for e in group.epochs if e.epoch == 1]
    for epoch in new_epochs:
        assert "b@x.io" not in epoch.sealed
        with pytest.raises(NoRoleKeys):
            auth.unseal_role(epoch, "b@x.io", users["b@x.io"])
    observer1 = next(e for e in new_epochs if e.role is Role.OBSERVER)
    assert auth.unseal_role(observer1, "d@x.io", users["d@x.io"]).keys == next(
        k.keys for k in rotated if k.role is Role.OBSERVER
    )
    # the owner still reads both epochs of the observer role
    assert {
        k.epoch for k in auth.gather(group, "a@x.io", users["a@x.io"]) if k.role is Role.OBSERVER
    } == {0, 1}
    with pytest.raises(NoRoleKeys, match="not a member"):
        auth.gather(group, "c@x.io", users["b@x.io"])


def test_a_delegate_without_the_current_keys_is_told_to_gather(auth: AuthKeys) -> None:
    a = auth.create_user("a@x.io", b"pw")[1]
    d = auth.create_user("d@x.io", b"pw")[1]
    group, owner_keys = auth.create_group("team", "a@x.io", a.public())
    group = auth.add_member(group, "a@x.io", owner_keys, "d@x.io", Role.DELEGATE, d.public())
    with pytest.raises(PermissionRefused, match="token gather team"):
        auth.add_member(group, "d@x.io", [], "c@x.io", Role.OBSERVER, d.public())
    d_keys = auth.gather(group, "d@x.io", d)
    group = auth.add_member(group, "d@x.io", d_keys, "c@x.io", Role.OBSERVER, d.public())
    assert group.members["c@x.io"] is Role.OBSERVER


def test_tokens_clear_and_sealed(auth: AuthKeys) -> None:
    _account, normal = auth.create_user("a@x.io", b"pw")
    group, roles = auth.create_group("team", "a@x.io", normal.public())
    token = auth.build_token("a@x.io", "ws://h:1/auth", NOW, normal, roles=roles, lifetime=60)
    assert auth.read_token(auth.token_text(token), NOW) == token
    sealed = auth.token_text(token, b"passphrase")
    assert normal.aes.hex() not in sealed
    assert auth.read_token(sealed, NOW, b"passphrase") == token
    with pytest.raises(TokenError, match="give it"):
        auth.read_token(sealed, NOW)
    with pytest.raises(TokenError, match="wrong token passphrase"):
        auth.read_token(sealed, NOW, b"passphrasf")
    with pytest.raises(TokenError, match="expired"):
        auth.read_token(auth.token_text(token), NOW + 60)
    with pytest.raises(AuthError, match="lifetime"):
        auth.build_token("a@x.io", "i", NOW, normal, lifetime=0)
    assert isinstance(group.epochs[0], RoleEpoch)


def test_the_real_adapter_round_trips_at_the_default_cost() -> None:
    auth = AuthKeys(PqCrypto())
    account, normal = auth.create_user("a@x.io", b"pw")
    assert auth.unseal_normal(account.record, b"pw") == normal
    b = auth.new_key_set()
    group, owner_keys = auth.create_group("team", "a@x.io", normal.public())
    group = auth.add_member(group, "a@x.io", owner_keys, "b@x.io", Role.OBSERVER, b.public())
    gathered = auth.gather(group, "b@x.io", b)
    assert [k.keys for k in gathered] == [k.keys for k in owner_keys if k.role is Role.OBSERVER]
    token = auth.build_token("b@x.io", "ws://h:1/auth", NOW, b, roles=gathered)
    assert auth.read_token(auth.token_text(token, b"pp"), NOW, b"pp") == token
