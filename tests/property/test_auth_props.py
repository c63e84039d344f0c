"""Properties of the key hierarchy (issue 14, docs/adr/0018): role keys sealed for a member open
with that member's keys only; after a removal no removed member unwraps a key of the new epoch
while every remaining holder does; tokens round-trip and a malformed, truncated or bit-flipped
token is a ``TokenError``, never another exception and never another token; the back-off never
shrinks and 20 wrong codes lock.

Key sets are made once per module and reused across examples (keygen and encapsulation are the
cost); Argon2id runs at its cheapest (``FastCrypto``)."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.auth import AuthKeys, NoRoleKeys
from domain.auth import groups as rules
from domain.auth.errors import TokenError
from domain.auth.lockout import (
    DEFAULT_POLICY,
    Accepted,
    Locked,
    LockoutState,
    attempt,
    locked_until,
    wait_seconds,
)
from domain.auth.records import Group, KeySet, RoleKeys
from domain.auth.roles import ORDER, Role, roles_held
from domain.auth.token import ClearToken, Token, clear_text, read_text
from domain.auth.totp import totp
from tests.fakes import FAST_KDF, FastCrypto

EMAILS = [f"u{i}@x.io" for i in range(6)]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def auth() -> AuthKeys:
    return AuthKeys(FastCrypto(), password_kdf=FAST_KDF)


@functools.cache
def user_keys() -> dict[str, KeySet]:
    return {e: auth().new_key_set() for e in EMAILS}


@functools.cache
def role_key_pool() -> tuple[KeySet, ...]:
    return tuple(auth().new_key_set() for _ in range(3))


roles = st.sampled_from(ORDER)
group_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


@SETTINGS
@given(
    group=group_names,
    role=roles,
    epoch=st.integers(0, 2**32),
    member=st.sampled_from(EMAILS),
    other=st.sampled_from(EMAILS),
    key_index=st.integers(0, 2),
)
def test_role_keys_open_for_their_member_only(
    group: str, role: Role, epoch: int, member: str, other: str, key_index: int
) -> None:
    keys = role_key_pool()[key_index]
    users = user_keys()
    blob = auth().seal_role(group, role, epoch, keys, member, users[member].public())
    record = rules.RoleEpoch(group, role, epoch, keys.public(), {member: blob})
    assert auth().unseal_role(record, member, users[member]) == RoleKeys(group, role, epoch, keys)
    if other != member:
        # the other member's keys do not open it, even under the member's name
        with pytest.raises(NoRoleKeys):
            auth().unseal_role(record, member, users[other])
        moved = rules.RoleEpoch(group, role, epoch, keys.public(), {other: blob})
        with pytest.raises(NoRoleKeys):
            auth().unseal_role(moved, other, users[other])
    # bound to the group, role and epoch
    elsewhere = rules.RoleEpoch(group, role, epoch + 1, keys.public(), {member: blob})
    with pytest.raises(NoRoleKeys):
        auth().unseal_role(elsewhere, member, users[member])


@functools.cache
def founded() -> tuple[Group, tuple[RoleKeys, ...]]:
    owner = EMAILS[0]
    group, keys = auth().create_group("team", owner, user_keys()[owner].public())
    return group, tuple(keys)


@st.composite
def memberships(draw: st.DrawFn) -> dict[str, Role]:
    others = draw(st.lists(st.sampled_from(EMAILS[1:]), min_size=1, max_size=5, unique=True))
    return {e: draw(roles) for e in others}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=memberships(), data=st.data())
def test_after_removal_only_the_remaining_holders_unwrap_the_new_epoch(
    members: dict[str, Role], data: st.DataObject
) -> None:
    users = user_keys()
    publics = {e: k.public() for e, k in users.items()}
    owner = EMAILS[0]
    group, owner_keys = founded()
    for email, role in members.items():
        group = auth().add_member(group, owner, owner_keys, email, role, publics[email])
    removed = data.draw(st.sampled_from(sorted(members)))
    removed_role = members[removed]
    before = {(e.role, e.epoch) for e in group.epochs}
    group, rotated = auth().remove_member(group, owner, removed, publics)
    assert {k.role for k in rotated} == set(roles_held(removed_role))
    for new in rotated:
        epoch = rules.latest_epoch(group, new.role)
        assert epoch is not None and (epoch.role, epoch.epoch) not in before
        assert removed not in epoch.sealed
        with pytest.raises(NoRoleKeys):
            auth().unseal_role(epoch, removed, users[removed])
        # nor with any remaining member's blob relabelled as theirs
        for holder, blob in epoch.sealed.items():
            stolen = rules.RoleEpoch(
                epoch.group, epoch.role, epoch.epoch, epoch.public, {removed: blob}
            )
            with pytest.raises(NoRoleKeys):
                auth().unseal_role(stolen, removed, users[removed])
            assert auth().unseal_role(epoch, holder, users[holder]).keys == new.keys
        assert set(epoch.sealed) == set(rules.holders(group, new.role))
    # the remaining members keep every role they hold, at the latest epoch
    for email, role in group.members.items():
        gathered = auth().gather(group, email, users[email])
        latest = {r: rules.latest_epoch(group, r) for r in roles_held(role)}
        assert {(k.role, k.epoch) for k in gathered} >= {
            (r, e.epoch) for r, e in latest.items() if e is not None
        }


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30).filter(
    lambda s: s.strip() != ""
)


@st.composite
def tokens(draw: st.DrawFn) -> Token:
    pool = role_key_pool()
    gathered = draw(
        st.lists(
            st.builds(
                RoleKeys,
                group=group_names,
                role=roles,
                epoch=st.integers(0, 2**32),
                keys=st.sampled_from(pool),
            ),
            max_size=4,
        )
    )
    issued = draw(st.integers(0, 2**40))
    return Token(
        version=1,
        email=draw(st.from_regex(r"[a-z0-9.]{1,10}@[a-z0-9.]{1,10}", fullmatch=True)),
        issuer=draw(texts),
        issued_at=issued,
        expires_at=issued + draw(st.integers(1, 2**31)),
        normal=draw(st.sampled_from(pool)),
        sudo=draw(st.none() | st.sampled_from(pool)),
        roles=tuple(gathered),
    )


@SETTINGS
@given(token=tokens())
def test_tokens_round_trip(token: Token) -> None:
    found = read_text(clear_text(token))
    assert isinstance(found, ClearToken)
    assert found.token == token
    assert auth().read_token(clear_text(token), token.issued_at) == token


@settings(max_examples=5, deadline=None)
@given(token=tokens(), passphrase=st.binary(min_size=1, max_size=40))
def test_sealed_tokens_round_trip(token: Token, passphrase: bytes) -> None:
    text = auth().token_text(token, passphrase)
    assert auth().read_token(text, token.issued_at, passphrase) == token
    with pytest.raises(TokenError):
        auth().read_token(text, token.issued_at, passphrase + b"x")


@functools.cache
def sample_texts() -> tuple[str, str]:
    pool = role_key_pool()
    token = Token(1, "a@x.io", "ws://h:1/auth", 0, 10, pool[0], pool[1],
                  (RoleKeys("team", Role.OWNER, 0, pool[2]),))  # fmt: skip
    return clear_text(token), auth().token_text(token, b"pp")


@settings(max_examples=200, deadline=None)
@given(data=st.data(), sealed=st.booleans())
def test_damaged_tokens_are_token_errors(data: st.DataObject, sealed: bool) -> None:
    text = sample_texts()[sealed]
    how = data.draw(st.sampled_from(["truncate", "flip", "replace", "insert"]))
    where = data.draw(st.integers(0, len(text) - 1))
    if how == "truncate":
        damaged: str | bytes = text[:where]
    elif how == "flip":
        raw = bytearray(text.encode())
        raw[where] ^= 1 << data.draw(st.integers(0, 7))
        damaged = bytes(raw)
    elif how == "replace":
        damaged = text[:where] + data.draw(st.characters()) + text[where + 1 :]
    else:
        damaged = text[:where] + data.draw(st.text(min_size=1, max_size=3)) + text[where:]
    if damaged == text or (isinstance(damaged, str) and damaged.strip() == text):
        return
    with pytest.raises(TokenError):
        auth().read_token(damaged, 0, b"pp")


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_is_a_token_error(junk: bytes | str) -> None:
    with pytest.raises(TokenError):
        auth().read_token(junk, 0, b"pp")


@settings(max_examples=100, deadline=None)
@given(
    failures=st.integers(0, 200),
    last=st.floats(0, 2e9),
    elapsed=st.floats(0, 2e5),
)
def test_the_back_off_never_shrinks(failures: int, last: float, elapsed: float) -> None:
    assert wait_seconds(failures + 1) >= wait_seconds(failures)
    until = locked_until(failures, last, last + elapsed)
    if until is not None:
        assert until == last + wait_seconds(failures) > last + elapsed
    if failures >= DEFAULT_POLICY.lock_at:
        assert wait_seconds(failures) == DEFAULT_POLICY.cap_seconds


@settings(max_examples=30, deadline=None)
@given(
    start=st.floats(1e9, 2e9),
    gaps=st.lists(st.floats(0, 5), min_size=20, max_size=20),
    secret=st.binary(min_size=20, max_size=20),
)
def test_twenty_wrong_codes_in_a_row_lock_out_the_right_code(
    start: float, gaps: list[float], secret: bytes
) -> None:
    state, now = LockoutState(), start
    for gap in gaps:
        now += gap
        right = totp(secret, now)
        wrong = f"{(int(right) + 500_000) % 1_000_000:06d}"
        _, state = attempt(state, secret, wrong, now)
    assert state.failures == 20
    right_now = now + 1
    outcome, state = attempt(state, secret, totp(secret, right_now), right_now)
    assert isinstance(outcome, Locked)
    assert outcome.until >= right_now + DEFAULT_POLICY.cap_seconds - 1e-6
    free = outcome.until + 0.5
    outcome, _ = attempt(state, secret, totp(secret, free), free)
    assert isinstance(outcome, Accepted)
