"""The writer of the crash tests, run as its own process:

    python crash_writer.py MOUNT RECORD PREFIX SEED [SECONDS]

It writes files into MOUNT, makes each durable (fsync or fdatasync, alternately), and only then
records ``name sha256`` in RECORD - a file outside the mount, flushed and fsynced - so that
every recorded file must survive a crash of the mount process. It stops at the first error (the
mount died) or after SECONDS.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time


def main(argv: list[str]) -> int:
    mnt, record, prefix, seed = argv[0], argv[1], argv[2], int(argv[3])
    seconds = float(argv[4]) if len(argv) > 4 else 3600.0
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    rec = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = 0
    try:
        while time.monotonic() < deadline:
            name = f"{prefix}-{i:05d}"
            data = rng.randbytes(rng.choice((1, 100, 4096, 20_000, 40_000)))
            path = os.path.join(mnt, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                (os.fsync if i % 2 else os.fdatasync)(fd)
            finally:
                os.close(fd)
            os.write(rec, f"{name} {hashlib.sha256(data).hexdigest()}\n".encode())
            os.fsync(rec)
            i += 1
    except OSError:
        return 0  # the mount went away under us: expected
    finally:
        os.close(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
