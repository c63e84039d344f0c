"""The command line and the composition root.

`wasmer-dfs mount` takes SIGINT/SIGTERM/SIGHUP over from the first thing its console script
imports (this package): while the interpreter is still importing, a stop would otherwise kill it
(SIGTERM) or print a KeyboardInterrupt traceback (SIGINT). Nothing has been done yet then, so
it just says so and exits 5; entrypoints/mount_guard.py takes the signals over from there.
"""

import os
import signal
import sys


def _stopped_while_starting(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(
        2, f"wasmer-dfs: error: stopped by {name} while starting (nothing was done)\n".encode()
    )
    os._exit(5)


if os.path.basename(sys.argv[0]) == "wasmer-dfs" and "mount" in sys.argv[1:]:
    for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_sig, _stopped_while_starting)
