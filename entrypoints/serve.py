"""`wasmer-dfs serve`: the chain server (its adapters are built in entrypoints/bootstrap.py,
the one composition root).

Register it in the CLI with ``app.command("serve")(serve)``; it also runs on its own:
``python -m entrypoints.serve --listen 127.0.0.1:5000 --data-dir DIR``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from application.chain_server import ServerConfig
from application.lock_server import LockConfig
from domain.wire import BATCH_BYTES, BATCH_EVENTS, MAX_FRAME, ServerLimits
from entrypoints.console import USAGE, fail, say
from entrypoints.settings import (
    GlobalSettings,
    OptionError,
    check_wire_level,
    global_settings,
    host_port,
)

if TYPE_CHECKING:  # the adapters load when the server is built, not with the CLI
    from adapters.metrics import MetricsServer
    from adapters.ws_server import WsChainServer

DEFAULT_DATA_DIR = Path("~/wasmer/server")

_log = logging.getLogger("wasmer_dfs.server")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); ``ValueError`` otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def server_or_exit(
    data_dir: Path,
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    wire_encryption: int | None = None,
    settings: GlobalSettings | None = None,
    store: str | None = None,
    replicas: int = 3,
    allow_anonymous: bool = True,
) -> WsChainServer:
    """The chain server, built by the composition root (loaded only when a server starts). Its
    clock follows the global --ntp-pool/--ntp-port/--no-ntp of ``settings`` (it decides which
    events lie too far in the future). ``wire_encryption``: the least level of wire encryption
    every client must use (None: plain clients too); exit 1 when its keys cannot be had.
    ``store``: the chains' JetStream cluster (``nats://H:P[,H:P...]``, ADR 0022); exit 2 when
    it is unreachable, has no JetStream or a stream of fewer than ``replicas`` replicas."""
    from adapters.chain_store_nats import NatsRefused
    from adapters.secure_channel import ServerKeyError
    from application.ports import LogError
    from entrypoints.bootstrap import build_clock, build_server

    try:
        clock = build_clock(settings or GlobalSettings())
    except OptionError as exc:
        fail(str(exc), USAGE)
    try:
        return build_server(
            data_dir, config, host, port, clock, wire_encryption, store=store, replicas=replicas,
            allow_anonymous=allow_anonymous,
        )  # fmt: skip
    except ServerKeyError as exc:
        fail(str(exc), 1)
    except NatsRefused as exc:
        fail(f"--store: {exc}", USAGE)
    except LogError as exc:  # the auth service's log (data_dir/auth/)
        fail(f"cannot open the auth service's log in {data_dir}: {exc}", 1)


async def run_server(server: WsChainServer, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or ``stop``), then shut down gracefully; under systemd
    (``$NOTIFY_SOCKET``), say READY=1 once the server listens."""
    from adapters.sd_notify import notify

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        say(f"serving chains at {server.url}/db/NAME")
        if server.auth is not None:
            say(f"auth service at {server.url}/auth")
        if server.wire is not None and server.wire.required is not None:
            say(f"wire encryption of at least {server.wire.required} bits required")
        notify("READY=1\nSTATUS=serving chains")  # Type=notify under systemd (no-op otherwise)
        await stop.wait()
        notify("STOPPING=1")
        say("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.close()


def serve(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option("--listen", "-l", help="Address to listen on, HOST:PORT (clients connect to ws://HOST:PORT/db/NAME)")] = "127.0.0.1:5000",  # noqa: E501
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Directory of the chains' redo logs (one NAME.log per chain)")] = DEFAULT_DATA_DIR,  # noqa: E501
    clock_tolerance: Annotated[float, typer.Option("--clock-tolerance", help="Seconds an event's timestamp may lie in the future")] = 30.0,  # noqa: E501
    max_frame: Annotated[int, typer.Option("--max-frame", help="Largest frame accepted, in bytes (larger ones close the connection)")] = MAX_FRAME,  # noqa: E501
    max_lag: Annotated[int, typer.Option("--max-lag", help="Bytes a live subscriber may lag before it is disconnected as too slow")] = 64 * 1024 * 1024,  # noqa: E501
    send_timeout: Annotated[float, typer.Option("--send-timeout", help="Seconds a frame may take to reach a client before it is disconnected as too slow")] = 30.0,  # noqa: E501
    read_only: Annotated[bool, typer.Option("--read-only", help="Serve the chains but refuse every commit")] = False,  # noqa: E501
    no_create: Annotated[bool, typer.Option("--no-create", help="Refuse to create chains that do not exist")] = False,  # noqa: E501
    lock_lease: Annotated[float, typer.Option("--lock-lease", help="Seconds after a client's last message before its file locks are freed")] = 10.0,  # noqa: E501
    lock_grace: Annotated[float | None, typer.Option("--lock-grace", help="Seconds after a start during which only locks held before are granted again (default: the lease)")] = None,  # noqa: E501
    wire_encryption: Annotated[int | None, typer.Option("--wire-encryption", help="Require quantum resistant wire encryption (ML-KEM + AES-256-GCM) of at least 128, 192 or 256 bits from every client; without it plain and encrypted clients are both served (also the global --wire-encryption)")] = None,  # noqa: E501
    metrics: Annotated[str | None, typer.Option("--metrics", help="Expose Prometheus metrics (connections, chains, commits, bytes, lock waits) at http://HOST:PORT/metrics")] = None,  # noqa: E501
    store: Annotated[str | None, typer.Option("--store", help="Keep the chains in a NATS JetStream cluster, nats://HOST:PORT[,HOST:PORT...], shared by any number of servers (default: redo logs in --data-dir, which then holds only the wire keys)")] = None,  # noqa: E501
    replicas: Annotated[int, typer.Option("--replicas", help="With --store: the replicas the chains' stream must have (created with them when missing; a stream with fewer is refused)")] = 3,  # noqa: E501
    allow_anonymous: Annotated[bool, typer.Option("--allow-anonymous/--no-anonymous", help="Create and write chains for connections without a token (passcode chains); --no-anonymous: only chains of users and groups, mounted with --token (ADR 0018)")] = True,  # noqa: E501
) -> None:  # fmt: skip
    """Run a chain server: many chains, each at ws://HOST:PORT/db/NAME. It validates every event
    (format, signatures, authorisation, timestamps) and never holds a key that decrypts."""
    settings = global_settings(ctx)
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        fail(str(exc), USAGE)
    if (
        clock_tolerance < 0 or max_frame < 64 * 1024 or max_lag < 0 or send_timeout <= 0
        or lock_lease <= 0 or (lock_grace is not None and lock_grace < 0)
    ):  # fmt: skip
        fail("a limit is out of range", USAGE)
    if wire_encryption is None:
        wire_encryption = settings.wire_encryption  # `wasmer-dfs --wire-encryption N serve`
    try:
        check_wire_level(wire_encryption)
        metrics_at = None if metrics is None else host_port(metrics, "--metrics")
    except OptionError as exc:
        fail(str(exc), USAGE)
    if store is not None:
        from adapters.chain_store_nats import parse_servers

        try:
            parse_servers(store)
        except ValueError as exc:
            fail(f"--store: {exc}", USAGE)
        if not 1 <= replicas <= 5:
            fail("--replicas must be 1 to 5 (JetStream's limit)", USAGE)
    limits = ServerLimits(
        max_frame=max_frame,
        batch_events=BATCH_EVENTS,
        batch_bytes=BATCH_BYTES,
        tolerance_ms=int(clock_tolerance * 1000),
    )
    config = ServerConfig(
        limits=limits,
        max_lag_bytes=max_lag,
        send_timeout=send_timeout,
        create_chains=not no_create,
        read_only=read_only,
        locks=LockConfig(lease=lock_lease, grace=lock_grace),
    )
    server = server_or_exit(
        data_dir, config, host, port, wire_encryption, settings, store=store, replicas=replicas,
        allow_anonymous=allow_anonymous,
    )  # fmt: skip
    exporter = None if metrics_at is None else _metrics(metrics_at, server)
    try:
        asyncio.run(run_server(server))
    except OSError as exc:
        fail(f"cannot serve on {listen}: {exc}", 1)
    finally:
        if exporter is not None:
            exporter.close()


def _metrics(at: tuple[str, int], server: WsChainServer) -> MetricsServer:
    """--metrics: prometheus_client's HTTP server for ``server``'s counters, listening before
    the chain server starts (exit 2 when it cannot)."""
    from entrypoints.bootstrap import build_server_metrics

    try:
        exporter = build_server_metrics(*at, server)
    except OSError as exc:
        fail(f"--metrics: cannot listen on {at[0]}:{at[1]}: {exc.strerror or exc}", USAGE)
    say(f"metrics at http://{at[0]}:{exporter.port}/metrics")
    return exporter


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="wasmer-dfs: %(levelname)s: %(name)s: %(message)s"
    )
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve)
    app()


if __name__ == "__main__":
    main()
