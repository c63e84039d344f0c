"""Users, tokens and groups through the `wasmer-dfs` CLI on a real `wasmer-dfs serve` and its
``/auth`` (issue 14): accounts A, B, C; A's sudo token from a code computed from the URI's
secret; group `team`; who may add and remove whom; 20 wrong codes lock the account; the
server's data directory holds no password and no private key. The server runs in a subprocess,
stopped by its pid (tests/mount/conftest.py's ``ServerProc``)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.crypto import PqCrypto
from adapters.ws_auth import WsAuthConnector
from application.auth import AuthKeys
from application.auth_client import AuthClient, AuthRefused
from domain.auth.token import ClearToken, read_text
from domain.auth.totp import totp
from tests.mount.conftest import ServerProc, wasmer_dfs_exe

pytestmark = pytest.mark.timeout(300)

PASSWORDS = {"a": "pw of a, long enough", "b": "b's secret words", "c": "c: another one"}


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[ServerProc]:
    (tmp_path / "server").mkdir()
    srv = ServerProc(tmp_path / "server", tmp_path / "server.out")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class Cli:
    def __init__(self, server: ServerProc, home: Path) -> None:
        self.url = f"ws://127.0.0.1:{server.port}/auth"
        self.home = home

    def run(
        self, who: str, *args: str, token: bool = True, password: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(self.home)}
        env["WASMER_DFS_PASSWORD"] = password if password is not None else PASSWORDS[who]
        glob = ["--auth", self.url]
        if token:
            glob += ["--token-path", str(self.token(who))]
        return subprocess.run(
            [wasmer_dfs_exe(), *glob, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def ok(self, who: str, *args: str, token: bool = True) -> str:
        done = self.run(who, *args, token=token)
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        return done.stdout

    def refused(self, who: str, *args: str, code: int = 3) -> str:
        done = self.run(who, *args)
        assert done.returncode == code, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        return done.stderr

    def token(self, who: str) -> Path:
        return self.home / f"{who}.token"


def _secret(stdout: str) -> bytes:
    uri = next(line for line in stdout.splitlines() if line.startswith("otpauth://totp/"))
    text = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0]
    return base64.b32decode(text + "=" * (-len(text) % 8))


def test_users_groups_and_tokens_on_a_real_server(auth_server: ServerProc, tmp_path: Path) -> None:
    cli = Cli(auth_server, tmp_path)
    secrets = {}
    for who in "abc":
        out = cli.ok(who, "user", "create", "--email", f"{who}@x.org", token=False)
        secrets[who] = _secret(out)
        assert "recovery code" in out
    assert "exists already" in cli.refused("a", "user", "create", "--email", "a@x.org")

    # tokens: normal for everyone, A's sudo with a code from the URI's secret
    for who in "abc":
        cli.ok(who, "token", "generate", "--email", f"{who}@x.org")
        assert cli.token(who).stat().st_mode & 0o777 == 0o600
    wrong = cli.run("a", "token", "generate", "--email", "a@x.org", password="not it")
    assert wrong.returncode == 3 and "wrong password for a@x.org" in wrong.stderr
    assert "needs a sudo token" in cli.refused("a", "group", "create", "team")
    cli.ok("a", "token", "sudo", "--email", "a@x.org", "--code", totp(secrets["a"], time.time()))
    cli.ok("a", "group", "create", "team")
    cli.ok("a", "token", "gather", "team")
    cli.ok("a", "group", "add-user", "team", "b@x.org", "--role", "contributor")

    # C cannot add itself; B (contributor) and C cannot remove A
    assert "not a member" in cli.refused("c", "group", "add-user", "team", "c@x.org")
    cli.ok("b", "token", "gather", "team")
    assert "role too low" in cli.refused("b", "group", "remove-user", "team", "a@x.org")
    assert "not a member" in cli.refused("c", "group", "remove-user", "team", "a@x.org")
    assert "not a member" in cli.refused("c", "token", "gather", "team")
    details = cli.ok("b", "group", "details", "team")
    assert "owner        a@x.org" in details and "contributor  b@x.org" in details
    assert "not a member" in cli.refused("c", "group", "details", "team")
    mine = cli.ok("a", "user", "details")
    assert "groups: team" in mine and "0 wrong in a row" in mine

    # A removes B: the contributor and observer keys rotate, B holds nothing of them any more
    cli.ok("a", "group", "remove-user", "team", "b@x.org")
    assert "b@x.org is not a member of group team" in cli.refused("b", "group", "details", "team")
    assert "not a member" in cli.refused("b", "token", "gather", "team")

    # the data directory holds neither a password nor a private key
    stored = b"".join(p.read_bytes() for p in auth_server.data_dir.rglob("*") if p.is_file())
    assert (auth_server.data_dir / "auth" / "auth.log").exists()
    for who, pw in PASSWORDS.items():
        assert pw.encode() not in stored
        found = read_text(cli.token(who).read_text())
        assert isinstance(found, ClearToken)
        token = found.token
        for keys in (token.normal, token.sudo, *(r.keys for r in token.roles)):
            if keys is None:
                continue
            for secret in (keys.sign_secret, keys.kem_secret, keys.aes):
                assert secret[:64] not in stored, f"a private key of {who} is on the server"
        assert token.normal.sign_public in stored  # (the search does find what is there)


def test_twenty_wrong_codes_lock_the_account_until_the_back_off_ends(
    auth_server: ServerProc, tmp_path: Path
) -> None:
    cli = Cli(auth_server, tmp_path)
    secret = _secret(cli.ok("a", "user", "create", "--email", "a@x.org", token=False))

    async def hammer() -> float | None:
        link = await WsAuthConnector(cli.url).open()
        try:
            client = AuthClient(link, AuthKeys(PqCrypto()))
            _, normal = await client.login("a@x.org", PASSWORDS["a"].encode())
            until = None
            for _ in range(20):
                right = totp(secret, time.time())
                with pytest.raises(AuthRefused) as caught:
                    await client.sudo_share(
                        "a@x.org", normal, code=f"{(int(right) + 1) % 10**6:06d}"
                    )
                until = caught.value.until
            return until
        finally:
            await link.close()

    until = asyncio.run(hammer())
    assert until is not None and until > time.time() + 23 * 3600  # the cap: a lock of a day
    done = cli.run("a", "token", "sudo", "--email", "a@x.org", "--code", totp(secret, time.time()))
    assert done.returncode == 3, done.stderr
    assert "locked after 21 wrong codes in a row: try again after unix time" in done.stderr
    assert not cli.token("a").exists()
    # the server's restart keeps the lock (the counters are events of its log)
    auth_server.stop()
    auth_server.start()
    done = cli.run("a", "token", "sudo", "--email", "a@x.org", "--code", totp(secret, time.time()))
    assert done.returncode == 3 and "locked after 22 wrong codes" in done.stderr


def test_mount_of_a_local_chain_with_a_token_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [wasmer_dfs_exe(), "--token-path", str(tmp_path / "t"), "mount", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "a token mounts a chain of a server" in done.stderr


def test_a_sealed_tokens_passphrase_comes_from_a_passfile_or_a_command(
    auth_server: ServerProc, tmp_path: Path
) -> None:
    """Issue 19's secrets without a terminal, for token passphrases: `--token-extpass CMD` seals,
    `--token-passfile FILE` opens (no $WASMER_DFS_TOKEN_PASSPHRASE, no terminal); a passfile its
    group may read is refused, and so is a wrong passphrase."""
    cli = Cli(auth_server, tmp_path)
    cli.ok("a", "user", "create", "--email", "a@x.org", token=False)
    sealed = ["--token-extpass", "echo correct horse"]
    cli.ok("a", *sealed, "token", "generate", "--email", "a@x.org", "--token-passphrase")
    assert cli.token("a").read_text().startswith("wdfs-token.")
    passfile = tmp_path / "token.pass"
    passfile.write_text("correct horse\n")
    passfile.chmod(0o600)
    details = cli.ok("a", "--token-passfile", str(passfile), "user", "details")
    assert "a@x.org" in details
    without = cli.run("a", "user", "details")
    assert without.returncode == 2 and "token passphrase" in without.stderr, without.stderr
    passfile.chmod(0o640)
    loose = cli.run("a", "--token-passfile", str(passfile), "user", "details")
    assert loose.returncode == 2 and "group or others" in loose.stderr, loose.stderr
    wrong = cli.run("a", "--token-extpass", "echo not it", "user", "details")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
    both = cli.run("a", *sealed, "--token-passfile", str(passfile), "user", "details")
    assert both.returncode == 2 and "--token-passfile and --token-extpass" in both.stderr
