"""A store directory may have any name a user gives it: spaces, '?', '#', '%' and non-ASCII included."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from neuralsync.services.doctor import run_doctor
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI


def test_a_store_under_an_odd_path_works_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "my memory ?#% ünï"
    with UnifiedMemoryAPI(MemoryConfig(base_path=home, embedder="none")) as api:
        changes: list[str] = []
        since = api.last_seq()  # from here, however late the follower starts on a loaded machine
        follower = threading.Thread(target=lambda: changes.extend(c.kind for c in api.subscribe(since=since,
                                                                                               timeout=2.0)))
        follower.start()
        time.sleep(0.3)
        memory_id = api.remember("odd paths are fine")
        follower.join(5)
        assert changes == ["create"]
        assert api.recall("odd paths")[0].id == memory_id
        assert run_doctor(api.storage).ok
    assert (home / "memory.db").exists()
