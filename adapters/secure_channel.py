"""Wire encryption, the I/O half (docs/adr/0013-wire-encryption.md): ML-KEM from ``pqcrypto``,
AES-256-GCM from ``cryptography``, the server's long-lived KEM keys in its data directory, the
client's known-servers file, and the handshake over a websocket. The pure half (messages, key
schedule, frame counters) is domain/secure_wire.py.

A ``Channel`` seals every frame a connection sends and opens every frame it receives; the
``PLAIN`` channel passes frames through (a connection without wire encryption). Sealing happens
right before the websocket's ``send``, which writes an unfragmented message to the transport
before it first yields, so frames leave in the order of their counters even when several tasks
send on one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import urlsplit

import pqcrypto.kem.ml_kem_512
import pqcrypto.kem.ml_kem_768
import pqcrypto.kem.ml_kem_1024
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.secure_wire import (
    LEVELS,
    NONCE_SIZE,
    REKEY_BYTES,
    REKEY_FRAMES,
    TAG_SIZE,
    Direction,
    HandshakeError,
    KnownServerError,
    SecureAccept,
    SecureFinish,
    SecureOffer,
    check_known,
    check_offer,
    decode_accept,
    decode_finish,
    directions,
    encode,
    fingerprint,
    known_line,
    parse_known_servers,
    session_keys,
    transcript,
)
from domain.wire import Fatal, WireError

log = logging.getLogger("wasmer_dfs.wire")

_KEM: dict[int, ModuleType] = {
    128: pqcrypto.kem.ml_kem_512,
    192: pqcrypto.kem.ml_kem_768,
    256: pqcrypto.kem.ml_kem_1024,
}
KNOWN_SERVERS = "known_servers"
KEYS_DIR = "wire-keys"


class Socket(Protocol):
    async def send(self, message: bytes) -> None: ...
    async def recv(self) -> Any: ...


# --- frames --------------------------------------------------------------------------------------
class Channel:
    """Frames as they are: a connection without wire encryption."""

    encrypted = False
    overhead = 0

    def seal(self, frame: bytes) -> bytes:
        return frame

    def open(self, frame: Any) -> Any:
        return frame


PLAIN = Channel()


class SecureChannel(Channel):
    """Seals with the sending direction's key and counter; opens with the receiving direction's.
    A frame that fails to open (replayed, reordered, dropped before it, altered, or of another
    connection) is ``WireError``: the connection ends, since the counters no longer agree."""

    encrypted = True
    overhead = TAG_SIZE

    def __init__(self, send: Direction, recv: Direction, level: int) -> None:
        self._send = send
        self._recv = recv
        self.level = level
        self._send_aead: tuple[bytes, AESGCM] | None = None
        self._recv_aead: tuple[bytes, AESGCM] | None = None

    @staticmethod
    def _aead(cached: tuple[bytes, AESGCM] | None, key: bytes) -> tuple[bytes, AESGCM]:
        if cached is not None and cached[0] is key:
            return cached
        return key, AESGCM(key)

    def seal(self, frame: bytes) -> bytes:
        key, nonce, aad = self._send.next(len(frame))
        self._send_aead = cached = self._aead(self._send_aead, key)
        return cached[1].encrypt(nonce, frame, aad)

    def open(self, frame: Any) -> bytes:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise WireError("wire encryption: a text frame on an encrypted connection")
        if len(frame) < TAG_SIZE:
            raise WireError("wire encryption: a frame too short to be sealed")
        key, nonce, aad = self._recv.next(len(frame) - TAG_SIZE)
        self._recv_aead = cached = self._aead(self._recv_aead, key)
        try:
            return cached[1].decrypt(nonce, frame, aad)
        except InvalidTag:
            raise WireError(
                "wire encryption: a frame failed to open (replayed, reordered, dropped or altered"
                " on the way): closing the connection"
            ) from None


# --- KEM -----------------------------------------------------------------------------------------
def kem_keypair(level: int) -> tuple[bytes, bytes]:
    public, secret = _KEM[level].keygen()
    return bytes(public), bytes(secret)


def kem_encaps(level: int, public: bytes) -> tuple[bytes, bytes]:
    """(ciphertext, shared secret)."""
    try:
        ct, ss = _KEM[level].encaps(public)
    except ValueError as exc:
        raise HandshakeError(f"{LEVELS[level][0]} encapsulation failed: {exc}") from None
    return bytes(ct), bytes(ss)


def kem_decaps(level: int, secret: bytes, ciphertext: bytes) -> bytes:
    try:
        return bytes(_KEM[level].decaps(secret, ciphertext))
    except ValueError as exc:
        raise HandshakeError(f"{LEVELS[level][0]} decapsulation failed: {exc}") from None


# --- the server's keys ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KemKey:
    public: bytes
    secret: bytes = field(repr=False)


class ServerKeyError(Exception):
    """The server's wire keys cannot be read or created (the message says why)."""


