"""The JetStream chain store (application/ports/chain_store.py, docs/adr/0022): a chain is the
subject ``wdfs.chain.<hex of its name>`` of one replicated stream; its first message is the
header, every further message one whole transaction. An append carries
``Nats-Expected-Last-Subject-Sequence`` (the stream sequence of the chain's last message this
store knows), so JetStream refuses it when another writer appended first: two servers can never
fork a chain. Positions number transactions (adapters/chain_store_index.py), so they are the
same on every server.

nats-py is asyncio; the port is synchronous (ADR 0002), so the factory runs its client on a
thread of its own with its own event loop, and every call waits for its coroutine there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from array import array
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StorageType, StreamConfig

from adapters.chain_store_index import check_transaction, index_at, numbered, position_of
from application.ports.chain_store import (
    ChainStore,
    ChainStoreFactory,
    StoreConflict,
    StoredRecord,
    StoredTransaction,
    StoreError,
    StoreExists,
    StoreNotFound,
    StoreUnavailable,
)

_log = logging.getLogger("wasmer_dfs.nats")

T = TypeVar("T")

DEFAULT_STREAM = "WDFS_CHAINS"
DEFAULT_PREFIX = "wdfs.chain"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
KIND = "Wdfs-Kind"
INDEX = "Wdfs-Index"
MSG_ID = "Nats-Msg-Id"
#: JetStream's "wrong last sequence" (JSStreamWrongLastSequenceErrF)
WRONG_LAST_SEQUENCE = 10071
#: JetStream's "temporarily unavailable" (no meta leader yet, e.g. a cluster just started)
TEMPORARILY_UNAVAILABLE = 10008

_Record = tuple[bytes, int, bytes | None, bool]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[bytes, int, bytes | None, bool]])


class NatsRefused(StoreError):
    """The cluster is not one the store can use: unreachable, no JetStream, or a stream with
    fewer replicas than asked. The message says which, for a human."""


def parse_servers(url: str) -> list[str]:
    """``nats://H:P[,H:P...]`` as nats-py's list of server URLs; ``ValueError`` when malformed."""
    if not url.startswith("nats://"):
        raise ValueError(f"a NATS store is nats://HOST:PORT[,HOST:PORT...], not {url!r}")
    servers = []
    for part in url[len("nats://") :].split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} in {url!r} is not HOST:PORT")
        servers.append(f"nats://{host}:{port}")
    return servers


def subject_of(prefix: str, chain: str) -> str:
    """The chain's subject (hex: a name may hold characters a subject token may not)."""
    return f"{prefix}.{chain.encode().hex()}"


