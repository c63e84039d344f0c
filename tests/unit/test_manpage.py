"""The man page (entrypoints/manpage.py, docs/man/wasmer-dfs.1) and shell completion (typer's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from entrypoints.cli import VERSION, app
from entrypoints.manpage import escape, render

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "man" / "wasmer-dfs.1"


def test_the_committed_man_page_is_what_the_cli_generates() -> None:
    assert COMMITTED.read_text() == render(app, VERSION), (
        "docs/man/wasmer-dfs.1 is stale: run `.venv/bin/python scripts/manpage.py`"
    )


def test_the_page_names_every_command_and_every_option() -> None:
    page = render(app, VERSION)
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="wasmer-dfs")
    seen = 0
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        assert f".SS {escape('wasmer-dfs ' + name)}\n" in page
        for p in getattr(cmd, "params", []):
            for opt in getattr(p, "opts", []):
                if opt.startswith("-"):
                    assert escape(opt) in page, (name, opt)
                    seen += 1
    assert seen > 40  # mount and serve alone have more
    for opt in ("--metrics", "--recovery-mode", "--install-completion", "--wire-encryption"):
        assert escape(opt) in page


def test_escape_keeps_text_out_of_troff_requests() -> None:
    assert escape("a-b \\n") == "a\\-b \\en"
    assert escape(".TH evil\n'x") == "\\&.TH evil\n\\&'x"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_renders_the_page_without_warnings(tmp_path: Path) -> None:
    page = tmp_path / "wasmer-dfs.1"
    page.write_text(render(app, VERSION))
    r = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", str(page)],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "wasmer-dfs mount" in r.stdout.replace("\u2010", "-")


def exe() -> str:
    beside = Path(sys.executable).parent / "wasmer-dfs"
    if not beside.exists():
        pytest.skip("the wasmer-dfs console script is not installed")
    return str(beside)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe(), *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, timeout=60,
    )  # fmt: skip


def test_completion_scripts_are_offered_and_complete_commands_and_values() -> None:
    # typer detects the shell from the parent processes (shellingham), which under CI or a
    # detached runner may be none; its switch for tests makes --show-completion take the name
    shown = run(
        "--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    )
    assert shown.returncode == 0, shown.stderr
    assert "complete -o default -F _wasmer_dfs_completion wasmer-dfs" in shown.stdout

    def complete(words: str) -> list[str]:
        env = {
            "_WASMER_DFS_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        }
        r = run(env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("wasmer-dfs mo") == ["mount"]
    assert "--recovery-mode" in complete("wasmer-dfs mount /mnt --reco")
    assert complete("wasmer-dfs mount /mnt --recovery-mode ") == [
        "async", "readonly-async", "readonly-sync", "sync"
    ]  # fmt: skip


def test_help_stays_readable_with_the_completion_options() -> None:
    r = run("--help", env={"COLUMNS": "80"})
    assert r.returncode == 0
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "\x1b[" not in r.stdout  # plain text, no colours or boxes
