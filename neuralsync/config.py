"""``MemoryConfig``: every knob in one dataclass, environment read in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError
from .model import MAX_CONTENT_CHARS, MERGE_STRATEGIES

DEFAULT_HOME = "~/.neuralsync2/memory"
HOME_ENV = "NEURALSYNC_HOME"
MERGE_ENV = "NEURALSYNC_MERGE"  # the store's merge strategy for this process (e.g. off)
MONITOR_PUBLISH_ENV = "NEURALSYNC_MONITOR_PUBLISH_S"  # seconds between monitor publications
DURABILITY_LEVELS = ("normal", "full")


@dataclass(frozen=True)
class MemoryConfig:
    """Settings of one store. Paths starting with ``~`` are expanded on use.

    ``base_path`` holds ``memory.db`` and the replica's key. ``pool_size_mb``
    is the memory-mapped window over the database file (SQLite ``mmap_size``).
    ``durability`` ``"normal"`` survives a crashed process (WAL, no fsync per
    commit); ``"full"`` also survives power loss at an fsync per commit.
    """

    base_path: str | os.PathLike[str] = DEFAULT_HOME
    target_response_time_ms: float = 5.0
    enable_auto_optimization: bool = True
    pool_size_mb: int = 512
    cache_size_mb: int = 128
    durability: str = "normal"
    busy_timeout_ms: int = 10_000
    max_content_chars: int = MAX_CONTENT_CHARS  # this store's writes; at most the protocol's limit
    max_tags: int = 64
    max_tag_chars: int = 128
    max_metadata_bytes: int = 64 * 1024
    max_top_k: int = 1000
    # Recall work bound: a longer query is refused (a 60,000-word query cost seconds of CPU).
    max_query_chars: int = 10_000
    redact_secrets: bool = True
    extra_secret_patterns: tuple[str, ...] = ()
    tool: str | None = None
    monitor_samples: int = 4096
    # Seconds between publications of a long-running process's monitor figures for the
    # store's other processes (every process also publishes at close); 0: only at close.
    monitor_publish_s: float = 10.0
    # Growth: the size the store is expected to stay under (projection only).
    quota_bytes: int = 2 * 1024**3
    session_timeout_ms: int = 3_600_000
    # Recall work bound: at most this many FTS matches are scored per query
    # term set; beyond it, scoring is restricted to the newest matching rows.
    text_match_budget: int = 2000
    # Semantic recall: "minilm" (all-MiniLM-L6-v2 int8 on onnxruntime, offline),
    # "wordllama" (fast, lower quality; the [wordllama] extra), "hashing" (no
    # dependency), "sentence-transformers:<model>", "openai:<model>@<url>"; "none"
    # disables it.
    embedder: str = "minilm"
    # Embed inside the writing call (True) or leave new memories queued (False, the
    # default): servers embed the queue in the background as writes arrive, and a
    # search embeds a small queue first, so a remember never waits for the model.
    embed_on_write: bool = False
    # Embed through the `neuralsync serve` running on this store when there is one, so the
    # machine holds one model, not one per process; the local model is the fallback.
    embed_via_server: bool = True
    # Hybrid recall can keep a memory without a real text match only if its cosine
    # similarity reaches max(semantic_floor, semantic_relative_floor * best
    # similarity of the query). Off by default: on the held-out half of
    # bench/eval/eval_set_v2.json every floor tried (0.05-0.1, 0.3-0.5 relative)
    # only lost answers, as semantic mode has no floor either.
    semantic_floor: float = 0.0
    semantic_relative_floor: float = 0.0
    # Replication: a server syncs with every trusted peer this often (0: only on demand).
    sync_interval_s: float = 0.0
    # The merger: duplicates in a scope are merged on write (exact) and after embedding (near, at or
    # above the cosine threshold, measured in bench/eval_dedupe.py) by the scope's strategy, else the
    # store's; ``dedupe=False`` turns it off (a call may still ask for a strategy).
    dedupe: bool = True
    merge_strategy: str = "semantic_merge"
    scope_merge_strategies: dict[str, str] = field(default_factory=dict)
    near_duplicate_threshold: float = 0.80
    # A merge can be undone this long; after it, compaction may prune the merged memory's old ops.
    merge_undo_days: float = 30.0
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_LEVELS:
            raise ConfigError(f"durability must be one of {DURABILITY_LEVELS}, not {self.durability!r}")
        for name in ("pool_size_mb", "cache_size_mb", "busy_timeout_ms", "max_content_chars",
                     "max_top_k", "text_match_budget", "max_query_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, not {value!r}")
        if self.max_content_chars > MAX_CONTENT_CHARS:
            raise ConfigError(f"max_content_chars can lower the protocol's content limit ({MAX_CONTENT_CHARS}), "
                              f"not raise it: peers would refuse longer content; not {self.max_content_chars}")
        if (isinstance(self.monitor_publish_s, bool) or not isinstance(self.monitor_publish_s, (int, float))
                or not 0 <= self.monitor_publish_s <= 3600):
            raise ConfigError(f"monitor_publish_s must be from 0 to 3600 seconds, not {self.monitor_publish_s!r}")
        if not isinstance(self.sync_interval_s, (int, float)) or not 0 <= self.sync_interval_s <= 86_400:
            raise ConfigError(f"sync_interval_s must be from 0 (off) to 86400 seconds, not {self.sync_interval_s!r}")
        scoped = [(f"scope_merge_strategies[{k!r}]", v) for k, v in self.scope_merge_strategies.items()]
        for where, strategy in [("merge_strategy", self.merge_strategy), *scoped]:
            if strategy not in (*MERGE_STRATEGIES, "off"):
                raise ConfigError(f"{where} must be one of {(*MERGE_STRATEGIES, 'off')}, not {strategy!r}")
        if not isinstance(self.near_duplicate_threshold, (int, float)) or not 0 < self.near_duplicate_threshold <= 1:
            raise ConfigError(f"near_duplicate_threshold must be in (0, 1], not {self.near_duplicate_threshold!r}")
        if isinstance(self.merge_undo_days, bool) or not isinstance(self.merge_undo_days, (int, float)) \
                or not 0 <= self.merge_undo_days <= 36_500:
            raise ConfigError(f"merge_undo_days must be from 0 to 36500, not {self.merge_undo_days!r}")
        if self.target_response_time_ms <= 0:
            raise ConfigError("target_response_time_ms must be positive")

    @property
    def home(self) -> Path:
        """The store directory, with ``~`` expanded (not created)."""
        return Path(os.path.expanduser(os.fspath(self.base_path)))

    @property
    def db_path(self) -> Path:
        """The SQLite file of this store."""
        return self.home / "memory.db"

    @property
    def key_path(self) -> Path:
        """This replica's Ed25519 private key (mode 0600)."""
        return self.home / "identity.key"

    @classmethod
    def from_env(cls, base_path: str | os.PathLike[str] | None = None, **overrides: object) -> MemoryConfig:
        """Config for entry points: ``base_path`` argument, else ``$NEURALSYNC_HOME``, else the default."""
        path = base_path or os.environ.get(HOME_ENV) or DEFAULT_HOME
        if os.environ.get(MERGE_ENV) and "merge_strategy" not in overrides:
            overrides["merge_strategy"] = os.environ[MERGE_ENV]
        if os.environ.get(MONITOR_PUBLISH_ENV) and "monitor_publish_s" not in overrides:
            try:
                overrides["monitor_publish_s"] = float(os.environ[MONITOR_PUBLISH_ENV])
            except ValueError:
                raise ConfigError(f"${MONITOR_PUBLISH_ENV} must be a number of seconds") from None
        return replace(cls(base_path=path), **overrides)  # type: ignore[arg-type]