class _Thread:
    """An asyncio loop on a daemon thread; ``run`` waits for a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return  # stopped before
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class NatsChainStore(ChainStore):
    """One chain: the stream sequence of its header and of every transaction it knows (8 bytes
    each; data is read from the stream when asked)."""

    def __init__(self, factory: NatsChainStoreFactory, name: str, header: bytes, seq: int) -> None:
        self.name = name
        self._factory = factory
        self._subject = factory.subject(name)
        self._header = header
        #: _seqs[0] the header's stream sequence, _seqs[n] transaction n's
        self._seqs = array("q", [seq])
        #: the stream sequence of the last message of the subject this store has seen: the last
        #: transaction's, or that of a void claim after it (see ``append``)
        self._last_seq = seq
        self._sub: Subscription | None = None
        self._closed = False

    @property
    def header(self) -> bytes:
        return self._header

    @property
    def start(self) -> int:
        return position_of(1)

    @property
    def end(self) -> int:
        return position_of(len(self._seqs))

    @property
    def durable_end(self) -> int:
        # what JetStream acknowledged is stored on a quorum of the stream's replicas
        return self.end

    def append(self, records: Sequence[StoredRecord], expected_end: int) -> StoredTransaction:
        check_transaction(records)
        self._check_open()
        if expected_end != self.end:
            raise StoreConflict(
                f"chain {self.name!r}: this store is at {self.end}, not at {expected_end}",
                end=self.end,
            )
        index = len(self._seqs)
        payload = _encoder.encode([(r.meta, r.fmt, r.data, r.commit) for r in records])
        base = self._last_seq
        # the same id for every attempt of this append on this base: a retry after a lost
        # answer (a NATS node killed, a leader election) is deduplicated by JetStream, which
        # answers with the first attempt's sequence instead of storing it twice
        msg_id = hashlib.sha256(b"%s|%d|%d|" % (self._subject.encode(), index, base) + payload)
        headers = {
            EXPECTED_LAST_SUBJECT_SEQ: str(base),
            MSG_ID: msg_id.hexdigest(),
            KIND: "tx",
            INDEX: str(index),
        }
        factory = self._factory
        try:
            ack = factory.retrying(
                lambda: factory.js.publish(
                    self._subject, payload, headers=dict(headers), stream=factory.stream
                )
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise StoreConflict(
                    f"chain {self.name!r}: another server appended after transaction {index - 1}"
                ) from None
            raise StoreError(f"chain {self.name!r}: JetStream refused the append: {exc}") from None
        # nats-server 2.9 checks the expected last subject sequence against what its stream
        # has applied, not against appends still in its Raft log: two concurrent appends on one
        # base can both be acknowledged (found by the racing-writers property test). So a
        # transaction's index belongs to the first message claiming it after transaction
        # index - 1; a later claim is void, and every reader skips it (``catch_up``).
        first = self._factory.next_on(self._subject, self._last_seq + 1)
        if first is None or first.seq != ack.seq:
            self._last_seq = max(self._last_seq, ack.seq)
            raise StoreConflict(
                f"chain {self.name!r}: another server claimed transaction {index} first"
            )
        self._seqs.append(ack.seq)
        self._last_seq = ack.seq
        return numbered(index, records)

    def read(self, start: int, limit: int | None = None) -> Iterator[StoredTransaction]:
        self._check_open()
        first = index_at(start)
        last = len(self._seqs) - 1 if limit is None else index_at(limit) - 1
        if first > len(self._seqs) or last >= len(self._seqs):
            raise StoreError(f"position {max(start, limit or 0)} lies beyond the end {self.end}")
        for index in range(first, last + 1):
            msg = self._factory.message(self._seqs[index])
            yield numbered(index, self._records(msg, index))

    def catch_up(self) -> list[StoredTransaction]:
        self._check_open()
        found: list[StoredTransaction] = []
        after = self._seqs[-1]
        while True:
            msg = self._factory.next_on(self._subject, after + 1)
            if msg is None:
                return found
            assert msg.seq is not None
            after = msg.seq
            self._last_seq = max(self._last_seq, msg.seq)
            index = len(self._seqs)
            claimed = (msg.headers or {}).get(INDEX, "")
            if claimed.isdigit() and int(claimed) < index:
                continue  # a void claim: an append that lost a race (see ``append``)
            records = self._records(msg, index)
            self._seqs.append(msg.seq)
            found.append(numbered(index, records))

    def _records(self, msg: RawStreamMsg, index: int) -> list[StoredRecord]:
        headers = msg.headers or {}
        if headers.get(KIND) != "tx" or headers.get(INDEX) != str(index):
            raise StoreError(
                f"chain {self.name!r}: stream message {msg.seq} is not transaction {index}"
                f" (kind {headers.get(KIND)!r}, index {headers.get(INDEX)!r})"
            )
        try:
            rows = _decoder.decode(msg.data or b"")
        except msgspec.DecodeError as exc:
            raise StoreError(
                f"chain {self.name!r}: transaction {index} is damaged: {exc}"
            ) from None
        records = [StoredRecord(meta, fmt, data, commit) for meta, fmt, data, commit in rows]
        try:
            check_transaction(records)
        except ValueError as exc:
            raise StoreError(f"chain {self.name!r}: transaction {index}: {exc}") from None
        return records

    def sync(self) -> None:
        """Nothing to do: an acknowledged append is stored on a quorum already."""

    def watch(self, wake: Callable[[], None]) -> None:
        async def on_message(_msg: Msg) -> None:
            wake()

        self._sub = self._factory.call(self._factory.nc.subscribe(self._subject, cb=on_message))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store of chain {self.name!r} is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(StoreError, nats.errors.Error):
                self._factory.call(sub.unsubscribe())


class NatsChainStoreFactory(ChainStoreFactory):
    """Chains in the stream ``stream`` of the JetStream cluster at ``servers``.

    Connecting checks the cluster: JetStream enabled, the stream there (created when missing,
    with ``replicas`` replicas) with at least ``replicas`` replicas; ``NatsRefused`` otherwise.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        replicas: int = 3,
        stream: str = DEFAULT_STREAM,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 10.0,
    ) -> None:
        self.servers = list(servers)
        self.replicas = replicas
        self.stream = stream
        self.prefix = prefix
        self.timeout = timeout
        self._closing = False
        self._thread = _Thread()
        try:
            self.nc: NatsClient = self._thread.run(self._connect(), timeout * 2)
            #: requests of the stores: a short timeout, repeated (``retrying``)
            self.js: JetStreamContext = self.nc.jetstream(timeout=min(timeout, 3.0))
            self._admin: JetStreamContext = self.nc.jetstream(timeout=timeout)
            self._thread.run(self._check_cluster(), timeout * 3)
        except BaseException:
            self.close()
            raise

    # -- connecting ----------------------------------------------------------------------------
    async def _connect(self) -> NatsClient:
        async def quiet(exc: Exception) -> None:
            if not self._closing:
                _log.warning("nats: %s: %s", type(exc).__name__, exc)

        async def disconnected() -> None:
            if self._closing:
                return
            _log.warning("nats: disconnected from the cluster; reconnecting")

        try:
            return await asyncio.wait_for(
                nats.connect(
                    servers=self.servers,
                    connect_timeout=min(self.timeout, 5.0),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=quiet,
                    disconnected_cb=disconnected,
                ),
                self.timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            where = ", ".join(self.servers)
            raise NatsRefused(
                f"cannot connect to the NATS cluster at {where}: {exc or 'timeout'}"
            ) from None

    async def _check_cluster(self) -> None:
        where = ", ".join(self.servers)
        deadline = time.monotonic() + self.timeout * 2
        probe = self.nc.jetstream(
            timeout=1.0
        )  # a cluster just started answers once it has a leader
        while True:
            try:
                await probe.account_info()
                break
            except nats.js.errors.APIError as exc:
                if exc.err_code == TEMPORARILY_UNAVAILABLE and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)  # a cluster electing its meta leader
                    continue
                raise NatsRefused(
                    f"the NATS cluster at {where} has no JetStream: {exc.description or exc}"
                ) from None
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
                raise NatsRefused(
                    f"the NATS cluster at {where} has no JetStream (start nats-server with -js"
                    " or a jetstream block)"
                ) from None
            except nats.errors.TimeoutError:
                if time.monotonic() < deadline:
                    continue
                raise NatsRefused(f"the NATS cluster at {where} does not answer") from None
        try:
            info = await self._admin.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                allow_direct=True,
            )
            try:
                info = await self._admin.add_stream(config)
            except nats.js.errors.APIError as exc:
                raise NatsRefused(
                    f"the NATS cluster at {where} cannot hold stream {self.stream!r} with"
                    f" {self.replicas} replicas: {exc.description or exc}"
                ) from None
        have = info.config.num_replicas or 1
        if have < self.replicas:
            raise NatsRefused(
                f"stream {self.stream!r} on the NATS cluster at {where} has {have} replica(s);"
                f" {self.replicas} were asked (--replicas)"
            )
        if self.nc.max_payload < 8 * 1024 * 1024 + 64 * 1024:
            _log.warning(
                "the NATS cluster takes messages of at most %d bytes: larger commits are refused"
                " (set max_payload: 16MB in nats-server's configuration)",
                self.nc.max_payload,
            )

    # -- helpers for the stores ------------------------------------------------------------------
    def subject(self, chain: str) -> str:
        return subject_of(self.prefix, chain)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's thread; a lost cluster is ``StoreUnavailable``."""
        try:
            return self._thread.run(coro, self.timeout + 1)
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise StoreUnavailable(f"the NATS cluster did not answer in time: {exc}") from None
        except (nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError):
            raise StoreUnavailable("JetStream is unavailable (no quorum?)") from None
        except (nats.errors.ConnectionClosedError, nats.errors.NoServersError) as exc:
            raise StoreUnavailable(f"the NATS connection is lost: {exc}") from None

    def retrying(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``call`` a request that may be repeated, again after a lost answer (a node killed,
        a reconnection, a leader election), for up to twice the timeout."""
        deadline = time.monotonic() + self.timeout * 2
        while True:
            try:
                return self.call(make())
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def message(self, seq: int) -> RawStreamMsg:
        """The stream's message at sequence ``seq``."""
        return self.retrying(lambda: self.js.get_msg(self.stream, seq=seq))

    def next_on(self, subject: str, seq: int) -> RawStreamMsg | None:
        """The first message of ``subject`` at stream sequence ``seq`` or after (None: none)."""
        try:
            return self.retrying(
                lambda: self.js.get_msg(self.stream, seq=seq, subject=subject, next=True)
            )
        except nats.js.errors.NotFoundError:
            return None

    # -- the factory -----------------------------------------------------------------------------
    def exists(self, chain: str) -> bool:
        return self.next_on(self.subject(chain), 1) is not None

    def create(self, chain: str, header: bytes) -> ChainStore:
        headers = {EXPECTED_LAST_SUBJECT_SEQ: "0", KIND: "header", INDEX: "0"}
        try:
            ack = self.call(
                self.js.publish(self.subject(chain), header, headers=headers, stream=self.stream)
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise StoreExists(f"chain {chain!r} exists") from None
            raise StoreError(f"chain {chain!r} cannot be created: {exc}") from None
        return NatsChainStore(self, chain, bytes(header), ack.seq)

    def open(self, chain: str) -> ChainStore:
        msg = self.next_on(self.subject(chain), 1)
        if msg is None:
            raise StoreNotFound(f"no chain {chain!r} in stream {self.stream!r}")
        if (msg.headers or {}).get(KIND) != "header":
            raise StoreError(f"chain {chain!r}: the first message is not its header")
        assert msg.seq is not None
        return NatsChainStore(self, chain, msg.data or b"", msg.seq)

    def remove(self, chain: str) -> None:
        self.call(self.js.purge_stream(self.stream, subject=self.subject(chain)))

    def close(self) -> None:
        self._closing = True
        nc = getattr(self, "nc", None)
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                self._thread.run(nc.close(), 5)
        self._thread.stop()
