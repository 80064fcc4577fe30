"""The HTTP server: versioned JSON API, NeuralSync2-compatible routes, change feed (SSE), metrics.

Importing this package stays light: the web framework and the ASGI server are
imported only by :func:`create_app` and :func:`serve` (``pip install
'neuralsync[server]'``). Token and address helpers need only the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .auth import DEFAULT_HOST, DEFAULT_PORT, load_or_create_token, resolve_address, resolve_token, token_path

if TYPE_CHECKING:
    from .app import create_app
    from .run import serve

__all__ = ["create_app", "serve", "load_or_create_token", "resolve_token", "token_path", "resolve_address",
           "DEFAULT_HOST", "DEFAULT_PORT"]


def __getattr__(name: str) -> Any:
    # Lazy: ``python -m neuralsync.server.run`` must not find ``run`` imported already.
    if name == "serve":
        from .run import serve

        return serve
    if name == "create_app":
        from .run import require_server_deps

        require_server_deps()
        from .app import create_app

        return create_app
    raise AttributeError(name)
