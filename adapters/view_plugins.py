"""The views installed in this Python environment: the ``wasmer_dfs.views`` entry-point group
(docs/views.md). Each entry point names a factory ``(ARG or None, ViewContext) -> View`` (or a
list of views); ``mount --view NAME[=ARG]`` calls it, ``wasmer-dfs views`` lists them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from application.ports.views import View, ViewContext, ViewFactory

GROUP = "wasmer_dfs.views"


class ViewPluginError(Exception):
    """A view cannot be turned on: unknown, or its factory failed (the message says why)."""


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    #: where the factory is (``module:attribute``)
    module: str
    #: the distribution that installed it (None: not known)
    package: str | None
    #: the factory's docstring, its first line
    description: str


def _points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def installed() -> list[Installed]:
    """The installed views, by name. A factory that cannot be imported is listed with why."""
    out = []
    for name, ep in sorted(_points().items()):
        try:
            doc = (ep.load().__doc__ or "").strip()
            description = " ".join(doc.split("\n\n")[0].split()) or "(no description)"
        except Exception as exc:
            description = f"(cannot be loaded: {type(exc).__name__}: {exc})"
        package = ep.dist.name if ep.dist is not None else None
        out.append(Installed(name, ep.value, package, description))
    return out


def names() -> list[str]:
    return sorted(_points())


def load(name: str) -> ViewFactory:
    ep = _points().get(name)
    if ep is None:
        known = ", ".join(names()) or "none"
        raise ViewPluginError(f"no view named {name!r} is installed (installed: {known})")
    try:
        factory: ViewFactory = ep.load()
    except Exception as exc:
        raise ViewPluginError(f"view {name!r} ({ep.value}) cannot be loaded: {exc}") from None
    return factory


def build(specs: Sequence[tuple[str, str | None]], context: ViewContext) -> list[View]:
    """The views of ``--view NAME[=ARG]`` ... (``ViewPluginError`` for one that fails)."""
    views: list[View] = []
    for name, arg in specs:
        factory = load(name)
        try:
            made = factory(arg, context)
        except Exception as exc:
            raise ViewPluginError(f"view {name!r}: {exc}") from None
        for view in [made] if isinstance(made, View) else list(made):
            if not isinstance(view, View):
                raise ViewPluginError(f"view {name!r}: its factory returned {view!r}, not a View")
            views.append(view)
    return views
