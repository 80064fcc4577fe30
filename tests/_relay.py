"""A relay app served by uvicorn on 127.0.0.1 in a thread, on a fresh database of a test cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import nacl.signing
import pgcluster
import uvicorn
from sse_starlette.sse import AppStatus

from neuralsync.relay.app import create_app
from neuralsync.relay.service import Relay
from neuralsync.relay.store import RelayStore


@contextmanager
def serving(cluster: pgcluster.Cluster, key: nacl.signing.SigningKey) -> Iterator[tuple[str, RelayStore]]:
    """(URL, store) of a running relay with the schema migrated; stopped (open streams ended) on exit."""
    store = RelayStore(cluster.new_database())
    store.migrate()
    app = create_app(Relay(store, key))
    port = pgcluster.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started and app.state.fanout.listening.wait(10)
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        AppStatus.should_exit = True  # sse-starlette ends open streams (a signal would set it in a real server)
        server.should_exit = True
        thread.join(10)
        AppStatus.should_exit = False
