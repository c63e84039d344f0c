"""The composition root: the only place that builds adapters and wires them to services."""

from __future__ import annotations

import functools
from pathlib import Path

from dependency_injector import containers, providers

from adapters.clock import SystemClock
from adapters.crypto import PqCrypto
from adapters.redolog import FileRedoLogFactory
from adapters.system import disk_space
from application.mount import MountService


class Container(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    clock = providers.Singleton(SystemClock)
    crypto = providers.Singleton(PqCrypto)
    log_dir = providers.Callable(Path, config.log_path)
    logs = providers.Singleton(FileRedoLogFactory, log_dir)
    space = providers.Callable(functools.partial, disk_space, log_dir)
    mounts = providers.Factory(MountService, logs=logs, crypto=crypto, clock=clock, space=space)


def bootstrap(log_path: Path) -> Container:
    container = Container()
    container.config.from_dict({"log_path": str(log_path)})
    container.check_dependencies()
    return container
