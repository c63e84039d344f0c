"""The house rules that import-linter cannot state (docs/adr/0017-ports-and-twins.md): every
abstract base class of the application is a port, and every port lives in application/ports/.
(The layer and entrypoint-cycle rules are import-linter contracts in pyproject.toml.)"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
APPLICATION = ROOT / "application"
PORTS = APPLICATION / "ports"


def abc_classes(source: str) -> list[str]:
    """Names of the classes in ``source`` that derive from ``abc.ABC`` / ``ABC`` or use the
    ``ABCMeta`` metaclass."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [ast.unparse(b) for b in node.bases]
        metas = [ast.unparse(k.value) for k in node.keywords if k.arg == "metaclass"]
        if any(b in ("abc.ABC", "ABC") for b in bases) or any(
            m in ("abc.ABCMeta", "ABCMeta") for m in metas
        ):
            found.append(node.name)
    return found


def abcs_outside_the_ports(root: pathlib.Path) -> list[tuple[str, str]]:
    """``(path, class)`` of every ABC under ``root``/application outside application/ports/."""
    out: list[tuple[str, str]] = []
    for path in sorted((root / "application").rglob("*.py")):
        if (root / "application" / "ports") in path.parents:
            continue
        rel = path.relative_to(root).as_posix()
        out.extend((rel, name) for name in abc_classes(path.read_text(encoding="utf-8")))
    return out


def test_every_abc_of_the_application_is_in_the_ports_package() -> None:
    strays = abcs_outside_the_ports(ROOT)
    assert strays == [], f"ports must live in application/ports/ (ADR 0017): {strays}"


def test_the_ports_package_holds_the_ports() -> None:
    import application.ports as ports

    defined = {
        name
        for path in PORTS.glob("*.py")
        for name in abc_classes(path.read_text(encoding="utf-8"))
    }
    expected = {
        "RedoLog", "RedoLogFactory", "DamagedLog", "Crypto", "Clock", "Resolver",
        "PendingLock", "HeldLocks", "LockCoordinator", "ReplicaSync",
        "RemoteChain", "RemoteConnector", "KernelCache", "RefusalRecord",
    }  # fmt: skip
    assert expected <= defined
    assert defined <= set(ports.__all__)  # each one importable from application.ports


def test_every_port_method_states_its_promise() -> None:
    missing: list[str] = []
    for path in sorted(PORTS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        ports = set(abc_classes(path.read_text(encoding="utf-8")))
        for cls in tree.body:
            if not (isinstance(cls, ast.ClassDef) and cls.name in ports):
                continue
            if ast.get_docstring(cls) is None:
                missing.append(cls.name)
            for fn in cls.body:
                is_function = isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_function and ast.get_docstring(fn) is None:
                    missing.append(f"{cls.name}.{fn.name}")
    assert missing == [], f"port methods without a docstring: {missing}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import abc\nclass P(abc.ABC):\n    pass\n", ["P"]),
        ("from abc import ABC\nclass P(ABC):\n    pass\n", ["P"]),
        ("import abc\nclass P(metaclass=abc.ABCMeta):\n    pass\n", ["P"]),
        ("class Plain:\n    pass\nclass E(Exception):\n    pass\n", []),
    ],
)
def test_the_check_recognises_abcs(source: str, expected: list[str]) -> None:
    assert abc_classes(source) == expected


def test_the_check_finds_a_port_outside_the_package(tmp_path: pathlib.Path) -> None:
    (tmp_path / "application" / "ports").mkdir(parents=True)
    (tmp_path / "application" / "ports" / "ok.py").write_text("import abc\nclass A(abc.ABC): ...\n")
    (tmp_path / "application" / "svc.py").write_text("import abc\nclass B(abc.ABC): ...\n")
    assert abcs_outside_the_ports(tmp_path) == [("application/svc.py", "B")]


#: "No module over ~500 lines without a reason in its docstring" (issue 13)
LONG_MODULE_LINES = 500


def long_modules_without_a_reason(root: pathlib.Path) -> list[tuple[str, int]]:
    """``(path, lines)`` of every module of the four layers over ``LONG_MODULE_LINES`` whose
    docstring does not say why it is that long (a sentence naming its size: "about 800 lines",
    "over ~500 lines")."""
    import re

    out: list[tuple[str, int]] = []
    for layer in ("domain", "application", "adapters", "entrypoints"):
        for path in sorted((root / layer).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            lines = source.count("\n")
            if lines <= LONG_MODULE_LINES:
                continue
            doc = ast.get_docstring(ast.parse(source)) or ""
            if not re.search(r"(~|about |over )?\d{3,} lines", doc):
                out.append((path.relative_to(root).as_posix(), lines))
    return out


def test_every_long_module_says_why_it_is_long() -> None:
    assert long_modules_without_a_reason(ROOT) == []


def test_a_long_module_without_a_reason_is_found(tmp_path: pathlib.Path) -> None:
    (tmp_path / "adapters").mkdir()
    body = "x = 1\n" * (LONG_MODULE_LINES + 1)
    (tmp_path / "adapters" / "long.py").write_text('"""Does things."""\n' + body)
    (tmp_path / "adapters" / "explained.py").write_text(
        '"""Does things. It stays about 600 lines: one job."""\n' + body
    )
    (tmp_path / "adapters" / "short.py").write_text('"""Short."""\nx = 1\n')
    found = long_modules_without_a_reason(tmp_path)
    assert found == [("adapters/long.py", LONG_MODULE_LINES + 2)]
