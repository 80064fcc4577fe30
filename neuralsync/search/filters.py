"""Recall filters: validated once in the facade, turned into SQL for every search path."""

from __future__ import annotations

from dataclasses import dataclass

from ..store.reads import NOT_EXPIRED


@dataclass(frozen=True, slots=True)
class Filters:
    """Validated recall filters."""

    scope: str | None = None
    tags: tuple[str, ...] = ()
    tag_match: str = "any"
    kinds: tuple[str, ...] | None = None
    since: int | None = None
    until: int | None = None
    tool: str | None = None
    # NeuralSync2's rule (its legacy routes): a memory stored without a tool matches every tool.
    tool_or_unset: bool = False

    @property
    def restrictive(self) -> bool:
        """True when any filter beyond expiry applies."""
        return any((self.scope, self.tags, self.kinds, self.since, self.until, self.tool))

    def sql(self, now: int) -> tuple[str, list[object]]:
        """WHERE clauses on ``memories m`` (exact checks, expiry included)."""
        where: list[str] = [NOT_EXPIRED]
        args: list[object] = [now]
        if self.scope is not None:
            where.append("m.scope = ?")
            args.append(self.scope)
        if self.tool is not None:
            where.append("(m.tool = ? OR m.tool IS NULL)" if self.tool_or_unset else "m.tool = ?")
            args.append(self.tool)
        if self.kinds:
            where.append(f"m.kind IN ({','.join('?' * len(self.kinds))})")
            args.extend(self.kinds)
        if self.since is not None:
            where.append("m.created_at >= ?")
            args.append(self.since)
        if self.until is not None:
            where.append("m.created_at <= ?")
            args.append(self.until)
        if self.tags:
            marks = ",".join("?" * len(self.tags))
            if self.tag_match == "all":
                where.append(f"(SELECT count(DISTINCT t.tag) FROM tags t WHERE t.mem = m.rowid"
                             f" AND t.tag IN ({marks})) = {len(self.tags)}")
            else:
                where.append(f"EXISTS (SELECT 1 FROM tags t WHERE t.mem = m.rowid AND t.tag IN ({marks}))")
            args.extend(self.tags)
        return " AND ".join(where), args
