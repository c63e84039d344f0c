"""Write the manual page of `wasmer-dfs`, generated from the CLI (entrypoints/manpage.py), to
docs/man/wasmer-dfs.1 (or to the path given). Run it after changing a command or an option:

    .venv/bin/python scripts/manpage.py
    man -l docs/man/wasmer-dfs.1
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entrypoints.manpage import main  # noqa: E402

if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "man" / "wasmer-dfs.1"
    target.write_text(main())
    print(f"wrote {target}")
