"""Membership changes and who may make them (issue 14): pure functions from a ``Group`` and an
actor to a new ``Group`` or a refusal that says why."""

from __future__ import annotations

import msgspec

from domain.auth.errors import MembershipError, PermissionRefused
from domain.auth.records import Group, RoleEpoch
from domain.auth.roles import ORDER, Role, may_grant, may_manage, roles_held


def new_group(name: str, owner: str) -> Group:
    """A group whose only member is ``owner`` (its role keys are made by the service)."""
    return Group(name=name, members={owner: Role.OWNER})


def role_of(group: Group, email: str) -> Role | None:
    return group.members.get(email)


def _manager(group: Group, actor: str) -> Role:
    role = group.members.get(actor)
    if role is None:
        raise PermissionRefused(f"{actor} is not a member of group {group.name}")
    if not may_manage(role):
        raise PermissionRefused(
            f"{actor} is {role.value} of group {group.name}: only an owner or a delegate"
            " manages its members"
        )
    return role


def add_member(group: Group, actor: str, email: str, role: Role) -> Group:
    """``group`` with ``email`` added as ``role`` by ``actor`` (an owner any role, a delegate
    contributor or observer)."""
    actor_role = _manager(group, actor)
    if not may_grant(actor_role, role):
        raise PermissionRefused(
            f"{actor} is {actor_role.value} of group {group.name} and cannot make anyone"
            f" {role.value}: ask an owner"
        )
    if email in group.members:
        raise MembershipError(
            f"{email} is already {group.members[email].value} of group {group.name}:"
            " remove them first to change the role"
        )
    return msgspec.structs.replace(group, members={**group.members, email: role})


def remove_member(group: Group, actor: str, email: str) -> Group:
    """``group`` without ``email``; the last owner is never removed."""
    actor_role = _manager(group, actor)
    role = group.members.get(email)
    if role is None:
        raise MembershipError(f"{email} is not a member of group {group.name}")
    if not may_grant(actor_role, role):
        raise PermissionRefused(
            f"{actor} is {actor_role.value} of group {group.name} and cannot remove"
            f" {role.value} {email}: ask an owner"
        )
    if role is Role.OWNER and sum(r is Role.OWNER for r in group.members.values()) == 1:
        raise MembershipError(f"{email} is the last owner of group {group.name}: add another first")
    members = {e: r for e, r in group.members.items() if e != email}
    return msgspec.structs.replace(group, members=members)


def holders(group: Group, role: Role) -> list[str]:
    """The members given ``role``'s keys: those whose own role is ``role`` or above."""
    return sorted(e for e, r in group.members.items() if role in roles_held(r))


def roles_to_rotate(removed: Role) -> tuple[Role, ...]:
    """The roles whose keys a removed member of ``removed`` held: each gets a new epoch."""
    return roles_held(removed)


def latest_epoch(group: Group, role: Role) -> RoleEpoch | None:
    found = [e for e in group.epochs if e.role is role]
    return max(found, key=lambda e: e.epoch) if found else None


def with_epoch(group: Group, epoch: RoleEpoch) -> Group:
    """``group`` with a new epoch of a role; refused unless it follows the role's latest."""
    latest = latest_epoch(group, epoch.role)
    expected = 0 if latest is None else latest.epoch + 1
    if epoch.group != group.name or epoch.epoch != expected:
        raise MembershipError(
            f"epoch {epoch.epoch} of {epoch.role.value} in {epoch.group} does not follow"
            f" epoch {expected - 1} of group {group.name}"
        )
    return msgspec.structs.replace(group, epochs=(*group.epochs, epoch))


__all__ = [
    "ORDER",
    "add_member",
    "holders",
    "latest_epoch",
    "new_group",
    "remove_member",
    "role_of",
    "roles_to_rotate",
    "with_epoch",
]
