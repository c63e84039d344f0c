"""A wasmer-dfs file system with one more view that raises, for tests/mount/test_views.py.
Run as a script it mounts and serves until unmounted (``fusermount3 -u``) or SIGTERM:

    python -m tests.mount.views_fs MOUNTPOINT

The file system is the real service (``MountService`` over an in-memory log) behind the real
FUSE adapter (``FuseOperations``) with the built-in views and ``/.wasmer-dfs/broken/``, whose
``table`` file raises ``RuntimeError("the table is gone")`` on every read.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import pyfuse3
import pyfuse3.asyncio

from adapters.clock import SystemClock
from adapters.crypto import PqCrypto
from adapters.fuse_ops import FuseOperations
from adapters.memory.log import MemoryRedoLogFactory
from application.mount import MountRequest, MountService
from application.ports.views import NodeKind, View, ViewNode, ViewPath
from application.session import Formats
from application.views.builtin import default_views


class Broken(View):
    name = "broken"

    def node(self, path: ViewPath) -> ViewNode | None:
        return {(): ViewNode(NodeKind.DIR), ("table",): ViewNode(NodeKind.FILE)}.get(path)

    def list(self, path: ViewPath) -> list[str]:
        return ["table"]

    def read(self, path: ViewPath) -> bytes:
        raise RuntimeError("the table is gone")


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    mountpoint = sys.argv[1]
    service = MountService(MemoryRedoLogFactory(), PqCrypto(), SystemClock())
    req = MountRequest(
        chain="local", passcode=b"pw", formats=Formats(), uid=0, gid=0, kdf=(1, 8, 1)
    )
    mounted = service.open(req)
    fs = mounted.fs
    views = default_views(fs, fs.stats, extra=[((".wasmer-dfs", "broken"), Broken())])
    ops = FuseOperations(fs, views=views)
    pyfuse3.asyncio.enable()
    pyfuse3.init(ops, mountpoint, {"fsname=viewsfs", "subtype=wasmer-dfs", "default_permissions"})

    async def serve() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pyfuse3.terminate)
        await pyfuse3.main()

    try:
        asyncio.run(serve())
    finally:
        pyfuse3.close(unmount=True)
        mounted.close()


if __name__ == "__main__":
    main()
