"""The PEP 517 build backend of wasmer-dfs (docs/adr/0021): setuptools, plus our patched pyfuse3
inside the wheel.

`pip install .` (or `pip wheel .`, or a wheel built from the sdist) must give a wasmer-dfs that
mounts remote chains, which the plain pyfuse3 from PyPI cannot (it lacks the lock, fallocate,
lseek and copy_file_range operations: docs/adr/0006). So ``build_wheel``:

1. builds wasmer-dfs's own (pure Python) wheel with setuptools;
2. builds pyfuse3 3.5.0 from its PyPI sdist (sha256-pinned, cached in
   ``$XDG_CACHE_HOME/wasmer-dfs`` or given by ``WASMER_DFS_PYFUSE3_SDIST``) with
   third_party/pyfuse3/pyfuse3-3.5.0-ops.patch applied and the shipped C file deleted, so that
   Cython regenerates it from the patched sources (pyfuse3's own backend, run in a subprocess);
3. merges the ``pyfuse3`` package of that wheel into ours: one wheel, tagged for the platform
   of the extension, whose RECORD lists every file. wasmer-dfs does not depend on the
   distribution ``pyfuse3`` (that would pull the plain one from PyPI); it depends on trio, the
   one runtime dependency of pyfuse3.

``build_editable`` is setuptools' alone: the development install (`pip install -e .`, by
scripts/install.sh) gets the patched pyfuse3 from scripts/build_pyfuse3.sh as before. Building
needs what building pyfuse3 needs: gcc, pkg-config, libfuse3-dev, the Python headers, and
``patch`` or ``git``; the Python build requirements (Cython 3.2.4, setuptools_scm) come from
``get_requires_for_build_wheel``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (the hooks we do not change)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
)

ROOT = Path(__file__).resolve().parents[1]
PYFUSE3_VERSION = "3.5.0"
#: sha256 of pyfuse3-3.5.0.tar.gz as published on PyPI (the same pin as scripts/build_pyfuse3.sh)
PYFUSE3_SDIST_SHA256 = "88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24"
PATCH = ROOT / "third_party" / "pyfuse3" / f"pyfuse3-{PYFUSE3_VERSION}-ops.patch"
#: what pyfuse3's own build backend needs; Cython: the release that generated upstream's C file
PYFUSE3_BUILD_REQUIRES = ["Cython==3.2.4", "setuptools>=78.1.1", "setuptools_scm>=8"]
SDIST_ENV = "WASMER_DFS_PYFUSE3_SDIST"
SDIST_NAME = f"pyfuse3-{PYFUSE3_VERSION}.tar.gz"


class BuildError(RuntimeError):
    """Building the patched pyfuse3 failed; the message says what to install or fix."""


def _say(message: str) -> None:
    print(f"wasmer-dfs build: {message}", file=sys.stderr, flush=True)


def get_requires_for_build_wheel(config_settings: dict[str, object] | None = None) -> list[str]:
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *PYFUSE3_BUILD_REQUIRES]


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, object] | None = None,
    metadata_directory: str | None = None,
) -> str:
    ours = _setuptools.build_wheel(wheel_directory, config_settings, None)
    with tempfile.TemporaryDirectory(prefix="wasmer-dfs-pyfuse3-") as work:
        theirs = build_patched_pyfuse3(Path(work))
        merged = merge_wheels(Path(wheel_directory) / ours, theirs, Path(wheel_directory))
    # no prepare_metadata_for_build_wheel: pip takes the metadata from this wheel
    if merged.name != ours:
        (Path(wheel_directory) / ours).unlink()
    _say(f"built {merged.name} with the patched pyfuse3 inside")
    return merged.name


# --- the patched pyfuse3 -------------------------------------------------------------------------
def _patch_level() -> int:
    found = re.search(r"^\+WASMER_DFS_PATCH = (\d+)$", PATCH.read_text(), re.MULTILINE)
    if found is None:
        raise BuildError(f"{PATCH} does not set WASMER_DFS_PATCH")
    return int(found.group(1))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasmer-dfs"


def pyfuse3_sdist() -> Path:
    """The pinned pyfuse3 sdist: ``$WASMER_DFS_PYFUSE3_SDIST``, else the cache, else PyPI
    (checked against the pinned sha256 in every case)."""
    given = os.environ.get(SDIST_ENV)
    if given:
        path = Path(given)
        if not path.is_file() or _sha256(path) != PYFUSE3_SDIST_SHA256:
            raise BuildError(f"{SDIST_ENV}={given} is not the pyfuse3 {PYFUSE3_VERSION} sdist")
        return path
    cached = _cache_dir() / SDIST_NAME
    if cached.is_file() and _sha256(cached) == PYFUSE3_SDIST_SHA256:
        return cached
    data = _download()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(cached)
    return cached


def _indexes() -> list[str]:
    """The package indexes pip is told about in the environment, then PyPI's."""
    urls = []
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls += os.environ.get(var, "").split()
    return [*urls, "https://pypi.org/simple"]


