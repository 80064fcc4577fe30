"""Running a relay: its home (the relay's signing key, mode 0600), migrations, and the HTTP server.

A relay keeps nothing but its key on disk: everything else (ops, members, nonces) is in PostgreSQL, so any
number of relay processes may serve one database. Processes that share a home share a key, and clients
see them as one relay.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nacl.signing

from ..errors import DependencyMissing
from ..oplog.identity import load_or_create_key
from .store import RelayStore

DEFAULT_PORT = 8391
KEY_FILE = "relay.key"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def relay_home(home: str | None = None) -> Path:
    """``--home``, else ``$NEURALSYNC_RELAY_HOME``, else ``~/.neuralsync2/relay``."""
    chosen = home or os.environ.get("NEURALSYNC_RELAY_HOME") or "~/.neuralsync2/relay"
    return Path(chosen).expanduser()


def relay_key(home: Path) -> nacl.signing.SigningKey:
    """The relay's signing key (created on first use; a key readable by others is refused)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return load_or_create_key(home / KEY_FILE)


def migrate(db: str) -> tuple[int, int]:
    """(migrations applied now, schema version) on the database."""
    store = RelayStore(db)
    applied = store.migrate()
    return applied, store.version()


def serve(db: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, home: str | None = None,
          log_level: str = "info") -> None:
    """Migrate, then serve until interrupted (blocking); prints where it listens and its public key."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise DependencyMissing(f"the relay's HTTP server needs {exc.name}: pip install 'neuralsync[server,team]'"
                                ) from None
    from .service import Relay

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    key = relay_key(relay_home(home))
    applied, version = migrate(db)
    relay = Relay(RelayStore(db), key)
    print(f"neuralsync relay on http://{host}:{port}/relay/v1 (schema version {version},"
          f" {applied} migration(s) applied now)", flush=True)
    print(f"relay public key: {relay.public_key.hex()}", flush=True)
    config = uvicorn.Config(create_app(relay), host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=3, server_header=False, proxy_headers=False)
    uvicorn.Server(config).run()
