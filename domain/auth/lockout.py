"""The back-off after wrong authenticator codes (issue 14): a pure function of the failures in a
row, the time of the last one and now.

The first ``free`` wrong codes cost nothing (typos); from then on each wrong code makes the
account wait ``base * 2 ** (failures - free)`` seconds, capped at ``cap``; from ``lock_at``
failures in a row the wait is the cap (a lock). An attempt during a wait is refused without
looking at the code - a right code too - and counts as a failure, so hammering a locked account
only prolongs the lock. A right code outside a wait resets the count; a code's time step is
accepted once only (no replay of an observed code)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from domain.auth.totp import matching_step


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    free: int = 3
    base_seconds: float = 1.0
    cap_seconds: float = 24 * 3600.0
    lock_at: int = 20


DEFAULT_POLICY = BackoffPolicy()


class LockoutState(msgspec.Struct, frozen=True):
    """What the server keeps per account: wrong codes in a row, when the last one came, and the
    last time step accepted (a code is good once)."""

    failures: int = 0
    last_failure: float | None = None
    last_step: int = -1


def wait_seconds(failures: int, policy: BackoffPolicy = DEFAULT_POLICY) -> float:
    """How long an account waits after ``failures`` wrong codes in a row."""
    if failures < policy.free:
        return 0.0
    if failures >= policy.lock_at:
        return policy.cap_seconds
    exponent = failures - policy.free
    # 2 ** exponent would overflow a float long before lock_at matters; the cap is reached first
    if exponent >= 64:
        return policy.cap_seconds
    return float(min(policy.base_seconds * 2**exponent, policy.cap_seconds))


def locked_until(
    failures: int, last_failure: float | None, now: float, policy: BackoffPolicy = DEFAULT_POLICY
) -> float | None:
    """The time until which the account refuses codes, or None when it takes one now."""
    if last_failure is None:
        return None
    wait = wait_seconds(failures, policy)
    if wait <= 0:
        return None
    until = last_failure + wait
    return until if now < until else None


class Accepted(msgspec.Struct, frozen=True):
    step: int


class WrongCode(msgspec.Struct, frozen=True):
    failures: int
    #: when the next attempt is taken (None: at once)
    wait_until: float | None


class Locked(msgspec.Struct, frozen=True):
    until: float


Outcome = Accepted | WrongCode | Locked


def attempt(
    state: LockoutState,
    secret: bytes,
    code: str,
    now: float,
    policy: BackoffPolicy = DEFAULT_POLICY,
) -> tuple[Outcome, LockoutState]:
    """Try ``code`` at ``now``: the outcome and the account's next state."""
    until = locked_until(state.failures, state.last_failure, now, policy)
    if until is not None:
        failures = state.failures + 1
        new = LockoutState(failures, now, state.last_step)
        return Locked(now + wait_seconds(failures, policy)), new
    step = matching_step(secret, code, now)
    if step is not None and step > state.last_step:
        return Accepted(step), LockoutState(0, None, step)
    failures = state.failures + 1
    new = LockoutState(failures, now, state.last_step)
    return WrongCode(failures, locked_until(failures, now, now, policy)), new
