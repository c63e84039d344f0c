"""``mount.fuse.wasmer-dfs``: what mount(8) runs for ``mount -t fuse.wasmer-dfs`` and for an
/etc/fstab line of type ``fuse.wasmer-dfs``::

    mount.fuse.wasmer-dfs SOURCE MOUNTPOINT [-o OPT,OPT=VALUE,...] [-n] [-s] [-v] [-f] [-t TYPE]

SOURCE is the chain: ``ws://HOST:PORT/db/NAME`` (a replica; ``log_path=DIR`` names its redo
log) or the directory of a local chain's redo log. Every option of `wasmer-dfs mount` and of the
global options has an ``-o`` name: the long option without its dashes, ``-`` written ``_``
(``allow_other``, ``recovery_mode=sync``, ``passfile=/etc/wasmer-dfs/NAME.pass``,
``compact_mode=timer``, ``log=/var/log/wasmer-dfs.log``, ``no_ntp``, ``wire_encryption=256``...),
and ``ro``/``rw`` as for every file system. What is for mount(8), systemd or fstab itself is
ignored: ``_netdev``, ``nofail``, ``auto``/``noauto``, ``user``/``users``/``nouser``/``owner``/
``group``, ``defaults``, ``x-*`` (``x-systemd.*``), ``comment=``, and the generic ``dev``/
``nodev``/``suid``/``nosuid``/``exec``/``noexec``/``atime``/``noatime``/``relatime``/``async``.
``passcode=`` is refused (fstab is readable by everyone: use ``passfile=``); an unknown option is
an error. The mount runs in the background (``--background``) and mount(8) returns once it is
usable; ``foreground`` keeps it in the foreground (the systemd unit wasmer-dfs@.service).

Installed by `wasmer-dfs install-helpers` as a small script in /sbin that runs this module with
the interpreter of this installation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: -o name -> option of `wasmer-dfs mount` that takes no value
MOUNT_FLAGS = {
    "allow_other": "--allow-other",
    "allow_root": "--allow-root",
    "compact_now": "--compact-now",
    "impersonate_uid": "--impersonate-uid",
    "non_empty": "--non-empty",
    "nonempty": "--non-empty",  # as libfuse 2 and sshfs spell it
    "ro": "--read-only",
    "read_only": "--read-only",
    "temp": "--temp",
    "write_back": "--write-back",
    "no_auth": "--no-auth",
}
#: -o name=VALUE -> option of `wasmer-dfs mount` that takes a value
MOUNT_VALUES = {
    "compact_mode": "--compact-mode",
    "compact_threshold_factor": "--compact-threshold-factor",
    "compact_threshold_size": "--compact-threshold-size",
    "compact_timer": "--compact-timer",
    "keep_history": "--keep-history",
    "configured_for": "--configured-for",
    "data_format": "--data-format",
    "meta_format": "--meta-format",
    "gid": "--gid",
    "uid": "--uid",
    "recovery_mode": "--recovery-mode",
    "passfile": "--passfile",
    "extpass": "--extpass",
    "log": "--log",
    "metrics": "--metrics",
    "view": "--view",  # view=NAME[=ARG], repeatable
}
#: -o name -> global option (before the command) that takes no value
GLOBAL_FLAGS = {
    "debug": "--debug",
    "verbose": "--verbose",
    "no_ntp": "--no-ntp",
    "dns_sec": "--dns-sec",
}
#: -o name=VALUE -> global option that takes a value
GLOBAL_VALUES = {
    "ntp_pool": "--ntp-pool",
    "ntp_port": "--ntp-port",
    "dns_server": "--dns-server",
    "wire_encryption": "--wire-encryption",
}
#: options for mount(8), systemd and fstab, or generic ones a FUSE mount sets itself
IGNORED = {
    "_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group",
    "defaults", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
    "relatime", "strictatime", "async", "background",
}  # fmt: skip


class FstabError(ValueError):
    """A command line or option mount(8) gave that cannot be mounted (the message says why)."""


@dataclass
class Helper:
    """The `wasmer-dfs` command line one mount.fuse.wasmer-dfs call stands for."""

    source: str
    mountpoint: str
    global_args: list[str] = field(default_factory=list)
    mount_args: list[str] = field(default_factory=list)
    log_path: str | None = None
    foreground: bool = False
    fake: bool = False

    def argv(self, exe: str) -> list[str]:
        positional = [self.mountpoint]
        if "://" in self.source:
            positional.append(self.source)
            if self.log_path is not None:
                positional.append(self.log_path)
        else:
            if self.log_path is not None:
                raise FstabError("log_path= is for a ws:// source; here the source is the log")
            positional.append(self.source)
        background = [] if self.foreground else ["--background"]
        return [exe, *self.global_args, "mount", *background, *positional, *self.mount_args]


def _option(helper: Helper, option: str) -> None:
    name, eq, value = option.partition("=")
    if not name or name in IGNORED or name.startswith("x-") or name == "comment":
        return
    if name == "passcode":
        raise FstabError(
            "passcode= would put the passcode where everyone reads it (/etc/fstab, the process"
            " list): use passfile=/path (a file only its owner may read) or extpass=COMMAND"
        )
    if name == "foreground" and not eq:
        helper.foreground = True
    elif name == "log_path" and eq:
        helper.log_path = value
    elif name in MOUNT_FLAGS and not eq:
        helper.mount_args.append(MOUNT_FLAGS[name])
    elif name in GLOBAL_FLAGS and not eq:
        helper.global_args.append(GLOBAL_FLAGS[name])
    elif name in MOUNT_VALUES and eq:
        helper.mount_args += [MOUNT_VALUES[name], value]
    elif name in GLOBAL_VALUES and eq:
        helper.global_args += [GLOBAL_VALUES[name], value]
    elif name in MOUNT_FLAGS or name in GLOBAL_FLAGS:
        raise FstabError(f"the option {name} takes no value (not {option!r})")
    elif name in MOUNT_VALUES or name in GLOBAL_VALUES or name == "log_path":
        raise FstabError(f"the option {name} needs a value: {name}=VALUE")
    else:
        raise FstabError(f"unknown option {option!r} (see `wasmer-dfs mount --help`)")


def parse(args: Sequence[str]) -> Helper:
    """The helper's command line as mount(8) gives it (``FstabError`` for a bad one)."""
    positional: list[str] = []
    options: list[str] = []
    fake = False
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "-t", "-N"):
            value = args[i + 1] if i + 1 < len(args) else ""
            if a == "-o":
                options.append(value)
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            options.append(a[2:])
        elif a.startswith("-") and len(a) > 1:
            letters = a[1:]
            if not set(letters) <= set("nsvfwri"):
                raise FstabError(f"unknown flag {a!r}")
            fake = fake or "f" in letters
            if "r" in letters:
                options.append("ro")
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        raise FstabError("usage: mount.fuse.wasmer-dfs SOURCE MOUNTPOINT [-o OPTIONS]")
    helper = Helper(positional[0], positional[1], fake=fake)
    for group in options:
        for option in group.split(","):
            _option(helper, option.strip())
    return helper


def wasmer_dfs_exe() -> str:
    return str(Path(sys.executable).parent / "wasmer-dfs")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        helper = parse(args)
        command = helper.argv(wasmer_dfs_exe())
    except FstabError as exc:
        sys.stderr.write(f"mount.fuse.wasmer-dfs: error: {exc}\n")
        raise SystemExit(2) from None
    if helper.fake:  # mount -f: everything but the mount itself
        return
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
