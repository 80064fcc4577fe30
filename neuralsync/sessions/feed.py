"""The change feed: every process follows every other process's writes, with no daemon or broker.

The feed is the op log's local sequence number. A follower polls ``PRAGMA
data_version`` (which changes only when another connection commits, and costs
no I/O) every ``poll_interval`` seconds and reads ``ops WHERE seq > last`` when
it moves.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from ..model import Change
from ..store.reads import read_changes
from ..store.storage import Storage
from ..utils import read_only_uri

DEFAULT_POLL_INTERVAL = 0.02
FEED_BATCH = 1000


class ChangeFeed:
    """Follows one store's op log."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def last_seq(self) -> int:
        """The newest local sequence number (0 for an empty store)."""
        return int(self.storage.conn.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0])

    def subscribe(self, since: int | None = None, timeout: float | None = None,
                  stop: threading.Event | None = None,
                  poll_interval: float = DEFAULT_POLL_INTERVAL) -> Iterator[Change]:
        """Yield every change after ``since`` (default: now) as it is committed by any process.

        Ends when ``stop`` is set or after ``timeout`` seconds (None: never).
        Uses its own read-only connection, closed when the iterator is closed.
        """
        conn = sqlite3.connect(read_only_uri(self.storage.path), uri=True, check_same_thread=False)
        try:
            cursor = self.last_seq() if since is None else since
            deadline = None if timeout is None else time.monotonic() + timeout
            version = None
            while not (stop is not None and stop.is_set()):
                current = conn.execute("PRAGMA data_version").fetchone()[0]
                if current != version:
                    version = current
                    while batch := read_changes(conn, cursor, FEED_BATCH):
                        for change in batch:
                            cursor = change.seq
                            yield change
                if deadline is not None and time.monotonic() >= deadline:
                    return
                time.sleep(poll_interval)
        finally:
            conn.close()

    def watch(self, callback: Callable[[Change], None], since: int | None = None) -> threading.Event:
        """Call ``callback`` for each change from a daemon thread; set the returned event to stop."""
        stop = threading.Event()
        start = self.last_seq() if since is None else since

        def run() -> None:
            for change in self.subscribe(since=start, stop=stop):
                callback(change)

        threading.Thread(target=run, name="neuralsync-watch", daemon=True).start()
        return stop
