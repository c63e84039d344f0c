"""The errors of a chain session (application/session.py and the rooms it delegates to:
application/chain_header.py, application/keys.py, application/payloads.py). Every message is
meant for a human."""

from __future__ import annotations


class SessionError(Exception):
    """Opening or using a chain failed; the message is meant for a human."""


class WrongPasscode(SessionError):
    pass


class ChainMismatch(SessionError):
    pass


class ChainIntegrityError(SessionError):
    pass
