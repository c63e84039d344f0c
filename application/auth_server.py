"""The auth service that `wasmer-dfs serve` hosts at ``/auth`` (issue 14, docs/adr/0018).

``AuthService`` keeps users, groups, authenticator secrets, sudo shares and lock-out counters as
events in its own redo log (the ``RedoLogFactory`` port; chain ``auth``), replayed at start; an
event is fsync'd before it is answered. The time comes from the ``Clock`` port (the back-off),
signatures are checked with the ``Crypto`` port. ``AuthSession`` is one connection, sans I/O:
a frame in, a frame out, a fresh nonce after every reply.

The server stores what the client made (the client derives and seals keys; the server never
sees a password or a private key) and checks what it can: signatures over its nonce by keys on
record, the membership rules of domain/auth/groups.py against the signer, and that a changed
group keeps every older epoch and blob as they were. Every refusal is a ``Refusal`` with a
message; a malformed frame is refused the same way, never a traceback."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field

import msgspec

from application.ports import Clock, Crypto, LogError, RedoLog, RedoLogFactory
from application.ports.log import LogRecord
from domain.auth import groups as rules
from domain.auth.errors import AuthError
from domain.auth.lockout import (
    DEFAULT_POLICY,
    Accepted,
    BackoffPolicy,
    Locked,
    LockoutState,
    attempt,
    locked_until,
)
from domain.auth.records import Group, RoleEpoch, UserRecord
from domain.auth.roles import Role, may_manage, roles_held
from domain.auth.wire import (
    NONCE_BYTES,
    SIGN_NORMAL,
    SIGN_ROLE,
    SIGN_SUDO,
    AuthWireError,
    Challenge,
    CodeTried,
    CreateGroup,
    CreateUser,
    Done,
    Event,
    GetGroup,
    GetKdf,
    GroupReply,
    GroupSaved,
    KdfReply,
    Login,
    Operation,
    Plain,
    RecordReply,
    Refusal,
    Reply,
    ShareReply,
    Sudo,
    UpdateGroup,
    UserCreated,
    UserDetails,
    UserInfo,
    decode_event,
    decode_operation,
    decode_request,
    encode,
    signed_bytes,
)

_log = logging.getLogger("wasmer_dfs.auth")

AUTH_CHAIN = "auth"
AUTH_LOG_HEADER = b"wasmer-dfs auth service log v1"


class Refused(AuthError):
    """A request the service refuses (the message says why and what to do)."""

    def __init__(self, reason: str, until: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until


@dataclass
class Account:
    created: CreateUser
    lockout: LockoutState = field(default_factory=LockoutState)
    recovery_used: bool = False

    @property
    def record(self) -> UserRecord:
        return self.created.record


def _no_account(email: str) -> Refused:
    return Refused(
        f"no account for {email}: create one with `wasmer-dfs user create --email {email}`"
    )


class AuthService:
    """The accounts and groups of one server, over its own redo log."""

    def __init__(
        self,
        logs: RedoLogFactory,
        crypto: Crypto,
        clock: Clock,
        policy: BackoffPolicy = DEFAULT_POLICY,
    ) -> None:
        self.crypto = crypto
        self.clock = clock
        self.policy = policy
        self.accounts: dict[str, Account] = {}
        self.groups: dict[str, Group] = {}
        self._log: RedoLog = self._open(logs)

    # -- the log ------------------------------------------------------------------------------
    def _open(self, logs: RedoLogFactory) -> RedoLog:
        if not logs.exists(AUTH_CHAIN):
            return logs.create(AUTH_CHAIN, AUTH_LOG_HEADER)
        log = logs.open(AUTH_CHAIN)
        if log.header != AUTH_LOG_HEADER:
            log.close()
            raise LogError("the auth service's log has another header: not this program's")
        for rec in log.scan():
            try:
                self._apply(decode_event(rec.meta))
            except AuthError as exc:
                log.close()
                raise LogError(
                    f"the auth service's log is damaged at {rec.position}: {exc}"
                ) from None
        return log

    def _apply(self, event: Event) -> None:
        if isinstance(event, UserCreated):
            self.accounts[event.account.record.email] = Account(event.account)
        elif isinstance(event, CodeTried):
            account = self.accounts[event.email]
            account.lockout = event.state
            account.recovery_used = account.recovery_used or event.recovery_used
        else:
            self.groups[event.group.name] = event.group

    def _record(self, event: Event) -> None:
        """Append ``event`` durably, then apply it."""
        self._log.append(LogRecord(encode(event), 0, None, True))
        self._log.sync()
        self._apply(event)

    def close(self) -> None:
        self._log.close()

    def now(self) -> float:
        return self.clock.now_ms() / 1000

    # -- lookups ------------------------------------------------------------------------------
    def account(self, email: str) -> Account:
        found = self.accounts.get(email)
        if found is None:
            raise _no_account(email)
        return found

    def group(self, name: str) -> Group:
        found = self.groups.get(name)
        if found is None:
            raise Refused(
                f"there is no group {name}: create it with `wasmer-dfs group create {name}`"
            )
        return found

    # -- users --------------------------------------------------------------------------------
    def create_user(self, req: CreateUser) -> None:
        email = req.record.email
        if email in self.accounts:
            raise Refused(f"an account for {email} exists already")
        try:
            req.record.kdf.check()
        except AuthError as exc:
            raise Refused(str(exc)) from None
        self._record(UserCreated(req))

    def login(self, email: str, proof: bytes) -> UserRecord:
        account = self.account(email)
        if not hmac.compare_digest(hashlib.sha256(proof).digest(), account.created.login_verifier):
            raise Refused(f"wrong password for {email}")
        return account.record

    def sudo(self, email: str, req: Sudo) -> bytes:
        """The sudo share for a right code (or the unused recovery code); the back-off of
        domain/auth/lockout.py otherwise, saying until when."""
        account = self.account(email)
        now = self.now()
        if req.recovery:
            good = not account.recovery_used and hmac.compare_digest(
                hashlib.sha256(req.recovery.strip().encode()).digest(),
                account.created.recovery_hash,
            )
            if good:
                state = LockoutState(0, None, account.lockout.last_step)
                self._record(CodeTried(email, state, recovery_used=True))
                return account.created.sudo_share
        outcome, state = attempt(
            account.lockout, account.created.totp_secret, req.code, now, self.policy
        )
        self._record(CodeTried(email, state))
        if isinstance(outcome, Accepted):
            return account.created.sudo_share
        what = "the recovery code is wrong or used" if req.recovery else "wrong authenticator code"
        if isinstance(outcome, Locked):
            raise Refused(
                f"{email} is locked after {state.failures} wrong codes in a row: try again"
                f" after unix time {outcome.until:.0f} (or use the recovery code)",
                outcome.until,
            )
        wait = outcome.wait_until
        if wait is None:
            raise Refused(f"{what} for {email} ({state.failures} in a row)")
        raise Refused(
            f"{what} for {email} ({state.failures} in a row): the next code is taken after"
            f" unix time {wait:.0f}",
            wait,
        )

    def details(self, email: str, self_view: bool) -> UserInfo:
        record = self.account(email).record
        info = UserInfo(b"\0" * NONCE_BYTES, email, record.normal.public, record.sudo.public)
        if not self_view:
            return info
        lockout = self.account(email).lockout
        groups = tuple(sorted(n for n, g in self.groups.items() if email in g.members))
        until = locked_until(lockout.failures, lockout.last_failure, self.now(), self.policy)
        return msgspec.structs.replace(
            info, groups=groups, failures=lockout.failures, locked_until=until
        )

    # -- groups -------------------------------------------------------------------------------
    def create_group(self, owner: str, group: Group) -> None:
        if group.name in self.groups:
            raise Refused(f"group {group.name} exists already: choose another name")
        if group.members != {owner: Role.OWNER}:
            raise Refused("a new group has exactly one member, its owner (the signer)")
        roles = sorted((e.role.value, e.epoch) for e in group.epochs)
        if roles != sorted((r.value, 0) for r in Role):
            raise Refused("a new group has epoch 0 of each of the four roles, and nothing else")
        for epoch in group.epochs:
            if epoch.group != group.name or set(epoch.sealed) != {owner}:
                raise Refused("a new group's role keys are sealed for its owner only")
        self._record(GroupSaved(group))

    def check_role_key(self, group: Group, signer: str, role: Role, epoch: int) -> RoleEpoch:
        """The current epoch of ``role`` when the signer holds it now; ``Refused`` otherwise."""
        latest = rules.latest_epoch(group, role)
        member = group.members.get(signer)
        if member is None:
            raise Refused(f"{signer} is not a member of group {group.name}")
        if latest is None or latest.epoch != epoch:
            raise Refused(
                f"the {role.value} key of group {group.name} that signed is from epoch {epoch},"
                " not the current one: run `wasmer-dfs token gather"
                f" {group.name}` and retry"
            )
        if role not in roles_held(member):
            raise Refused(f"{signer} is {member.value} of group {group.name}: no {role.value} key")
        return latest

    def update_group(self, signer: str, manager_role: Role, req: UpdateGroup) -> None:
        old = self.group(req.group.name)
        new = req.group
        if not may_manage(manager_role):
            raise Refused(
                f"members are managed with an owner or delegate key of group {old.name}, not a"
                f" {manager_role.value} key: role too low"
            )
        try:
            if req.added is not None and req.removed is None:
                self.account(req.added)
                role = new.members.get(req.added)
                if role is None:
                    raise Refused(f"the new group record does not hold {req.added}")
                expected = rules.add_member(old, signer, req.added, role)
                _check_added(old, new, expected, req.added, role)
            elif req.removed is not None and req.added is None:
                expected = rules.remove_member(old, signer, req.removed)
                _check_removed(old, new, expected, req.removed)
            else:
                raise Refused("a group update adds one member or removes one")
        except AuthError as exc:
            raise Refused(str(exc)) from None
        self._record(GroupSaved(new))

    def group_for(self, signer: str, name: str, whole: bool) -> GroupReply:
        group = self.group(name)
        role = group.members.get(signer)
        if role is None:
            raise Refused(f"{signer} is not a member of group {name}: ask an owner to add you")
        if whole:
            return GroupReply(b"\0" * NONCE_BYTES, group, True)
        epochs = tuple(
            msgspec.structs.replace(
                e, sealed={signer: e.sealed[signer]} if signer in e.sealed else {}
            )
            for e in group.epochs
        )
        part = msgspec.structs.replace(group, members={signer: role}, epochs=epochs)
        return GroupReply(b"\0" * NONCE_BYTES, part, False)


def _check_added(old: Group, new: Group, expected: Group, email: str, role: Role) -> None:
    if new.members != expected.members:
        raise Refused("the new group record changes more than the member added")
    if len(new.epochs) != len(old.epochs):
        raise Refused("adding a member starts no new epoch")
    for before, after in zip(old.epochs, new.epochs, strict=True):
        if (before.group, before.role, before.epoch, before.public) != (
            after.group,
            after.role,
            after.epoch,
            after.public,
        ):
            raise Refused("adding a member changes no epoch's public keys")
        extra = set(after.sealed) - set(before.sealed)
        if any(after.sealed.get(e) != b for e, b in before.sealed.items()) or extra - {email}:
            raise Refused("adding a member changes nobody else's sealed keys")
        if extra and after.role not in roles_held(role):
            raise Refused(f"{email} is given {after.role.value} keys a {role.value} does not hold")
    for held in roles_held(role):
        latest = rules.latest_epoch(new, held)
        if latest is None or email not in latest.sealed:
            raise Refused(f"the current {held.value} keys are not sealed for {email}")


def _check_removed(old: Group, new: Group, expected: Group, email: str) -> None:
    if new.members != expected.members:
        raise Refused("the new group record changes more than the member removed")
    if new.epochs[: len(old.epochs)] != old.epochs:
        raise Refused("removing a member keeps every older epoch as it was")
    removed_role = old.members[email]
    fresh = new.epochs[len(old.epochs) :]
    rotate = rules.roles_to_rotate(removed_role)
    if sorted(e.role.value for e in fresh) != sorted(r.value for r in rotate):
        raise Refused(
            f"removing a {removed_role.value} starts a new epoch of exactly the roles they held"
        )
    check = old
    for epoch in fresh:
        try:
            check = rules.with_epoch(check, epoch)
        except AuthError as exc:
            raise Refused(str(exc)) from None
        if set(epoch.sealed) != set(rules.holders(expected, epoch.role)):
            raise Refused(
                f"the new {epoch.role.value} keys must be sealed for exactly its remaining holders"
            )


class AuthSession:
    """One connection to the auth service: ``challenge`` first, then ``handle`` per frame."""

    def __init__(self, service: AuthService) -> None:
        self.service = service
        self.nonce = service.crypto.random(NONCE_BYTES)

    def _fresh(self) -> bytes:
        self.nonce = self.service.crypto.random(NONCE_BYTES)
        return self.nonce

    def challenge(self) -> bytes:
        return encode(Challenge(self.nonce))

    def handle(self, frame: bytes) -> bytes:
        """The reply to ``frame`` (a ``Refusal`` for anything refused or malformed)."""
        nonce = self.nonce
        try:
            reply = self._handle(frame, nonce)
        except Refused as exc:
            reply = Refusal(b"", exc.reason, exc.until)
        except AuthWireError as exc:
            reply = Refusal(b"", str(exc))
        except LogError as exc:
            _log.error("the auth service's log failed: %s", exc)
            reply = Refusal(b"", f"the auth service cannot record the change: {exc}")
        return encode(msgspec.structs.replace(reply, nonce=self._fresh()))

    def _handle(self, frame: bytes, nonce: bytes) -> Reply:
        request = decode_request(frame)
        op = decode_operation(request.body)
        service = self.service
        if isinstance(request, Plain):
            return self._plain(op)
        signer = service.account(request.signer).record
        body = request.body
        if not self._verify(signer.normal.public.sign, SIGN_NORMAL, nonce, body, request.normal):
            raise Refused(
                f"the request is not signed by the normal key of {request.signer}: generate a"
                " new token with `wasmer-dfs token generate`"
            )
        email = signer.email
        if isinstance(op, Sudo):
            return ShareReply(b"", service.sudo(email, op))
        if isinstance(op, UserDetails):
            return service.details(op.email, op.email == email)
        if isinstance(op, CreateGroup):
            sig = request.sudo
            if sig is None or not self._verify(
                signer.sudo.public.sign, SIGN_SUDO, nonce, body, sig
            ):
                raise Refused(
                    "creating a group needs a sudo token: run `wasmer-dfs token sudo --email"
                    f" {email} --code CODE` and retry"
                )
            service.create_group(email, op.group)
            return Done(b"")
        if isinstance(op, GetGroup | UpdateGroup):
            name = op.name if isinstance(op, GetGroup) else op.group.name
            group = service.group(name)
            held: Role | None = None
            if request.role is not None:
                rs = request.role
                epoch = service.check_role_key(group, email, rs.role, rs.epoch)
                if not self._verify(epoch.public.sign, SIGN_ROLE, nonce, body, rs.signature):
                    raise Refused(
                        f"the request is not signed by the {rs.role.value} key of group {name}"
                        f" (epoch {rs.epoch}): run `wasmer-dfs token gather {name}`"
                    )
                held = rs.role
            if isinstance(op, GetGroup):
                return service.group_for(email, name, whole=held is not None)
            if held is None:
                raise Refused(
                    f"changing group {name} needs its owner or delegate key: run `wasmer-dfs"
                    f" token gather {name}` and retry"
                )
            service.update_group(email, held, op)
            return Done(b"")
        raise Refused(f"a {type(op).__name__} request is not signed")

    def _plain(self, op: Operation) -> Reply:
        service = self.service
        if isinstance(op, CreateUser):
            service.create_user(op)
            return Done(b"")
        if isinstance(op, GetKdf):
            return KdfReply(b"", service.account(op.email).record.kdf)
        if isinstance(op, Login):
            return RecordReply(b"", service.login(op.email, op.proof))
        if isinstance(op, UserDetails):
            return service.details(op.email, False)
        raise Refused(f"a {type(op).__name__} request must be signed (use a token)")

    def _verify(self, key: bytes, purpose: bytes, nonce: bytes, body: bytes, sig: bytes) -> bool:
        # the port's promise: False, never an exception, for a malformed key or signature
        return self.service.crypto.verify(key, signed_bytes(purpose, nonce, body), sig)
