"""Views: emulated files inside a mount (issue 18, docs/adr/0019-views.md, docs/views.md).

``ViewService`` (service.py) routes the requests for the views' inodes to the ``View``s that own
them (the port: application/ports/views.py); the built-in views (builtin.py) show the mount's
own state in ``/.wasmer-dfs``."""

from application.views.service import (
    STREAM_WAIT,
    VIEW_FH_BASE,
    VIEW_INO_BASE,
    VIEWS_DIR,
    ViewService,
)

__all__ = ["STREAM_WAIT", "VIEWS_DIR", "VIEW_FH_BASE", "VIEW_INO_BASE", "ViewService"]
