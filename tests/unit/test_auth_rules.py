"""The pure auth rules (domain/auth, docs/adr/0018): roles, membership changes, HKDF, TOTP
against the RFC test vectors, the back-off, and the token's text form."""

from __future__ import annotations

import itertools

import pytest

from domain.auth import groups
from domain.auth.errors import AuthError, MembershipError, PermissionRefused, TokenError
from domain.auth.kdf import hkdf_sha256
from domain.auth.lockout import (
    DEFAULT_POLICY,
    Accepted,
    Locked,
    LockoutState,
    WrongCode,
    attempt,
    locked_until,
    wait_seconds,
)
from domain.auth.records import KeySet, PasswordKdf, RoleKeys, check_email, check_group_name
from domain.auth.roles import Role, may_grant, may_manage, may_write, parse_role, roles_held
from domain.auth.token import PREFIX, Token, clear_text, read_text
from domain.auth.totp import hotp, matching_step, otpauth_uri, totp

RFC_SECRET = b"12345678901234567890"


# -- roles and groups -----------------------------------------------------------------------


def test_role_rules() -> None:
    assert [may_manage(r) for r in Role] == [True, True, False, False]
    assert [may_write(r) for r in Role] == [True, True, True, False]
    assert roles_held(Role.CONTRIBUTOR) == (Role.CONTRIBUTOR, Role.OBSERVER)
    assert roles_held(Role.OWNER) == tuple(Role)
    assert may_grant(Role.DELEGATE, Role.CONTRIBUTOR)
    assert not may_grant(Role.DELEGATE, Role.DELEGATE)
    assert not may_grant(Role.CONTRIBUTOR, Role.OBSERVER)
    assert parse_role(" Observer ") is Role.OBSERVER
    with pytest.raises(ValueError, match="owner \\| delegate \\| contributor \\| observer"):
        parse_role("admin")


def team() -> groups.Group:
    g = groups.new_group("team", "a@x.io")
    g = groups.add_member(g, "a@x.io", "d@x.io", Role.DELEGATE)
    g = groups.add_member(g, "d@x.io", "b@x.io", Role.CONTRIBUTOR)
    return groups.add_member(g, "a@x.io", "o@x.io", Role.OBSERVER)


def test_who_may_change_membership() -> None:
    g = team()
    assert g.members["b@x.io"] is Role.CONTRIBUTOR
    with pytest.raises(PermissionRefused, match="only an owner or a delegate"):
        groups.add_member(g, "b@x.io", "c@x.io", Role.OBSERVER)
    with pytest.raises(PermissionRefused, match="not a member"):
        groups.add_member(g, "c@x.io", "c@x.io", Role.OWNER)
    with pytest.raises(PermissionRefused, match="ask an owner"):
        groups.add_member(g, "d@x.io", "c@x.io", Role.OWNER)
    with pytest.raises(PermissionRefused, match="ask an owner"):
        groups.remove_member(g, "d@x.io", "a@x.io")
    with pytest.raises(MembershipError, match="already contributor"):
        groups.add_member(g, "a@x.io", "b@x.io", Role.OBSERVER)
    with pytest.raises(MembershipError, match="not a member"):
        groups.remove_member(g, "a@x.io", "c@x.io")
    with pytest.raises(MembershipError, match="last owner"):
        groups.remove_member(g, "a@x.io", "a@x.io")
    smaller = groups.remove_member(g, "d@x.io", "b@x.io")
    assert "b@x.io" not in smaller.members
    assert groups.holders(g, Role.CONTRIBUTOR) == ["a@x.io", "b@x.io", "d@x.io"]
    assert groups.holders(g, Role.OBSERVER) == ["a@x.io", "b@x.io", "d@x.io", "o@x.io"]


def test_names_are_checked() -> None:
    assert check_email("a@b.c") == "a@b.c"
    assert check_group_name("team-1") == "team-1"
    for bad in ("", "nobody", "a b@c", "a@b@c", "x" * 251 + "@b.c"):
        with pytest.raises(AuthError, match="not an email address"):
            check_email(bad)
    for bad in ("", "-x", "a/b", "x" * 65):
        with pytest.raises(AuthError, match="not a group name"):
            check_group_name(bad)


def test_password_kdf_bounds() -> None:
    PasswordKdf(b"s" * 16, 1, 8, 1).check()
    for bad in (
        PasswordKdf(b"s" * 15, 1, 8, 1),
        PasswordKdf(b"s" * 16, 65, 8, 1),
        PasswordKdf(b"s" * 16, 1, 8 * 1024 * 1024, 1),
        PasswordKdf(b"s" * 16, 1, 8, 2),
    ):
        with pytest.raises(AuthError, match="refused"):
            bad.check()


# -- HKDF (RFC 5869 test case 1) ----------------------------------------------------------


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


# -- TOTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "code"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_totp_rfc6238_sha1_vectors(t: int, code: str) -> None:
    assert totp(RFC_SECRET, t, digits=8) == code


