"""``MemoryConfig``: every knob in one dataclass; the config file and the environment read in one place.

Where a setting comes from, strongest first: an explicit argument (``from_env(**overrides)``, the
command line), the environment (``NEURALSYNC_<SETTING>``, e.g. ``NEURALSYNC_POOL_SIZE_MB``; the store
directory is ``NEURALSYNC_HOME``), the store's config file (``<home>/config.toml``, one key per
setting), the default. :func:`resolve` also says where each value came from (``neuralsync config``).
"""

from __future__ import annotations

import json
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    # A process that is not the store's server sends its recalls (every mode) to the `neuralsync serve`
    # announced on the store: the same answer, with nothing loaded here (no numpy, index or model); it
    # searches locally when there is none or it cannot answer. The server itself always searches locally.
    recall_via_server: bool = True
    # Hybrid recall can keep a memory without a real text match only if its cosine
    # similarity reaches max(semantic_floor, semantic_relative_floor * best
    # similarity of the query). Off by default: on the held-out half of
    # bench/eval/eval_set_v2.json every floor tried (0.05-0.1, 0.3-0.5 relative)
    # only lost answers, as semantic mode has no floor either.
    semantic_floor: float = 0.0
    semantic_relative_floor: float = 0.0
    # Replication: a server syncs with every trusted peer this often (0: only on demand).
    sync_interval_s: float = 0.0
    # Shared scopes: a server syncs each one that has a relay this often (0: only on demand).
    team_sync_interval_s: float = 60.0
    # The merger: duplicates in a scope are merged on write (exact) and after embedding (near, at or
    # above the cosine threshold, measured in bench/eval_dedupe.py) by the scope's strategy, else the
    # store's; ``dedupe=False`` turns it off (a call may still ask for a strategy).
    dedupe: bool = True
    merge_strategy: str = "semantic_merge"
    scope_merge_strategies: dict[str, str] = field(default_factory=dict)
    near_duplicate_threshold: float = 0.80
    # A merge can be undone this long; after it, compaction may prune the merged memory's old ops.
    merge_undo_days: float = 30.0
    # `neuralsync hook` (issue 16): the most context, in UTF-8 bytes, one hook event adds to an agent's prompt.
    hook_budget_bytes: int = 6000
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
        for name in ("sync_interval_s", "team_sync_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86_400:
                raise ConfigError(f"{name} must be from 0 (off) to 86400 seconds, not {value!r}")
        scoped = [(f"scope_merge_strategies[{k!r}]", v) for k, v in self.scope_merge_strategies.items()]
        for where, strategy in [("merge_strategy", self.merge_strategy), *scoped]:
            if strategy not in (*MERGE_STRATEGIES, "off"):
                raise ConfigError(f"{where} must be one of {(*MERGE_STRATEGIES, 'off')}, not {strategy!r}")
        if not isinstance(self.near_duplicate_threshold, (int, float)) or not 0 < self.near_duplicate_threshold <= 1:
            raise ConfigError(f"near_duplicate_threshold must be in (0, 1], not {self.near_duplicate_threshold!r}")
        if isinstance(self.quota_bytes, bool) or not isinstance(self.quota_bytes, int) or self.quota_bytes < 0:
            raise ConfigError(f"quota_bytes must be a non-negative integer (0: no quota), not {self.quota_bytes!r}")
        if isinstance(self.merge_undo_days, bool) or not isinstance(self.merge_undo_days, (int, float)) \
                or not 0 <= self.merge_undo_days <= 36_500:
            raise ConfigError(f"merge_undo_days must be from 0 to 36500, not {self.merge_undo_days!r}")
        if isinstance(self.hook_budget_bytes, bool) or not isinstance(self.hook_budget_bytes, int) \
                or not 200 <= self.hook_budget_bytes <= 1_000_000:
            raise ConfigError(f"hook_budget_bytes must be from 200 to 1000000, not {self.hook_budget_bytes!r}")
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

    @property
    def config_path(self) -> Path:
        """The store's config file (read if present, never created)."""
        return self.home / CONFIG_FILE_NAME

    @classmethod
    def from_env(cls, base_path: str | os.PathLike[str] | None = None, **overrides: object) -> MemoryConfig:
        """Config for entry points: ``base_path`` argument, else ``$NEURALSYNC_HOME``, else the default;
        every other setting from ``overrides``, else ``$NEURALSYNC_<SETTING>``, else ``<home>/config.toml``,
        else the default (see :func:`resolve`)."""
        return resolve(base_path, **overrides)[0]


# ================================================================ file and environment
CONFIG_FILE_NAME = "config.toml"
ENV_PREFIX = "NEURALSYNC_"
# Older names still read (after the regular name) for the settings that had one.
ENV_ALIASES: dict[str, tuple[str, ...]] = {"merge_strategy": (MERGE_ENV,)}
DEFAULT, FILE, ENV, ARGUMENT = "default", "file", "env", "argument"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One effective value and where it came from: ``source`` is default, file, env or argument;
    ``origin`` names the variable or the file (empty for defaults and arguments)."""

    name: str
    value: Any
    source: str
    origin: str = ""


def env_name(name: str) -> str:
    """The environment variable of a setting: ``NEURALSYNC_HOME`` for ``base_path``, else ``NEURALSYNC_<NAME>``."""
    return HOME_ENV if name == "base_path" else ENV_PREFIX + name.upper()


def setting_kinds() -> dict[str, str]:
    """Each setting's value kind: bool, int, float, str, optional_str, str_list, table or path."""
    hints = typing.get_type_hints(MemoryConfig)
    kinds: dict[str, str] = {}
    for f in fields(MemoryConfig):
        text = str(hints[f.name]).replace("typing.", "")
        hint = hints[f.name]
        kinds[f.name] = ("path" if f.name == "base_path" else hint.__name__ if hint in (bool, int, float, str)
                         else "str_list" if text.startswith("tuple") else "table" if text.startswith("dict")
                         else "optional_str" if "None" in text else "str")
    return kinds


_KIND_TEXT = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
              "optional_str": "a string", "str_list": "a list of strings", "table": "a table of values",
              "path": "a path"}


