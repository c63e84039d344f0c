"""`wasmer-dfs install-helpers`: what lets the system run wasmer-dfs without a terminal.

* ``SBIN/mount.fuse.wasmer-dfs``: the helper mount(8) runs for ``-t fuse.wasmer-dfs`` and for
  /etc/fstab lines of that type (entrypoints/fstab.py), a script that runs it with this
  installation's interpreter.
* ``UNITS/wasmer-dfs@.service``: a mount per instance NAME, its settings in
  /etc/wasmer-dfs/NAME.conf (``SOURCE=``, ``MOUNTPOINT=``, ``OPTIONS=`` in the fstab helper's -o
  syntax); Type=notify, the mount says READY=1 once mounted (entrypoints/daemon.mounted).
* ``UNITS/wasmer-dfs-serve.service``: the chain server (Type=notify, READY=1 once it listens;
  data in /var/lib/wasmer-dfs-serve; ``LISTEN=`` and ``SERVE_OPTIONS=`` in
  /etc/wasmer-dfs/serve.conf).

The units name this installation's interpreter and scripts by absolute path.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from entrypoints.console import fail, say, warn

HELPER_NAME = "mount.fuse.wasmer-dfs"
MOUNT_UNIT = "wasmer-dfs@.service"
SERVE_UNIT = "wasmer-dfs-serve.service"
CONF_DIR = "/etc/wasmer-dfs"

_HELPER = """#!/bin/sh
# mount(8) runs this for -t fuse.wasmer-dfs and fstab lines of that type.
# Written by `wasmer-dfs install-helpers`; runs entrypoints/fstab.py of this installation.
exec {python} -m entrypoints.fstab "$@"
"""

# No ProtectSystem=, ProtectHome=, PrivateTmp=, PrivateDevices=, ReadWritePaths= or
# ProtectKernel*=: each gives the service its own mount namespace, and the FUSE mount would then
# exist only inside it. What is left restricts the process without one.
_MOUNT_UNIT = """[Unit]
Description=wasmer-dfs file system %i (settings in {conf_dir}/%i.conf)
Documentation=file://{docs}
Wants=network-online.target
After=network-online.target
ConditionPathExists={conf_dir}/%i.conf

[Service]
# {conf_dir}/%i.conf sets SOURCE= (ws://HOST:PORT/db/NAME or a log directory), MOUNTPOINT= and
# OPTIONS= (the -o options of an fstab line, e.g. passfile={conf_dir}/%i.pass,recovery_mode=sync)
Type=notify
NotifyAccess=main
EnvironmentFile={conf_dir}/%i.conf
ExecStart={python} -m entrypoints.fstab $SOURCE $MOUNTPOINT -o foreground -o ${{OPTIONS}}
# SIGTERM unmounts; the mount then writes out and uploads what is pending (bounded)
KillMode=mixed
TimeoutStopSec=150
Restart=on-failure
RestartSec=5
# 2: bad options, 3: refused (e.g. a wrong passcode): a restart would not change that
RestartPreventExitStatus=2 3
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER
DevicePolicy=closed
DeviceAllow=/dev/fuse rw
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
KeyringMode=private

[Install]
WantedBy=multi-user.target
"""

_SERVE_UNIT = """[Unit]
Description=wasmer-dfs chain server
Documentation=file://{docs}
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
Environment=LISTEN=127.0.0.1:5000
# LISTEN=HOST:PORT and SERVE_OPTIONS= (more options of `wasmer-dfs serve`)
EnvironmentFile=-{conf_dir}/serve.conf
ExecStart={exe} serve --listen ${{LISTEN}} --data-dir /var/lib/wasmer-dfs-serve $SERVE_OPTIONS
Restart=on-failure
RestartSec=2
# 2: bad options: a restart would not change that
RestartPreventExitStatus=2
DynamicUser=yes
StateDirectory=wasmer-dfs-serve
StateDirectoryMode=0700
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service

[Install]
WantedBy=multi-user.target
"""


def _bin() -> Path:
    return Path(sys.executable).parent


def _docs() -> str:
    return str(Path(__file__).resolve().parent.parent / "README.md")


def helper_script() -> str:
    return _HELPER.format(python=shlex.quote(sys.executable))


def mount_unit() -> str:
    return _MOUNT_UNIT.format(python=sys.executable, conf_dir=CONF_DIR, docs=_docs())


def serve_unit() -> str:
    return _SERVE_UNIT.format(exe=_bin() / "wasmer-dfs", conf_dir=CONF_DIR, docs=_docs())


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    say(f"installed {path}")


def _readable_by_others(path: Path) -> bool:
    """Whether every directory to ``path`` lets others through (the serve unit's dynamic user
    must reach the interpreter)."""
    return all(os.stat(p).st_mode & 0o001 for p in path.parents)


def install(sbin_dir: Path, unit_dir: Path) -> None:
    try:
        sbin_dir.mkdir(parents=True, exist_ok=True)
        unit_dir.mkdir(parents=True, exist_ok=True)
        _write(sbin_dir / HELPER_NAME, helper_script(), 0o755)
        _write(unit_dir / MOUNT_UNIT, mount_unit(), 0o644)
        _write(unit_dir / SERVE_UNIT, serve_unit(), 0o644)
    except OSError as exc:
        fail(f"cannot install the helpers: {exc} (run as root?)", 1)
    exe = Path(sys.executable)
    if not _readable_by_others(exe) or str(exe).startswith(("/root/", "/home/")):
        warn(
            f"{SERVE_UNIT} runs as a dynamic user with /root and /home hidden: it needs this"
            f" installation ({exe.parent.parent}) where other users can read it, e.g. /opt"
        )
    say(
        f"mount with: mount -t fuse.wasmer-dfs SOURCE MOUNTPOINT -o OPTIONS, an fstab line, or"
        f" systemctl start wasmer-dfs@NAME (settings in {CONF_DIR}/NAME.conf);"
        " run `systemctl daemon-reload` where systemd runs"
    )