def test_hotp_rfc4226_vectors() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314"]
    assert [hotp(RFC_SECRET, c) for c in range(5)] == expected


def test_codes_match_within_one_step() -> None:
    now = 1_700_000_000.0
    code = totp(RFC_SECRET, now)
    assert matching_step(RFC_SECRET, code, now) == int(now // 30)
    assert matching_step(RFC_SECRET, code, now + 30) == int(now // 30)
    assert matching_step(RFC_SECRET, code, now - 30) == int(now // 30)
    assert matching_step(RFC_SECRET, code, now + 60) is None
    for bad in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        assert matching_step(RFC_SECRET, bad, now) is None


def test_otpauth_uri() -> None:
    uri = otpauth_uri(RFC_SECRET, "a@x.io")
    assert uri.startswith(
        "otpauth://totp/wasmer-dfs:a@x.io?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    )
    assert "digits=6" in uri
    assert "period=30" in uri
    assert "algorithm=SHA1" in uri


# -- back-off ---------------------------------------------------------------------------------


def test_wait_grows_and_twenty_failures_lock_for_the_cap() -> None:
    waits = [wait_seconds(f) for f in range(30)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(waits))
    assert waits[4] > waits[3]
    assert waits[20] == DEFAULT_POLICY.cap_seconds
    assert locked_until(20, 1000.0, 1000.0 + 3600) == 1000.0 + DEFAULT_POLICY.cap_seconds
    assert locked_until(20, 1000.0, 1000.0 + DEFAULT_POLICY.cap_seconds) is None
    assert locked_until(2, 1000.0, 1000.0) is None
    assert locked_until(0, None, 1000.0) is None


def test_twenty_wrong_codes_lock_and_the_right_code_waits() -> None:
    now = 1_700_000_000.0
    right = totp(RFC_SECRET, now)
    wrong = "000000" if right != "000000" else "111111"
    state = LockoutState()
    outcomes = []
    for i in range(20):
        outcome, state = attempt(state, RFC_SECRET, wrong, now + i * 0.1)
        outcomes.append(outcome)
    assert isinstance(outcomes[0], WrongCode)
    assert outcomes[2] == WrongCode(3, now + 0.2 + 1.0)
    assert isinstance(outcomes[-1], Locked)
    assert state.failures == 20
    later = now + 60
    outcome, state = attempt(state, RFC_SECRET, totp(RFC_SECRET, later), later)
    assert isinstance(outcome, Locked)
    assert outcome.until >= later + DEFAULT_POLICY.cap_seconds
    after = outcome.until + 1
    outcome, state = attempt(state, RFC_SECRET, totp(RFC_SECRET, after), after)
    assert isinstance(outcome, Accepted)
    assert state == LockoutState(0, None, int(after // 30))


def test_a_code_is_good_once() -> None:
    now = 1_700_000_000.0
    code = totp(RFC_SECRET, now)
    outcome, state = attempt(LockoutState(), RFC_SECRET, code, now)
    assert isinstance(outcome, Accepted)
    outcome, state = attempt(state, RFC_SECRET, code, now + 1)
    assert outcome == WrongCode(1, None)


# -- the token's text form ---------------------------------------------------------------------

KEYS = KeySet(b"sp", b"ss", b"kp", b"ks", bytes(32))


def a_token(**changes: object) -> Token:
    fields: dict[str, object] = {
        "version": 1,
        "email": "a@x.io",
        "issuer": "ws://127.0.0.1:5000/auth",
        "issued_at": 100,
        "expires_at": 200,
        "normal": KEYS,
        "roles": (RoleKeys("team", Role.OWNER, 3, KEYS),),
    }
    fields.update(changes)
    return Token(**fields)  # type: ignore[arg-type]


def test_clear_token_round_trip() -> None:
    token = a_token()
    text = clear_text(token)
    assert text.startswith(PREFIX)
    assert read_text(text).token == token  # type: ignore[union-attr]
    assert read_text(f"\n  {text}\n".encode()).token == token  # type: ignore[union-attr]
    assert token.role_keys("team")[0].epoch == 3
    assert token.expired(200) and not token.expired(199)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a wasmer-dfs token"),
        ("hello", "not a wasmer-dfs token"),
        (PREFIX + "!!!", "not base64url"),
        (PREFIX + "A", "not base64url"),
        (PREFIX + "AAAA", "damaged or truncated"),
        (b"\xff\xfe", "not ASCII"),
        (PREFIX + "A" * 20_000_000, "more than"),
    ],
)
def test_malformed_tokens_are_clear_errors(text: str | bytes, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        read_text(text)


def test_an_unknown_token_version_says_so() -> None:
    with pytest.raises(TokenError, match="token version 2 is not 1"):
        read_text(clear_text(a_token(version=2)))


def test_a_flipped_last_base64_bit_is_refused() -> None:
    text = clear_text(a_token())
    last = text[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    flipped = alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(TokenError):
        read_text(text[:-1] + flipped)
