"""The key hierarchy of users, groups and tokens (issue 14, docs/adr/0018), over the ``Crypto``
port: making a user's key sets from a password and unsealing them, sealing a role's keys for a
member and unsealing them, making a group, adding and removing members (removal rotates the
removed member's roles), and building and reading tokens (optionally sealed under a
passphrase). No I/O and no clock: times come in as arguments; the auth server and the CLI
build on this."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from application.ports import Crypto, CryptoError, KdfParams
from domain.auth import groups as rules
from domain.auth.errors import AuthError, MembershipError, PermissionRefused, TokenError
from domain.auth.kdf import hkdf_sha256
from domain.auth.records import (
    Group,
    KeySet,
    PasswordKdf,
    PublicKeys,
    RoleEpoch,
    RoleKeys,
    SealedForMember,
    SealedKeySet,
    UserRecord,
    check_email,
    check_group_name,
    key_set_context,
    login_context,
    role_seal_context,
)
from domain.auth.roles import ORDER, Role, roles_held
from domain.auth.token import (
    SEALED_AAD,
    TOKEN_VERSION,
    ClearToken,
    Token,
    clear_text,
    read_text,
    read_token_body,
    sealed_text,
    token_body,
)
from domain.auth.totp import SECRET_BYTES

#: Argon2id (iterations, memory KiB, lanes) for passwords and token passphrases: the chain
#: header's default cost (~0.16 s here)
DEFAULT_PASSWORD_KDF = (3, 64 * 1024, 4)
SALT_BYTES = 16
SUDO_SHARE_BYTES = 32
DEFAULT_TOKEN_LIFETIME = 30 * 24 * 3600


class WrongPassword(AuthError):
    """The password (or, for the sudo keys, the sudo share) does not open the sealed keys."""


class NoRoleKeys(AuthError):
    """Nothing in the group is sealed for this member, or it does not open with their keys."""


@dataclass(frozen=True, slots=True)
class NewAccount:
    """A new user: the record the server keeps, and the two secrets it keeps beside it - the
    authenticator secret (to check codes) and the sudo share (given out only for a valid code;
    without it the sudo keys do not unseal, even with the password)."""

    record: UserRecord
    totp_secret: bytes
    sudo_share: bytes


class AuthKeys:
    """Makes, seals and unseals the keys of users, groups and tokens."""

    def __init__(
        self, crypto: Crypto, password_kdf: tuple[int, int, int] = DEFAULT_PASSWORD_KDF
    ) -> None:
        self.crypto = crypto
        self.password_kdf = password_kdf

    # -- key sets -------------------------------------------------------------------------

    def new_key_set(self) -> KeySet:
        """A fresh ML-DSA-65 pair, ML-KEM-768 pair and AES-256 key."""
        sign_public, sign_secret = self.crypto.sign_keypair()
        kem_public, kem_secret = self.crypto.kem_keypair()
        return KeySet(sign_public, sign_secret, kem_public, kem_secret, self.crypto.random(32))

    def _new_kdf(self) -> PasswordKdf:
        iterations, memory_kib, lanes = self.password_kdf
        return PasswordKdf(self.crypto.random(SALT_BYTES), iterations, memory_kib, lanes)

    def _password_key(self, secret: bytes, kdf: PasswordKdf) -> bytes:
        kdf.check()
        return self.crypto.derive_key(
            secret, KdfParams(kdf.salt, kdf.iterations, kdf.memory_kib, kdf.lanes)
        )

    @staticmethod
    def _sealing_key(password_key: bytes, email: str, which: str, share: bytes = b"") -> bytes:
        return hkdf_sha256(password_key, salt=share, info=key_set_context(email, which))

    def _seal_key_set(self, key: bytes, keys: KeySet, context: bytes) -> SealedKeySet:
        sealed = self.crypto.seal(key, msgspec.msgpack.encode(keys), context)
        return SealedKeySet(keys.public(), sealed)

    @staticmethod
    def _open_key_set(crypto: Crypto, key: bytes, sealed: SealedKeySet, context: bytes) -> KeySet:
        plain = crypto.open(key, sealed.sealed, context)
        try:
            keys = msgspec.msgpack.decode(plain, type=KeySet)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AuthError(f"the sealed keys are malformed: {exc}") from None
        if keys.public() != sealed.public:
            raise AuthError("the sealed keys do not match the record's public keys: refused")
        return keys

    # -- users ----------------------------------------------------------------------------

    def create_user(self, email: str, password: bytes) -> tuple[NewAccount, KeySet]:
        """A new account for ``email`` and its normal keys in clear. The private parts of both
        key sets are sealed under keys derived from ``password`` (Argon2id, fresh salt); the
        sudo set's key also needs the sudo share."""
        check_email(email)
        if not password:
            raise AuthError("the password is empty: choose one")
        kdf = self._new_kdf()
        password_key = self._password_key(password, kdf)
        share = self.crypto.random(SUDO_SHARE_BYTES)
        normal, sudo = self.new_key_set(), self.new_key_set()
        record = UserRecord(
            email=email,
            kdf=kdf,
            normal=self._seal_key_set(
                self._sealing_key(password_key, email, "normal"),
                normal,
                key_set_context(email, "normal"),
            ),
            sudo=self._seal_key_set(
                self._sealing_key(password_key, email, "sudo", share),
                sudo,
                key_set_context(email, "sudo"),
            ),
        )
        return NewAccount(record, self.crypto.random(SECRET_BYTES), share), normal

    def unseal_normal(self, record: UserRecord, password: bytes) -> KeySet:
        """The user's normal keys; ``WrongPassword`` when ``password`` is not theirs."""
        key = self._sealing_key(self._password_key(password, record.kdf), record.email, "normal")
        try:
            return self._open_key_set(
                self.crypto, key, record.normal, key_set_context(record.email, "normal")
            )
        except CryptoError:
            raise WrongPassword(f"wrong password for {record.email}") from None

    def unseal_sudo(self, record: UserRecord, password: bytes, sudo_share: bytes) -> KeySet:
        """The user's sudo keys: needs the password and the share the server gives out for a
        valid authenticator code."""
        key = self._sealing_key(
            self._password_key(password, record.kdf), record.email, "sudo", sudo_share
        )
        try:
            return self._open_key_set(
                self.crypto, key, record.sudo, key_set_context(record.email, "sudo")
            )
        except CryptoError:
            raise WrongPassword(
                f"wrong password for {record.email} (or a stale sudo share)"
            ) from None

    def login_proof(self, email: str, password: bytes, kdf: PasswordKdf) -> bytes:
        """What proves the password to the auth service before it hands out the sealed record
        (so nobody else gets it to guess at): HKDF of the password key, independent of the
        sealing keys; the server keeps only its SHA-256."""
        return hkdf_sha256(self._password_key(password, kdf), salt=b"", info=login_context(email))

    # -- role keys ------------------------------------------------------------------------

    def seal_role(
        self, group: str, role: Role, epoch: int, keys: KeySet, email: str, member: PublicKeys
    ) -> SealedForMember:
        """``keys`` sealed for ``email``: ML-KEM-768 to the member's KEM key, HKDF of the
        shared secret bound to (group, role, epoch, email), AES-256-GCM."""
        context = role_seal_context(group, role, epoch, email)
        ciphertext, shared = self.crypto.kem_encapsulate(member.kem)
        key = hkdf_sha256(shared, salt=ciphertext[:32], info=context)
        sealed = self.crypto.seal(key, msgspec.msgpack.encode(keys), context)
        return SealedForMember(ciphertext, sealed)

    def unseal_role(self, epoch: RoleEpoch, email: str, member: KeySet) -> RoleKeys:
        """The role keys of ``epoch`` sealed for ``email``, opened with the member's keys;
        ``NoRoleKeys`` when the epoch holds nothing for them or it does not open."""
        blob = epoch.sealed.get(email)
        if blob is None:
            raise NoRoleKeys(
                f"{email} holds no {epoch.role.value} keys of group {epoch.group}"
                f" (epoch {epoch.epoch})"
            )
        context = role_seal_context(epoch.group, epoch.role, epoch.epoch, email)
        try:
            shared = self.crypto.kem_decapsulate(member.kem_secret, blob.kem_ciphertext)
            key = hkdf_sha256(shared, salt=blob.kem_ciphertext[:32], info=context)
            keys = self._open_key_set(
                self.crypto, key, SealedKeySet(epoch.public, blob.sealed), context
            )
        except CryptoError:
            raise NoRoleKeys(
                f"the {epoch.role.value} keys of group {epoch.group} (epoch {epoch.epoch}) do"
                f" not open with the keys of {email}: not sealed for them, or altered"
            ) from None
        return RoleKeys(epoch.group, epoch.role, epoch.epoch, keys)

    def _epoch(
        self, group: str, role: Role, epoch: int, members: Mapping[str, PublicKeys]
    ) -> tuple[RoleEpoch, RoleKeys]:
        keys = self.new_key_set()
        sealed = {
            email: self.seal_role(group, role, epoch, keys, email, public)
            for email, public in sorted(members.items())
        }
        return RoleEpoch(group, role, epoch, keys.public(), sealed), RoleKeys(
            group, role, epoch, keys
        )

    def create_group(
        self, name: str, owner: str, owner_public: PublicKeys
    ) -> tuple[Group, list[RoleKeys]]:
        """A group whose owner holds epoch 0 of every role's keys."""
        group = rules.new_group(check_group_name(name), check_email(owner))
        made: list[RoleKeys] = []
        for role in ORDER:
            epoch, keys = self._epoch(name, role, 0, {owner: owner_public})
            group = rules.with_epoch(group, epoch)
            made.append(keys)
        return group, made

    def add_member(
        self,
        group: Group,
        actor: str,
        actor_keys: Iterable[RoleKeys],
        email: str,
        role: Role,
        member: PublicKeys,
    ) -> Group:
        """``group`` with ``email`` added as ``role``: every epoch of every role it holds that
        the actor's gathered keys open is sealed for the new member (so they read the group's
        past too); the latest epoch of each is required."""
        changed = rules.add_member(group, actor, check_email(email), role)
        have = {(k.group, k.role, k.epoch): k for k in actor_keys}
        epochs: list[RoleEpoch] = []
        for epoch in changed.epochs:
            keys = have.get((epoch.group, epoch.role, epoch.epoch))
            if epoch.role in roles_held(role) and keys is not None:
                blob = self.seal_role(
                    epoch.group, epoch.role, epoch.epoch, keys.keys, email, member
                )
                epoch = msgspec.structs.replace(epoch, sealed={**epoch.sealed, email: blob})
            epochs.append(epoch)
        changed = msgspec.structs.replace(changed, epochs=tuple(epochs))
        for held in roles_held(role):
            latest = rules.latest_epoch(changed, held)
            if latest is None or email not in latest.sealed:
                raise PermissionRefused(
                    f"{actor} does not hold the current {held.value} keys of group"
                    f" {group.name}: run `wasmer-dfs token gather {group.name}` and retry"
                )
        return changed

    def remove_member(
        self, group: Group, actor: str, email: str, publics: Mapping[str, PublicKeys]
    ) -> tuple[Group, list[RoleKeys]]:
        """``group`` without ``email``, and a new epoch of every role they held, sealed only for
        the remaining holders of it (``publics``: their public keys, by email). Older epochs
        are kept: the removed member had them already, and they still read older files."""
        removed = rules.role_of(group, email)
        changed = rules.remove_member(group, actor, email)
        assert removed is not None  # remove_member refused a non-member
        made: list[RoleKeys] = []
        for role in rules.roles_to_rotate(removed):
            holders = rules.holders(changed, role)
            missing = [h for h in holders if h not in publics]
            if missing:
                raise MembershipError(
                    f"no public keys for {', '.join(missing)}: cannot rotate {role.value} keys"
                )
            latest = rules.latest_epoch(changed, role)
            number = 0 if latest is None else latest.epoch + 1
            epoch, keys = self._epoch(group.name, role, number, {h: publics[h] for h in holders})
            changed = rules.with_epoch(changed, epoch)
            made.append(keys)
        return changed, made

    def gather(self, group: Group, email: str, member: KeySet) -> list[RoleKeys]:
        """Every role key of ``group`` sealed for ``email`` (each role, each epoch) - what
        ``token gather`` adds to a token; ``NoRoleKeys`` when there is none."""
        found = [self.unseal_role(e, email, member) for e in group.epochs if email in e.sealed]
        if not found:
            raise NoRoleKeys(f"{email} holds no keys of group {group.name}: not a member")
        return found

    # -- tokens ---------------------------------------------------------------------------

    @staticmethod
    def build_token(
        email: str,
        issuer: str,
        now: float,
        normal: KeySet,
        sudo: KeySet | None = None,
        roles: Sequence[RoleKeys] = (),
        lifetime: int = DEFAULT_TOKEN_LIFETIME,
    ) -> Token:
        """A token valid from ``now`` for ``lifetime`` seconds."""
        if lifetime <= 0:
            raise AuthError(f"a token lifetime must be positive, not {lifetime}")
        try:
            token = Token(
                TOKEN_VERSION,
                email,
                issuer,
                int(now),
                int(now) + lifetime,
                normal,
                sudo,
                tuple(roles),
            )
            return read_token_body(token_body(token))  # the same bounds a reader applies
        except TokenError as exc:
            raise AuthError(f"cannot build the token: {exc}") from None

    def token_text(self, token: Token, passphrase: bytes | None = None) -> str:
        """The text of ``token``, sealed under ``passphrase`` (Argon2id, fresh salt, AES-256-GCM)
        when one is given."""
        if passphrase is None:
            return clear_text(token)
        if not passphrase:
            raise AuthError("the token passphrase is empty: give one, or none to write it in clear")
        kdf = self._new_kdf()
        sealed = self.crypto.seal(
            self._password_key(passphrase, kdf), token_body(token), SEALED_AAD
        )
        return sealed_text(kdf, sealed)

    def read_token(self, text: str | bytes, now: float, passphrase: bytes | None = None) -> Token:
        """The token in ``text``; ``TokenError`` when it is malformed, sealed and the passphrase
        is missing or wrong, or expired at ``now``."""
        found = read_text(text)
        if isinstance(found, ClearToken):
            token = found.token
        else:
            if passphrase is None:
                raise TokenError(
                    "the token is sealed under a passphrase: give it (--token-passphrase)"
                )
            try:
                key = self._password_key(passphrase, found.kdf)
                body = self.crypto.open(key, found.sealed, SEALED_AAD)
            except AuthError as exc:
                raise TokenError(f"the sealed token is damaged: {exc}") from None
            except CryptoError:
                raise TokenError("wrong token passphrase, or the token was altered") from None
            token = read_token_body(body)
        if token.expired(now):
            raise TokenError(
                f"the token of {token.email} expired at unix time {token.expires_at}:"
                " generate a new one with `wasmer-dfs token generate`"
            )
        return token