def _from_env_text(name: str, kind: str, raw: str, where: str) -> object:
    """The typed value of an environment variable's text (lists and tables as JSON)."""
    text = raw.strip()
    if kind == "bool":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{where} must be true or false (1/0, yes/no, on/off), not {raw!r}")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, not {raw!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where} must be a number, not {raw!r}") from None
    if kind in ("str_list", "table"):
        try:
            value = json.loads(text)
        except ValueError:
            example = '["pattern", ...]' if kind == "str_list" else '{"key": "value"}'
            raise ConfigError(f"{where} must be JSON ({example}), not {raw!r}") from None
        return _checked(name, kind, value, where)
    return raw


def _checked(name: str, kind: str, value: object, where: str) -> object:
    """``value`` (from the file, or JSON from the environment) if it is of the setting's kind."""
    ok = {"bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str), "optional_str": isinstance(value, str), "path": isinstance(value, str),
          "str_list": isinstance(value, list) and all(isinstance(item, str) for item in value),
          "table": isinstance(value, dict)}[kind]
    if not ok:
        raise ConfigError(f"{where} must be {_KIND_TEXT[kind]}, not {value!r}")
    if kind == "float" and not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise ConfigError(f"{where} must be a finite number, not {value!r}")
    if isinstance(value, list):  # str_list
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{where}: {pattern!r} is not a regular expression: {exc}") from None
        return tuple(value)
    if kind == "float" and isinstance(value, int):
        return float(value)
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML table of a config file ({} when there is none)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no file (or not even a home yet): nothing to read
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
    try:
        return dict(tomllib.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def resolve(base_path: str | os.PathLike[str] | None = None,
            **overrides: object) -> tuple[MemoryConfig, dict[str, Setting]]:
    """The effective config and, per setting, where its value came from.

    Precedence: ``overrides`` (and ``base_path``) > ``$NEURALSYNC_<SETTING>`` > ``<home>/config.toml`` >
    default. Types are checked on the way in: an error names the variable or the file and key, and
    an unknown key in the file is refused."""
    kinds = setting_kinds()
    unknown = sorted(set(overrides) - set(kinds) - {"base_path"})
    if unknown:
        raise TypeError(f"MemoryConfig has no setting {', '.join(unknown)}")
    defaults = MemoryConfig()
    chosen: dict[str, Setting] = {f.name: Setting(f.name, getattr(defaults, f.name), DEFAULT)
                                  for f in fields(MemoryConfig)}
    if base_path:
        chosen["base_path"] = Setting("base_path", base_path, ARGUMENT)
    elif os.environ.get(HOME_ENV):
        chosen["base_path"] = Setting("base_path", os.environ[HOME_ENV], ENV, HOME_ENV)
    path = Path(os.path.expanduser(os.fspath(chosen["base_path"].value))) / CONFIG_FILE_NAME
    for key, value in read_config_file(path).items():
        if key == "base_path":
            raise ConfigError(f"{path}: base_path cannot be set in the store's own config file "
                              f"(use --home or ${HOME_ENV})")
        if key not in kinds:
            raise ConfigError(f"{path}: unknown setting {key!r} (known: see 'neuralsync config')")
        chosen[key] = Setting(key, _checked(key, kinds[key], value, f"{path}: {key}"), FILE, str(path))
    for name, kind in kinds.items():
        if name == "base_path":
            continue
        for var in (env_name(name), *ENV_ALIASES.get(name, ())):
            raw = os.environ.get(var)
            if raw:  # empty means unset, as for NEURALSYNC_HOME
                chosen[name] = Setting(name, _from_env_text(name, kind, raw, f"${var}"), ENV, var)
                break
    for name, value in overrides.items():
        chosen[name] = Setting(name, value, ARGUMENT)
    try:
        config = MemoryConfig(**{name: s.value for name, s in chosen.items()})
    except ConfigError as exc:
        raise ConfigError(_blame(str(exc), chosen)) from None
    except TypeError as exc:  # a value of the wrong type that __post_init__ does not check itself
        raise ConfigError(_blame(str(exc), chosen)) from None
    return config, chosen


def _blame(message: str, chosen: dict[str, Setting]) -> str:
    """``message`` (which starts with the setting's name) plus where the bad value was set."""
    name = re.split(r"[^a-z_]", message, maxsplit=1)[0]
    setting = chosen.get(name)
    if setting is None or setting.source in (DEFAULT, ARGUMENT):
        return message
    return f"{message} (set by ${setting.origin})" if setting.source == ENV else f"{message} (set in {setting.origin})"
