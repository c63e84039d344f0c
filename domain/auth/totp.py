"""Authenticator codes: HOTP (RFC 4226) and TOTP (RFC 6238) with HMAC-SHA-1, 6 digits, a 30 s
step and a window of one step either side; and the ``otpauth://`` URI an authenticator app
reads. Pure: the time comes in as an argument."""

from __future__ import annotations

import base64
import hmac
import urllib.parse

DIGITS = 6
STEP_SECONDS = 30
WINDOW = 1
#: RFC 4226 asks for at least 128 bits; 160 (the SHA-1 block) is what most apps make
SECRET_BYTES = 20


def hotp(secret: bytes, counter: int, digits: int = DIGITS) -> str:
    """The HOTP value of ``counter`` (RFC 4226 section 5.3), zero-padded to ``digits``."""
    mac = hmac.digest(secret, counter.to_bytes(8, "big"), "sha1")
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(unix_time: float, step: int = STEP_SECONDS) -> int:
    return int(unix_time // step)


def totp(secret: bytes, unix_time: float, digits: int = DIGITS, step: int = STEP_SECONDS) -> str:
    """The TOTP code at ``unix_time`` (RFC 6238: HOTP of the time step)."""
    return hotp(secret, time_step(unix_time, step), digits)


def matching_step(
    secret: bytes, code: str, unix_time: float, window: int = WINDOW, step: int = STEP_SECONDS
) -> int | None:
    """The time step within ``window`` steps of ``unix_time`` whose code is ``code``, or None.

    Anything but exactly ``DIGITS`` ASCII digits matches nothing. Every candidate is compared
    in constant time."""
    code = code.strip()
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    now = time_step(unix_time, step)
    found: int | None = None
    for candidate in range(now - window, now + window + 1):
        if candidate >= 0 and hmac.compare_digest(hotp(secret, candidate), code):
            found = candidate if found is None else found
    return found


def secret_text(secret: bytes) -> str:
    """The secret as authenticator apps take it: base32 without padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def otpauth_uri(secret: bytes, account: str, issuer: str = "wasmer-dfs") -> str:
    """``otpauth://totp/ISSUER:ACCOUNT?secret=...&issuer=...&algorithm=SHA1&digits=6&period=30``
    (the Key Uri Format that authenticator apps read, also from a QR code)."""
    label = urllib.parse.quote(f"{issuer}:{account}", safe="@:")
    query = urllib.parse.urlencode(
        {
            "secret": secret_text(secret),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_SECONDS,
        }
    )
    return f"otpauth://totp/{label}?{query}"
