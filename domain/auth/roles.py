"""The roles of a group (issue 14) and what each may do.

Owners and delegates manage membership; contributors read and write; observers read. A role
holds its own keys and the keys of every role below it (an owner can read what is readable by
the observer key), so removing a member rotates their role and every role below it."""

from __future__ import annotations

import enum


class Role(enum.Enum):
    OWNER = "owner"
    DELEGATE = "delegate"
    CONTRIBUTOR = "contributor"
    OBSERVER = "observer"


#: highest first
ORDER: tuple[Role, ...] = (Role.OWNER, Role.DELEGATE, Role.CONTRIBUTOR, Role.OBSERVER)


def rank(role: Role) -> int:
    """0 for the owner, larger for lower roles."""
    return ORDER.index(role)


def parse_role(text: str) -> Role:
    """The role named ``text``; ``ValueError`` naming the four roles otherwise."""
    try:
        return Role(text.strip().lower())
    except ValueError:
        names = " | ".join(r.value for r in ORDER)
        raise ValueError(f"unknown role {text!r}: use {names}") from None


def may_read(role: Role) -> bool:
    return True


def may_write(role: Role) -> bool:
    return role is not Role.OBSERVER


def may_manage(role: Role) -> bool:
    """Owners and delegates add and remove members."""
    return role in (Role.OWNER, Role.DELEGATE)


def may_grant(actor: Role, target: Role) -> bool:
    """Whether ``actor`` may give (or take away) role ``target``: an owner any role, a delegate
    only the roles below delegate; nobody else any."""
    if actor is Role.OWNER:
        return True
    if actor is Role.DELEGATE:
        return rank(target) > rank(Role.DELEGATE)
    return False


def roles_held(role: Role) -> tuple[Role, ...]:
    """The role keys a member of ``role`` is given: its own and those of every lower role."""
    return ORDER[rank(role) :]
