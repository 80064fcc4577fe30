"""Every process's figures, readable by the others: one small file per process under ``<home>/monitor/``.

A process writes ``<session id>.json`` (mode 0600, replaced atomically) from
its heartbeat (``start_background_maintenance``: servers, MCP servers) and at
close (every process that timed something, the one-shot CLI included). Each
holds, per operation, the count, sum, errors, stage totals, the last hour of
per-minute summaries and two HDR histograms (lifetime, last 5 minutes) in
HdrHistogram's compressed wire encoding, so readers merge exact distributions
rather than averaging percentiles.

Files rather than a table: publishing never takes the store's write lock (so it
cannot delay a writer, nor be delayed by one), needs no migration, and a
process killed mid-write leaves at worst a temporary file. Readers skip files
older than a day and delete them, and keep only the newest ``MAX_ENDED``
files of processes that are gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from ...utils import pid_alive
from .core import PerformanceMonitor, buckets, new_histogram, stage_rows, summary
from .resources import process_resources

log = logging.getLogger("neuralsync.monitor")

DIRECTORY = "monitor"
RETENTION_S = 86_400.0
MAX_ENDED = 64
FORMAT = 1
NO_TOOL = "(no tool)"


class SharedFigures:
    """Publish this process's monitor; read everyone's."""

    def __init__(self, home: Path, monitor: PerformanceMonitor, session_id: str, tool: str | None) -> None:
        self.dir = home / DIRECTORY
        self.monitor = monitor
        self.session_id = session_id
        self.tool = tool
        self.host = socket.gethostname()
        self.published_at: float | None = None

    @property
    def path(self) -> Path:
        return self.dir / f"{self.session_id}.json"

    # ------------------------------------------------------------ writing
    def snapshot(self, ended: bool = False) -> dict[str, Any]:
        """This process's figures in the published form."""
        operations = {}
        for name, row in self.monitor.histograms().items():
            operations[name] = {"count": row["count"], "errors": row["errors"], "sum_s": row["sum_s"],
                                "stages": row["stages"], "trend": row["trend"],
                                "hist": _encode(row["total"]), "hist_5m": _encode(row["window_5m"])}
        return {"format": FORMAT, "session_id": self.session_id, "tool": self.tool, "pid": os.getpid(),
                "host": self.host, "started": self.monitor.started, "published_at": time.time(),
                "ended": ended, "target_ms": self.monitor.target_ms, "operations": operations,
                "alerts": len(self.monitor.alerts()), "resources": process_resources(load_psutil=not ended)}

    def publish(self, ended: bool = False) -> bool:
        """Write the snapshot (nothing when nothing was timed); False if the directory is unwritable."""
        data = self.snapshot(ended)
        if not data["operations"] and not self.path.exists():
            return False
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            tmp = self.dir / f".{self.session_id}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only store directory: the figures stay in this process
            log.debug("could not publish monitor figures: %s", exc)
            return False
        self.published_at = data["published_at"]
        return True

    # ------------------------------------------------------------ reading
    def others(self) -> list[dict[str, Any]]:
        """Published snapshots of the other processes (stale and surplus ones pruned)."""
        try:
            paths = [p for p in self.dir.glob("*.json") if p.stem != self.session_id]
        except OSError:
            return []
        now = time.time()
        found = []
        for path in paths:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("format") != FORMAT:
                    continue
            except (OSError, ValueError):
                continue
            if now - float(data.get("published_at") or 0) > RETENTION_S:
                path.unlink(missing_ok=True)
                continue
            data["live"] = not data.get("ended") and (data.get("host") != self.host or pid_alive(int(data["pid"])))
            found.append((path, data))
        gone = sorted((d["published_at"], p) for p, d in found if not d["live"])
        dropped = {p for _, p in gone[:-MAX_ENDED]} if len(gone) > MAX_ENDED else set()
        for path in dropped:
            path.unlink(missing_ok=True)
        return [d for p, d in found if p not in dropped]

    def remove(self) -> None:
        """Delete this process's file (used by tests and a store removal)."""
        self.path.unlink(missing_ok=True)

    def across_processes(self) -> dict[str, Any]:
        """Everyone's figures (this process's live ones included): per process, per tool, and in total."""
        mine = self.snapshot()
        mine["live"] = True
        processes = [mine, *self.others()]
        by_tool: dict[str, dict[str, Any]] = {}
        total: dict[str, dict[str, Any]] = {}
        rows = []
        for proc in processes:
            label = proc.get("tool") or NO_TOOL
            tool = by_tool.setdefault(label, {"processes": 0, "live": 0, "operations": {}})
            tool["processes"] += 1
            tool["live"] += bool(proc["live"])
            ops_summary = {}
            for name, op in (proc.get("operations") or {}).items():
                hist = _decode(op.get("hist"))
                if hist is None:
                    continue
                ops_summary[name] = {**summary(hist, int(op["count"]), float(op["sum_s"])),
                                     "errors": int(op.get("errors", 0))}
                for target in (tool["operations"], total):
                    _add(target, name, hist, op)
            rows.append({"session_id": proc["session_id"], "tool": proc.get("tool"), "pid": proc["pid"],
                         "host": proc.get("host"), "live": proc["live"], "published_at": proc["published_at"],
                         "started": proc.get("started"), "alerts": proc.get("alerts", 0),
                         "resources": proc.get("resources", {}), "operations": ops_summary,
                         "this_process": proc is mine})
        for tool in by_tool.values():
            tool["operations"] = _finish(tool["operations"])
        return {"processes": rows, "by_tool": by_tool, "operations": _finish(total)}


def _encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def _decode(text: object) -> HdrHistogram | None:
    if not isinstance(text, str):
        return None
    try:
        return HdrHistogram.decode(text.encode("ascii"))
    except (ValueError, TypeError, OSError) as exc:  # a damaged file: skip that operation
        log.debug("unreadable histogram: %s", exc)
        return None


def _add(into: dict[str, dict[str, Any]], name: str, hist: HdrHistogram, op: dict[str, Any]) -> None:
    row = into.get(name)
    if row is None:
        row = into[name] = {"hist": new_histogram(), "count": 0, "sum_s": 0.0, "errors": 0, "stages": {},
                            "processes": 0}
    row["hist"].add(hist)
    row["count"] += int(op["count"])
    row["sum_s"] += float(op["sum_s"])
    row["errors"] += int(op.get("errors", 0))
    row["processes"] += 1
    for key, (n, s, mx) in (op.get("stages") or {}).items():
        st = row["stages"].setdefault(key, [0, 0.0, 0.0])
        st[0] += n
        st[1] += s
        st[2] = max(st[2], mx)


def _finish(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {name: {**summary(row["hist"], row["count"], row["sum_s"]), "errors": row["errors"],
                   "sum_s": row["sum_s"], "buckets": buckets(row["hist"]), "processes": row["processes"],
                   "stages": stage_rows(row["stages"], row["sum_s"])}
            for name, row in sorted(rows.items())}
