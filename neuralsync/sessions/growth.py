"""Growth tracking: memories and bytes per day, and when the configured quota will be reached."""

from __future__ import annotations

import time
from typing import Any

from ..store.storage import Storage
from ..utils import now_ms

DAY_MS = 86_400_000


def growth(storage: Storage, days: int = 30, quota_bytes: int | None = None) -> dict[str, Any]:
    """Memories and estimated bytes per day over the last ``days``, and when ``quota_bytes`` is reached."""
    now = now_ms()
    conn = storage.conn
    rows = conn.execute("SELECT created_at / ? AS day, count(*) FROM memories WHERE created_at >= ?"
                        " GROUP BY day ORDER BY day", (DAY_MS, now - days * DAY_MS)).fetchall()
    total = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
    size = storage.sizes()["total_bytes"]
    per_memory = size / total if total else 0.0
    per_day = [{"day": time.strftime("%Y-%m-%d", time.gmtime(day * DAY_MS / 1000)), "memories": n,
                "bytes": int(n * per_memory)} for day, n in rows]
    daily_bytes = sum(d["bytes"] for d in per_day) / max(1, days)
    result: dict[str, Any] = {"days": days, "per_day": per_day, "total_bytes": size,
                              "bytes_per_memory": round(per_memory, 1),
                              "avg_bytes_per_day": round(daily_bytes, 1)}
    if quota_bytes:
        remaining = quota_bytes - size
        result["quota_bytes"] = quota_bytes
        result["days_until_quota"] = (0.0 if remaining <= 0 else
                                      None if daily_bytes == 0 else round(remaining / daily_bytes, 1))
    return result
