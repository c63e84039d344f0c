"""Domain errors. Each carries a message meant for a human."""


class DomainError(Exception):
    """Base of every error the domain raises."""


class MalformedEvent(DomainError):
    """An event whose metadata breaks the rules of the format."""


class Unauthorised(DomainError):
    """An event whose writer holds no key the authorisation asks for."""


class BadSignature(DomainError):
    """A signature that does not verify, or that covers other events."""


class TransactionRejected(DomainError):
    """A transaction that the validation pipeline refused, with the reason."""
