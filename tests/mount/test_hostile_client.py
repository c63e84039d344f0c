"""A hostile client against a real `wasmer-dfs serve` (docs/adr/0015): every forged transaction of
tests/hostile.py - every metadata kind in every position, unsigned, under-signed, wrongly signed,
other-chain, replayed, reordered, truncated and duplicated transactions, keys the attacker made
up, writes and tombstones to objects (the root included) it holds no key for, oversized and
malformed fields, a chain header with absurd key-derivation costs - is refused with its reason;
the server's files do not change by one byte, the server keeps serving, and a fresh replica
mounts the chain and reads the writer's files."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import pytest

from adapters.ws_client import ChainClient, ChainClientError, CommitFailed, ServerFatal
from application.session import ChainHeader, KdfHeader
from application.wire_tx import split_transactions
from domain.fs.model import ROOT_INO
from tests.fakes import FastCrypto
from tests.hostile import Forgery, Signer, forgeries
from tests.mount.conftest import DEFAULT_PASSCODE, Mounter, ServerProc
from tests.mount.test_replication import mount_remote
from tests.server.test_serve_end_to_end import CONTENT, NAME, make_tree, upload

pytestmark = [pytest.mark.timeout(300)]


def data_digest(data_dir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.iterdir())
        if p.is_file() and p.suffix == ".log"
    }


async def attack(url: str, catalogue: list[Forgery]) -> list[str]:
    """Send every forgery on one connection (a new one whenever the server ends it); returns
    what went wrong (empty: every forgery was refused with its reason)."""
    wrong: list[str] = []
    client = await ChainClient.connect(url)
    try:
        for f in catalogue:
            try:
                ok = await client.commit(f.records, timeout=20)
                wrong.append(f"{f.name}: ACCEPTED at {ok.position}")
            except CommitFailed as exc:
                if f.fatal or not re.search(f.reason, exc.reason):
                    wrong.append(f"{f.name}: refused for another reason: {exc.reason!r}")
            except ServerFatal as exc:
                if not f.fatal or not re.search(f.reason, exc.reason):
                    wrong.append(f"{f.name}: the connection ended instead ({exc!r})")
                client = await ChainClient.connect(url)
            except (ChainClientError, TimeoutError) as exc:
                wrong.append(f"{f.name}: the connection ended without a reason ({exc!r})")
                await client.close()
                client = await ChainClient.connect(url)
    finally:
        await client.close()
    return wrong


async def absurd_header(url: str, header: ChainHeader) -> str:
    """A new chain whose header asks every mount for a terabyte of Argon2id memory."""
    assert header.kdf is not None
    kdf = KdfHeader(header.kdf.salt, 10**6, 2**30, 1000)
    body = ChainHeader(
        header.version, b"absurd-chain-id!", "absurd", header.created_ms, True, kdf,
        header.key_check, header.root_key_hash, header.page_size,
    ).encode()  # fmt: skip
    try:
        client = await ChainClient.connect(url.rsplit("/", 1)[0] + "/absurd", header=body)
    except ServerFatal as exc:
        return exc.reason
    await client.close()
    return ""


def test_a_hostile_client_changes_nothing(tmp_path: Path, mounter: Mounter) -> None:
    (tmp_path / "server").mkdir()
    server = ServerProc(tmp_path / "server", tmp_path / "server.out")
    server.start()
    try:
        url = server.url("fs")
        writer = make_tree(DEFAULT_PASSCODE.encode())
        session = writer.session
        assert session._signing is not None

        async def setup() -> None:
            client = await ChainClient.connect(url, header=session.header.encode())
            try:
                await upload(client, writer)
            finally:
                await client.close()

        asyncio.run(setup())
        crypto = FastCrypto()
        chain_id = session.header.chain_id
        pk_hash, secret = session._signing
        root = Signer(crypto, chain_id, session.index.public_keys[pk_hash], secret)
        mallory = Signer(crypto, chain_id, *crypto.sign_keypair())
        stranger = Signer(crypto, b"another-chain-id", *crypto.sign_keypair())
        keys = iter(range(7_000_000, 8_000_000))
        file_inode = writer.fs.lookup(ROOT_INO, NAME).ino
        confirmed = split_transactions(session.log)[0]
        catalogue = forgeries(root, mallory, stranger, confirmed, file_inode, lambda: next(keys))
        assert len(catalogue) >= 60

        before = data_digest(server.data_dir)
        wrong = asyncio.run(attack(url, catalogue))
        assert not wrong, "\n".join(wrong)
        reason = asyncio.run(absurd_header(url, session.header))
        assert "Argon2id" in reason and "refused" in reason, reason
        assert data_digest(server.data_dir) == before, "a refused transaction reached the log"
        assert server.proc is not None and server.proc.poll() is None, "the server died"
        assert "Traceback" not in server.log.read_text()
        writer.close()

        # a fresh replica still mounts the chain and reads what the writer wrote
        fresh = mount_remote(mounter, "fresh", url)
        assert (fresh.mnt / NAME.decode()).read_bytes() == CONTENT
        assert fresh.unmount() == 0
    finally:
        server.stop()