def load_server_keys(data_dir: Path) -> dict[int, KemKey]:
    """The server's long-lived KEM key of every level, from ``DATA_DIR/wire-keys/`` (one file
    ``ml-kem-N.key`` per level: public key then secret key, mode 0600), each created when it is
    missing. A key file readable by others is refused, as ssh refuses such a private key."""
    folder = data_dir.expanduser() / KEYS_DIR
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ServerKeyError(f"cannot create {folder}: {exc}") from None
    return {level: _server_key(folder, level) for level in LEVELS}


def _server_key(folder: Path, level: int) -> KemKey:
    name, pk_size, _ = LEVELS[level]
    path = folder / f"{name.lower()}.key"
    sk_size = _KEM[level].SECRET_KEY_SIZE
    if not path.exists():
        public, secret = kem_keypair(level)
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(public + secret)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process made one meanwhile
                os.link(tmp, path)
        except OSError as exc:
            raise ServerKeyError(f"cannot create the wire key {path}: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise ServerKeyError(
                f"the wire key {path} is readable by others (mode {st.st_mode & 0o777:o}):"
                f" chmod 600 {path}"
            )
        blob = path.read_bytes()
    except OSError as exc:
        raise ServerKeyError(f"cannot read the wire key {path}: {exc}") from None
    if len(blob) != pk_size + sk_size:
        raise ServerKeyError(
            f"the wire key {path} is damaged ({len(blob)} bytes, not {pk_size + sk_size});"
            " remove it to create a new one (clients that pinned the old key will refuse the new"
            " one until their known_servers line is deleted)"
        )
    return KemKey(blob[:pk_size], blob[pk_size:])


@dataclass(frozen=True)
class ServerWire:
    """What a server does with wire encryption: its keys, and the least level it requires of
    every client (None: plain clients are served too)."""

    keys: dict[int, KemKey]
    required: int | None = None
    rekey_frames: int = REKEY_FRAMES
    rekey_bytes: int = REKEY_BYTES


