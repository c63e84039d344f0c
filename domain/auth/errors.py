"""The errors of the auth rules: each says what went wrong and what to do."""

from __future__ import annotations


class AuthError(Exception):
    """Base of every refusal of the auth rules and service."""


class TokenError(AuthError):
    """A token that cannot be read: malformed, truncated, altered, of an unknown version, or
    sealed under another passphrase."""


class PermissionRefused(AuthError):
    """The actor's role does not allow the change (not a member, role too low)."""


class MembershipError(AuthError):
    """A membership change that makes no sense (already a member, not a member, the last
    owner)."""
