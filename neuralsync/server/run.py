"""``serve()`` and ``python -m neuralsync.server.run``: uvicorn on 127.0.0.1:8373 by default.

The address comes from the arguments, else ``NS_HOST``/``NS_PORT``, else
``NS_ENDPOINT`` (``http://host:port``), else the default; it is loopback
unless someone asks otherwise, and every route but ``/health`` needs the
bearer token either way.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..config import MemoryConfig
from ..errors import ConfigError, NeuralSyncError
from .auth import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    TOKEN_ENV,
    is_loopback,
    resolve_address,
    token_path,
)

INSTALL_HINT = "pip install 'neuralsync[server]'"
GRACEFUL_SHUTDOWN_S = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The server's log file, beside stderr: <home>/logs/server.log, rotated at LOG_MAX_BYTES with
# LOG_BACKUPS older files kept (at most ~20 MiB), each readable by the user alone.
LOG_DIR, LOG_FILE = "logs", "server.log"
LOG_MAX_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3
UVICORN_LOGGERS = ("uvicorn", "uvicorn.access")


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-bounded log whose files (the current one and each one begun at a rollover) are mode 0600."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # a file left by an older version may be wider
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


def log_to_file(config: MemoryConfig) -> logging.Handler:
    """Send the root logger's records (and so neuralsync's) to ``<home>/logs/server.log`` as well; returns
    the handler, which the caller adds to the loggers that do not propagate (uvicorn's)."""
    directory = config.home / LOG_DIR
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = PrivateRotatingFileHandler(directory / LOG_FILE, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS,
                                             encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the server log in {directory}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, PrivateRotatingFileHandler)]:
        root.removeHandler(old)  # serve() run twice in one process logs to the latest store only
        old.close()
    root.addHandler(handler)
    return handler


def require_server_deps() -> None:
    """Fail with the install line when the optional server dependencies are missing."""
    missing = []
    for module in ("fastapi", "uvicorn", "jinja2"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"the HTTP server needs {', '.join(missing)}: {INSTALL_HINT}")


def serve(config: MemoryConfig | None = None, host: str | None = None, port: int | None = None,
          token: str | None = None, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          log_level: str = "info", write_queue: bool = True) -> None:
    """Run the server until interrupted (blocking). Streams end and the store closes on shutdown.
    ``write_queue=False`` commits each request's write alone (for comparison: see bench/bench_writes.py)."""
    require_server_deps()
    import uvicorn

    from .app import create_app

    config = config or MemoryConfig.from_env()
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    log_file = log_to_file(config)
    bind_host, bind_port = resolve_address(host, port)
    app = create_app(config, token, max_body_bytes=max_body_bytes, write_queue=write_queue)
    _announce(config, bind_host, bind_port, token)
    server_config = uvicorn.Config(app, host=bind_host, port=bind_port, log_level=log_level, lifespan="on",
                                   timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False,
                                   proxy_headers=False, http=http_protocol())
    for name in UVICORN_LOGGERS:  # uvicorn.Config has set up its own loggers (they do not propagate)
        logging.getLogger(name).addHandler(log_file)
    local_url = _local_url(bind_host, bind_port)
    if local_url is not None:  # the store's other processes embed through this server (one model per machine)
        app.state.api.announce_server(local_url)  # withdrawn when the app closes its facade at shutdown
    _run_until_stopped(server_config, app.state.stop)


def _local_url(host: str, port: int) -> str | None:
    """How a process on this machine reaches the server over loopback, or None when it cannot."""
    if port == 0:
        return None
    if host in ("0.0.0.0", "::", "") or is_loopback(host):
        return f"http://127.0.0.1:{port}" if ":" not in host or host == "::" else f"http://[::1]:{port}"
    return None


def http_protocol() -> type[Any]:
    """uvicorn's h11 protocol minus one quirk (issue 13): when the body of a request already handed to
    the app turns out malformed (bad chunking), uvicorn answers 400 and closes, but does not tell the
    app; the app's own answer (the gate's 401, a route's) then raises ``LocalProtocolError``, logged
    as "Exception in ASGI application". Marking the request disconnected, as a client that left,
    makes the app's later sends no-ops and its reads ``http.disconnect``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            super().send_400_response(msg)
            if self.cycle is not None:
                self.cycle.disconnected = True
                self.cycle.message_event.set()

    return H11


def _announce(config: MemoryConfig, host: str, port: int, token: str | None) -> None:
    source = "the token argument" if token else TOKEN_ENV if os.environ.get(TOKEN_ENV) else str(token_path(config))
    print(f"neuralsync: serving {config.home} on http://{host}:{port} (token from {source})", file=sys.stderr)
    print(f"neuralsync: dashboard at http://{host}:{port}/ui/ (sign in with 'neuralsync token')", file=sys.stderr)
    if not is_loopback(host):
        print(f"neuralsync: WARNING: listening on {host}, not loopback; the token is sent in clear text "
              "unless a TLS proxy is in front", file=sys.stderr)


def _run_until_stopped(server_config: Any, stop: Any) -> None:
    """Run uvicorn; on SIGINT/SIGTERM tell open event streams to finish so shutdown need not wait on them."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            stop.set()
            super().handle_exit(sig, frame)

    StoppingServer(server_config).run()


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m neuralsync.server.run``."""
    parser = argparse.ArgumentParser(
        prog="python -m neuralsync.server.run",
        description="Serve a neuralsync store over HTTP. Binds 127.0.0.1 only (never another interface "
                    "unless --host says so); every route except /health requires "
                    "'Authorization: Bearer <token>', the token being $NS_TOKEN or the file "
                    "<home>/server.token (mode 0600, created on first run).")
    parser.add_argument("--home", help="store directory (default: $NEURALSYNC_HOME, else ~/.neuralsync2/memory)")
    parser.add_argument("--host", help=f"interface to bind (default: $NS_HOST, $NS_ENDPOINT, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"port (default: $NS_PORT, $NS_ENDPOINT, else {DEFAULT_PORT})")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="larger request bodies are refused with 413 (default: 1 MiB)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--sync-interval", type=float, metavar="SECONDS",
                        help="sync with every trusted peer this often (default: the sync_interval_s setting, "
                             "0: only on demand)")
    parser.add_argument("--no-write-queue", action="store_true",
                        help="commit each request's write alone instead of grouping concurrent writes "
                             "into one transaction (slower; for comparison)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors become one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        given = {} if args.sync_interval is None else {"sync_interval_s": args.sync_interval}
        config = MemoryConfig.from_env(args.home, **given)
        serve(config, args.host, args.port, max_body_bytes=args.max_body_bytes,
              log_level=args.log_level, write_queue=not args.no_write_queue)
    except NeuralSyncError as exc:
        print(f"neuralsync: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