def _download() -> bytes:
    """The sdist from the first index (simple API, PEP 503) that has it with the pinned hash."""
    errors = []
    for index in _indexes():
        page_url = f"{index.rstrip('/')}/pyfuse3/"
        _say(f"downloading the pyfuse3 {PYFUSE3_VERSION} sdist from {page_url}")
        try:
            with urllib.request.urlopen(page_url, timeout=60) as r:
                page = r.read().decode("utf-8", "replace")
            links = re.findall(rf'href="([^"]*/{re.escape(SDIST_NAME)}[^"]*)"', page)
            if not links:
                errors.append(f"{page_url}: no {SDIST_NAME}")
                continue
            url = urllib.parse.urljoin(page_url, links[0].split("#", 1)[0])
            with urllib.request.urlopen(url, timeout=120) as r:
                data: bytes = r.read()
        except (OSError, ValueError) as exc:
            errors.append(f"{page_url}: {exc}")
            continue
        if hashlib.sha256(data).hexdigest() == PYFUSE3_SDIST_SHA256:
            return data
        errors.append(f"{url}: not the pinned sha256")
    raise BuildError(
        f"cannot download the pyfuse3 {PYFUSE3_VERSION} sdist ({'; '.join(errors)}); download"
        f" it and give its path in {SDIST_ENV}"
    )


def _apply_patch(src: Path) -> None:
    if shutil.which("patch"):
        cmd = ["patch", "-p1", "--forward", "--batch", "--quiet", "-i", str(PATCH)]
    elif shutil.which("git"):
        cmd = ["git", "apply", "-p1", "--whitespace=nowarn", str(PATCH)]
    else:
        raise BuildError("neither patch nor git is installed (apt-get install patch)")
    r = subprocess.run(cmd, cwd=src, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise BuildError(f"the patch does not apply to pyfuse3 {PYFUSE3_VERSION}: {r.stderr}")


def build_patched_pyfuse3(work: Path) -> Path:
    """The wheel of pyfuse3 3.5.0 with our patch, built in ``work``."""
    for tool in ("gcc", "pkg-config"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (apt-get install gcc pkg-config)")
    if subprocess.run(["pkg-config", "--atleast-version=3.2", "fuse3"], check=False).returncode:
        raise BuildError("libfuse3 development files are missing (apt-get install libfuse3-dev)")
    with tarfile.open(pyfuse3_sdist()) as tar:
        tar.extractall(work, filter="data")
    src = work / f"pyfuse3-{PYFUSE3_VERSION}"
    _apply_patch(src)
    # the shipped C file is generated from the unpatched sources: Cython must regenerate it
    (src / "src" / "pyfuse3" / "__init__.c").unlink(missing_ok=True)
    out = work / "dist"
    out.mkdir()
    version = f"{PYFUSE3_VERSION}+wasmerdfs{_patch_level()}"
    _say(f"compiling pyfuse3 {version} (Cython, then gcc: about a minute)")
    env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3": version}
    code = (
        "import sys; sys.path.insert(0, 'util'); import build_backend as b;"
        f" print(b.build_wheel({str(out)!r}))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
        raise BuildError(f"building the patched pyfuse3 failed:\n{tail}")
    if not (src / "src" / "pyfuse3" / "__init__.c").exists():
        raise BuildError("Cython did not regenerate src/pyfuse3/__init__.c")
    wheels = list(out.glob("pyfuse3-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"pyfuse3's build made {wheels}, not one wheel")
    return wheels[0]


# --- one wheel out of two ------------------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def merge_wheels(ours: Path, theirs: Path, out_dir: Path) -> Path:
    """``ours`` with the importable files of ``theirs`` (not its .dist-info) added, tagged with
    ``theirs``' platform tag (it holds the compiled extension); returns the new wheel's path."""
    name, version, *_ = ours.name[: -len(".whl")].split("-")
    tag = "-".join(theirs.name[: -len(".whl")].split("-")[-3:])
    dist_info = f"{name}-{version}.dist-info"
    files: dict[str, bytes] = {}
    added: list[str] = []
    with zipfile.ZipFile(ours) as z:
        for n in z.namelist():
            if n != f"{dist_info}/RECORD":
                files[n] = z.read(n)
    with zipfile.ZipFile(theirs) as z:
        for n in z.namelist():
            top = n.split("/", 1)[0]
            if top.endswith((".dist-info", ".data")):
                continue
            if n in files:
                raise BuildError(f"both wheels have {n}")
            files[n] = z.read(n)
            added.append(n)
    wheel_meta = files[f"{dist_info}/WHEEL"].decode()
    wheel_meta = re.sub(r"(?m)^Root-Is-Purelib: .*$", "Root-Is-Purelib: false", wheel_meta)
    wheel_meta = re.sub(r"(?m)^Tag: .*\n?", "", wheel_meta).rstrip("\n") + f"\nTag: {tag}\n"
    files[f"{dist_info}/WHEEL"] = wheel_meta.encode()
    top_level = f"{dist_info}/top_level.txt"
    if top_level in files:
        names = {*files[top_level].decode().split(), *(n.split("/", 1)[0] for n in added)}
        files[top_level] = "".join(f"{n}\n" for n in sorted(names)).encode()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for n, data in files.items():
        writer.writerow([n, _record_hash(data), len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()
    target = out_dir / f"{name}-{version}-{tag}.whl"
    tmp = target.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, data in files.items():
            z.writestr(n, data)
    tmp.replace(target)
    return target
