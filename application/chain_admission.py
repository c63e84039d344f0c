"""Admission of a transaction to a hosted chain: the client's chain header checked
(``check_header``), the refusals (``Refused`` ends the connection, ``TransactionRefused`` only
the commit) and ``ChainState``, what the server knows of one chain to validate the next
transaction.

Trust (ADR 0004, 0008, 0015): the server holds no key that decrypts and never needs a passcode.
A transaction is accepted when its events parse, each event and the seal carry only what the
allow-list of domain/trust.py admits (one object written or deleted per event; signatures and a
timestamp on the seal; no replica bookkeeping such as ``LocalSeal``, ``Origin`` or ``Uploaded``),
none of its events is already in the chain, every signature verifies against the chain's public
keys and covers exactly this transaction (its seal included), its signers may write what it
writes (the chain root write key is the header's ``root_key_hash``), and no timestamp lies
further in the future than the tolerance. Replicas run the same rules on what they receive.
"""

from __future__ import annotations

from collections.abc import Sequence

from application.ports import Clock, Crypto
from application.server_config import ServerConfig
from application.session import ChainHeader, ChainIntegrityError
from domain.chain import (
    AuthorizationValidator,
    ChainIndex,
    Located,
    Pipeline,
    ShapeValidator,
    SignatureValidator,
    TimestampValidator,
    Transaction,
    Validator,
)
from domain.errors import DomainError
from domain.events import EventHeader, parse_header
from domain.hashing import EMPTY_HASH, sha256_of
from domain.wire import CommitRecord

MAX_HEADER_BODY = 64 * 1024


class Refused(Exception):
    """The connection must end: the reason goes to the client in ``Fatal``."""

    @property
    def reason(self) -> str:
        return str(self)


class TransactionRefused(Exception):
    """A client's transaction refused by the server's rules (nothing of it was written): the
    reason goes in ``CommitError``. (The client side of the same refusal is
    ``application.replication.CommitRejected``.)"""

    @property
    def reason(self) -> str:
        return str(self)


def check_header(body: bytes) -> ChainHeader:
    """A client's chain header body, decoded and sanity-checked; ``Refused`` otherwise."""
    if len(body) > MAX_HEADER_BODY:
        raise Refused(f"the chain header is too large ({len(body)} > {MAX_HEADER_BODY} bytes)")
    try:
        header = ChainHeader.decode(body)
    except ChainIntegrityError as exc:
        raise Refused(str(exc)) from None
    if not 8 <= len(header.chain_id) <= 64:
        raise Refused("the chain header's chain id must be 8 to 64 bytes")
    if header.root_key_hash is not None and len(header.root_key_hash) != 32:
        raise Refused("the chain header's root key hash must be 32 bytes")
    if header.kdf is not None:
        try:
            header.kdf.check()  # a chain no mount could open, or only at an absurd cost
        except ChainIntegrityError as exc:
            raise Refused(str(exc)) from None
    return header


def _parse(meta: bytes, fmt: int, data: bytes | None) -> EventHeader:
    return parse_header(meta, fmt, sha256_of(data) if data is not None else EMPTY_HASH)


class ChainState:
    """What the server knows of a chain to validate the next transaction: the index, the hashes
    of every event accepted, and the validators (no log: see ``ChainHost``)."""

    def __init__(
        self, header: ChainHeader, crypto: Crypto, clock: Clock, config: ServerConfig
    ) -> None:
        self.header = header
        self.clock = clock
        self.config = config
        self.index = ChainIndex(chain_id=header.chain_id, root_write=header.root_write)
        signatures = SignatureValidator(crypto.verify, legacy=header.version < 2)
        self._shape = ShapeValidator(local=False)
        self._authz = AuthorizationValidator([signatures])
        self._seen: set[bytes] = set()

    def transaction(self, records: Sequence[CommitRecord]) -> Transaction:
        """The transaction of a client's records (events not located yet)."""
        if not records:
            raise TransactionRefused("a transaction needs at least its seal")
        if records[-1].data is not None:
            raise TransactionRefused("the seal (last record) of a transaction carries no data")
        headers: list[EventHeader] = []
        for i, rec in enumerate(records):
            try:
                hdr = _parse(rec.meta, rec.fmt, rec.data)
            except DomainError as exc:
                raise TransactionRefused(f"record {i} is malformed: {exc}") from None
            headers.append(hdr)
        return Transaction(tuple(Located(hdr, None) for hdr in headers[:-1]), headers[-1])

    def check_new(self, tx: Transaction) -> None:
        """Every rule for a transaction a client sends; ``TransactionRefused`` with the reason."""
        if not tx.events:
            if not tx.signatures:
                raise TransactionRefused("an empty transaction must carry a signature")
            if self.index.attested == self.index.head:
                raise TransactionRefused(
                    "the chain's head is attested already (a replayed attestation)"
                )
        fresh: set[bytes] = set()
        for ev in tx.events:
            eh = ev.header.hash
            if eh in self._seen or eh in fresh:
                raise TransactionRefused(
                    f"event {eh.hex()[:16]} is already in the chain (a replayed transaction)"
                )
            fresh.add(eh)
        tolerance = self.config.limits.tolerance_ms
        self.check(
            tx, [self._shape, self._authz, TimestampValidator(self.clock.now_ms(), tolerance)]
        )

    def check_stored(self, tx: Transaction) -> None:
        """The rules a transaction of the server's own log must still pass at replay."""
        self.check(tx, [self._shape, self._authz])

    def check(self, tx: Transaction, validators: Sequence[Validator]) -> None:
        try:
            Pipeline(validators).check(self.index, tx)
        except DomainError as exc:
            raise TransactionRefused(str(exc)) from None

    def apply(self, tx: Transaction) -> None:
        if not tx.events and tx.signatures:
            self.index.attested = self.index.head
        for ev in tx.events:
            self.index.apply(ev)
            self._seen.add(ev.header.hash)