class WireRefused(Exception):
    """The server ends the handshake: this reason goes to the client in ``Fatal``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def server_handshake(
    ws: Socket, offer_frame: bytes, offer: SecureOffer, wire: ServerWire | None
) -> SecureChannel:
    """The server's side, from the client's ``SecureOffer`` to the channel. ``WireRefused`` for a
    level this server does not serve; ``WireError`` for a malformed frame."""
    check_offer(offer)
    level = offer.level
    if wire is None:
        raise WireRefused("this chain server does not offer wire encryption")
    if wire.required is not None and level < wire.required:
        raise WireRefused(
            f"this chain server requires wire encryption of at least {wire.required} bits; the"
            f" client offered {level} (use --wire-encryption {wire.required} or more)"
        )
    key = wire.keys[level]
    ct_e, ss_e = kem_encaps(level, offer.ephemeral)
    accept = encode(SecureAccept(level, os.urandom(NONCE_SIZE), key.public, ct_e))
    await ws.send(accept)
    finish_frame = await ws.recv()
    finish = decode_finish(finish_frame, level)
    ss_s = kem_decaps(level, key.secret, finish.ciphertext)
    keys = session_keys(ss_e, ss_s, transcript(offer_frame, accept, bytes(finish_frame)))
    send, recv = directions(
        keys, client=False, rekey_frames=wire.rekey_frames, rekey_bytes=wire.rekey_bytes
    )
    return SecureChannel(send, recv, level)


# --- the client ----------------------------------------------------------------------------------
def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/wasmer-dfs`` (default ``~/.config/wasmer-dfs``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "wasmer-dfs"


class KnownServers:
    """The client's known-servers file: one line ``HOST:PORT LEVEL BASE64(SHA-256(key))`` per
    server and level. A server seen for the first time is pinned; another key for a pinned
    server is refused (``KnownServerError`` naming the file and the line to delete)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / KNOWN_SERVERS

    def check_or_pin(self, name: str, level: int, public_key: bytes) -> bool:
        """True when the key was pinned just now (first use), False when it was known."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise KnownServerError(
                f"cannot open the known-servers file {self.path}: {exc}"
            ) from None
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # two connections of one mount pin once
            try:
                f.seek(0)
                text = f.read().decode("utf-8", errors="replace")
            except OSError as exc:
                raise KnownServerError(f"cannot read {self.path}: {exc}") from None
            entries = parse_known_servers(text, str(self.path))
            if check_known(entries, name, level, public_key, str(self.path)):
                return False
            prefix = "" if not text or text.endswith("\n") else "\n"
            try:
                f.write((prefix + known_line(name, level, public_key)).encode())
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                raise KnownServerError(f"cannot write {self.path}: {exc}") from None
        log.warning(
            "pinned the wire encryption key of chain server %s (%s, SHA-256 %s) in %s",
            name, LEVELS[level][0], fingerprint(public_key), self.path,
        )  # fmt: skip
        return True


def server_name(url: str) -> str:
    """``host:port`` of a chain URL, as the known-servers file names servers."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ClientWire:
    """A client's wire encryption: the level it offers (and accepts nothing less or plainer),
    its known-servers file, and the server's name there (default: host:port of the URL it
    connects to; the CLI passes the host as typed, before DNS resolution)."""

    level: int
    known: KnownServers = field(default_factory=KnownServers)
    name: str | None = None
    rekey_frames: int = REKEY_FRAMES
    rekey_bytes: int = REKEY_BYTES


class ServerRefusedWire(Exception):
    """The server answered the offer with ``Fatal``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def client_handshake(ws: Socket, wire: ClientWire, url: str) -> SecureChannel:
    """The client's side: offer, check and pin the server's key, finish. ``ServerRefusedWire``
    when the server refuses (or speaks no wire encryption), ``KnownServerError`` for a changed
    key, ``WireError`` for a malformed answer. Never falls back to plain frames."""
    level = wire.level
    ephemeral_public, ephemeral_secret = kem_keypair(level)
    offer = encode(SecureOffer(level, os.urandom(NONCE_SIZE), ephemeral_public))
    await ws.send(offer)
    accept_frame = await ws.recv()
    accept = decode_accept(accept_frame, level)
    if isinstance(accept, Fatal):
        raise ServerRefusedWire(accept.reason)
    name = wire.name or server_name(url)
    await asyncio.to_thread(wire.known.check_or_pin, name, level, accept.server_key)
    ss_e = kem_decaps(level, ephemeral_secret, accept.ciphertext)
    ct_s, ss_s = kem_encaps(level, accept.server_key)
    finish = encode(SecureFinish(ct_s))
    await ws.send(finish)
    keys = session_keys(ss_e, ss_s, transcript(offer, bytes(accept_frame), finish))
    send, recv = directions(
        keys, client=True, rekey_frames=wire.rekey_frames, rekey_bytes=wire.rekey_bytes
    )
    return SecureChannel(send, recv, level)
