"""`neuralsync import` of a home written by NeuralSync2's own server (issue 12): its items (tags, meta, ttl,
tool), an item it deleted and one it updated through its /sync/push, an expired one, and a persona set twice
across a restart of its server (its Lamport clock restarts at 0: its kv table keeps the older persona).
Nothing lost, nothing invented, the persona carried, and a second import, given the home or its memory.db,
adds nothing. Skipped without its source tree and pinned deps (see ``tests/_ns2ref.py``)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from _ns2ref import Ns2Server, ns2_server, reference

from neuralsync.cli import main
from neuralsync.integrations.ns2_wire import items_of
from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI

pytestmark = pytest.mark.slow
COMPARED = ("id", "kind", "text", "scope", "tool", "tags", "confidence", "benefit", "consistency", "created_at",
            "ttl_ms", "expires_at", "site_id", "lamport", "source", "meta")


def _write_through_its_server(server: Ns2Server) -> dict[str, dict[str, Any]]:
    """Items as its clients write them; returns them by name as its server answered."""
    made = {
        "tagged": server.call("POST", "/remember", {"text": "Loves minimal elegant code.", "kind": "preference",
                                                     "tags": ["style", "code", "style"], "tool": "claude-code",
                                                     "meta": {"origin": "chat", "é": [1, 2]}, "confidence": 0.9,
                                                     "benefit": 0.4, "consistency": 0.6, "source": "nsctl"}),
        "ttl": server.call("POST", "/remember", {"text": "Remote roles until the ankle heals.",
                                                  "ttl_ms": 30 * 86_400_000, "scope": "career"}),
        "plain": server.call("POST", "/remember", {"text": "Deploys happen on Tuesdays."}),
        "doomed": server.call("POST", "/remember", {"text": "A fact deleted later."}),
        "changed": server.call("POST", "/remember", {"text": "Uses tabs."}),
        "expired": server.call("POST", "/remember", {"text": "A short-lived note.", "ttl_ms": 1}),
    }
    # Its API has no delete or update route: those arrive by /sync/push, in the {pos, op} form it expects.
    update = {**made["changed"], "text": "Uses spaces, four of them.", "lamport": made["changed"]["lamport"] + 10}
    answer = server.call("POST", "/sync/push", {"ops": [
        {"pos": 0, "op": {"op": "delete", "id": made["doomed"]["id"]}},
        {"pos": 0, "op": {"op": "update", "id": update["id"], "payload": update}}]})
    assert answer == {"applied": 2}
    made["changed"] = update
    return made


def test_a_home_written_by_neuralsync2s_server_imports_whole_and_once(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ref = reference(server=True)
    user = tmp_path / "user"
    with ns2_server(ref, user) as server:
        server.call("POST", "/persona", {"text": "First persona."})
        made = _write_through_its_server(server)
    with ns2_server(ref, user) as server:  # restarted: its Lamport clock is 0 again
        server.call("POST", "/persona", {"text": "Latest persona."})
        assert server.call("GET", "/persona")["text"] == "Latest persona."  # what its users saw
    data = user / ".neuralsync"
    kv = sqlite3.connect(data / "memory.db").execute("SELECT v FROM kv WHERE k = 'persona'").fetchone()[0]
    assert json.loads(kv)["text"] == "First persona."  # its kv kept the older one: the log must decide
    time.sleep(0.01)  # the 1 ms ttl has passed

    store = tmp_path / "store"
    assert main(["--home", str(store), "--json", "import", str(data)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["imported"], first["rejected"], first["persona"]) == (4, 0, "carried")
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        ops = api.counts()["ops"]
        live = {m.content: m for m in api.range_recall(limit=100)}
        assert set(live) == {made[name]["text"] for name in ("tagged", "ttl", "plain", "changed")}
        assert api.get_persona() == "Latest persona."
        # As our legacy routes answer them: NeuralSync2's own item, field for field.
        answered = {item["text"]: item for item in items_of(api, list(live.values()))}
        for name in ("tagged", "ttl", "plain", "changed"):
            theirs, ours = made[name], answered[made[name]["text"]]
            assert {k: ours[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}, name
        tagged = live[made["tagged"]["text"]]
        assert (tagged.tags, tagged.metadata["origin"]) == (("code", "style"), "chat")

    assert main(["--home", str(store), "--json", "import", str(data / "memory.db")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["imported"], again["skipped"], again["persona"]) == (0, 4, "kept")
    with UnifiedMemoryAPI(MemoryConfig(base_path=store)) as api:
        assert api.counts()["ops"] == ops  # nothing added: no copy, no persona memory, no persona write
        assert api.counts()["memories"] == 4
