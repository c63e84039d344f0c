"""The chain server of a replica, found before mounting: its host resolved through the DNS port
(with DNSSEC when the chain's preset asks for it), its wire encryption checked, and, for a new
replica, the chain's header fetched (entrypoints/mounting.py calls ``find_server``)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from application.mount import MountService
from application.ports import LogError, Resolver
from application.session import SessionError
from domain.presets import Preset, PresetError, choose
from domain.presets import settings as preset_settings
from entrypoints import bootstrap
from entrypoints.console import REFUSED, USAGE, fail
from entrypoints.settings import LOCAL_CHAIN, GlobalSettings

if TYPE_CHECKING:
    from adapters.secure_channel import ClientWire
    from application.chain_token import ChainSigner

_log = logging.getLogger("wasmer_dfs")


@dataclass(slots=True)
class Server:
    """The chain server of a replica: its URL with the host resolved, the wire encryption, and
    the chain's header as the server holds it (None: this mount creates the chain)."""

    url: str
    wire: ClientWire | None
    header: bytes | None
    #: a token's signature for a chain of a user or group (ADR 0018; None: a passcode chain)
    signer: ChainSigner | None = None


def _resolved(url: str, resolver: Resolver) -> str:
    """``url`` with its host name replaced by an address from ``resolver`` (the DNS port)."""
    from urllib.parse import urlsplit, urlunsplit

    from application.ports import ResolveError

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        addr = resolver.resolve(host, port)[0][0]
    except ResolveError as exc:
        fail(f"cannot resolve {host!r}: {exc}", REFUSED)
    if addr == host:
        return url
    netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _wants_dnssec(mounts: MountService, explicit: Preset | None, header: bytes | None) -> bool:
    """Whether the preset of this mount (explicit, or recorded in the local log's header or in
    the server's ``header``) resolves the chain server's host with DNSSEC (security)."""
    try:
        preset, _ = choose(explicit, mounts.recorded_preset(LOCAL_CHAIN, header))
    except (PresetError, SessionError, LogError) as exc:
        fail(str(exc), REFUSED)
    return preset_settings(preset).dnssec


def _server_resolver(url: str, g: GlobalSettings, resolver: Resolver, dnssec: bool) -> Resolver:
    """The resolver for the chain server's host: the global one, or a DNSSEC-validating one when
    the preset asks for DNSSEC (exit 2 when it cannot: no --dns-server for a host name)."""
    import ipaddress
    from urllib.parse import urlsplit

    if not dnssec or g.dns_sec:
        return resolver
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return resolver  # an address: no DNS query is made, nothing to validate
    if host == "localhost" or host.endswith(".localhost"):
        return resolver  # the loopback (RFC 6761): answered without a query
    if g.dns_server is None:
        fail(
            f"--configured-for security resolves the chain server's host {host!r} with DNSSEC,"
            " which needs --dns-server (a validating DNS resolver reached over a trusted path;"
            " the system's resolver does not say whether an answer was validated): give"
            " --dns-server, the server's IP address, or another preset",
            USAGE,
        )
    return bootstrap.build_dnssec_resolver(g)


def _check_wire(url: str, wire: ClientWire, signer: ChainSigner | None = None) -> None:
    """One encrypted handshake with the server of an existing replica before mounting: a server
    that refuses the wire encryption, or a changed key, stops the mount (exit 3) rather than
    leaving it disconnected; an unreachable server does not (the mount starts disconnected)."""
    import asyncio

    from adapters.remote import fetch_header
    from application.ports import RemoteError, RemoteRefused

    try:
        asyncio.run(fetch_header(url, wire=wire, signer=signer))
    except RemoteRefused as exc:
        fail(f"the chain server refused: {exc}", REFUSED)
    except RemoteError as exc:
        _log.warning("%s", exc)


def _server_header(
    url: str, wire: ClientWire | None = None, signer: ChainSigner | None = None
) -> bytes | None:
    """The chain's header from the server, for a replica without a local log (None: the server
    does not hold the chain, this mount creates it). Retries with back-off until the server
    answers; exits when it refuses."""
    import asyncio

    from adapters.remote import fetch_header
    from application.ports import RemoteError, RemoteRefused

    delay = 0.2
    while True:
        try:
            return asyncio.run(fetch_header(url, wire=wire, signer=signer))
        except RemoteRefused as exc:
            fail(f"the chain server refused: {exc}", REFUSED)
        except RemoteError as exc:
            _log.warning("%s (retrying in %.1f s)", exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def find_server(
    url: str,
    preset: Preset | None,
    g: GlobalSettings,
    mounts: MountService,
    resolver: Resolver,
    creating: bool,
    signer: ChainSigner | None = None,
) -> Server:
    """The chain server of the replica of ``url`` (``preset``: the one given to the mount): its
    host resolved (with DNSSEC when the chain's preset asks for it), its wire encryption checked,
    and, for a new replica, the chain's header."""
    wire = bootstrap.build_client_wire(url, g.wire_encryption)
    dnssec = _wants_dnssec(mounts, preset, None)
    server = Server(_resolved(url, _server_resolver(url, g, resolver, dnssec)), wire, None, signer)
    if wire is not None and not creating:
        _check_wire(server.url, wire, signer)
    if creating:
        server.header = _server_header(server.url, wire, signer)
        header = server.header
        if header is not None and not dnssec and _wants_dnssec(mounts, preset, header):
            # the chain was created --configured-for security: find its server with DNSSEC from
            # now on (the header itself is checked against the passcode)
            server.url = _resolved(url, _server_resolver(url, g, resolver, True))
    return server
