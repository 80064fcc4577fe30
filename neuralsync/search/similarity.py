"""When two memories are the same fact: exact keys, near-duplicate decisions, what a merge keeps.

Pure functions, no model calls: the caller brings the cosine of the two texts'
(unit-length) embeddings; everything here is string work of a few microseconds.

- :func:`normalise` is the exact-duplicate key: equal keys in one scope are one memory.
- :func:`near_duplicate` merges two texts that embed close (``cosine >= threshold``)
  unless :func:`lexical_conflict` finds a reason they state different facts.
  Embeddings put "deploy to staging on Fridays" and "never deploy to staging on
  Fridays" at 0.91, so the words must have the last say.
- :func:`more_specific` and :func:`content_union` say what a merge keeps;
  both are deterministic so every replica keeps the same text.

The lexical rule is one idea applied to four kinds of token: a *substitution*
(each side carries something of a kind the other lacks) is a different fact,
an *addition* (only one side carries extra detail) is the same fact said more
precisely. The kinds: numbers (versions, ports, sizes, times), identifiers
(paths, URLs, flags, snake/camel case, dotted names), members of a small set
of well-known alternatives (package managers, environments, databases,
weekdays ...) and antonyms (enable/disable, always/never ...). Polarity is
the exception: a negation on one side only is a conflict by itself.
The thresholds and the rule are measured by ``bench/eval_dedupe.py``.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

from ..textnorm import normalise

__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "Decision",
    "content_union",
    "lexical_conflict",
    "more_specific",
    "near_duplicate",
    "normalise",
]

# Chosen by bench/eval_dedupe.py (max F0.5 on the tuning half of bench/eval/dedupe_pairs.jsonl, MiniLM):
# held-out precision 0.90, recall 0.88 with the lexical check (cosine alone: 0.65 / 0.94). See bench/README.md.
DEFAULT_NEAR_THRESHOLD = 0.69

_SPACE = re.compile(r"\s+")
_TRAILING = ".!?;:,…。！？；：，"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": " "})
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_PHRASE_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")  # "sign-off" is one word, not a negation
_NUMBER = re.compile(r"\d+(?:[.:,]\d+)*")
_TOKEN_EDGE = "\"'()[]{}<>!?*“”‘’«»"
_NUMERIC = re.compile(r"[\d.:,/+-]+")  # times, dates, versions: numbers, compared as such
_CAMEL = re.compile(r"[a-z][A-Z]")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=\S)")

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "once": "1", "twice": "2", "single": "1",
    "double": "2", "half": "0.5",
}
_NEGATIONS = frozenset("""
not no never none nothing nobody neither nor without cannot can't don't doesn't didn't isn't aren't wasn't
weren't won't wouldn't shouldn't mustn't shan't haven't hasn't hadn't couldn't needn't avoid avoids avoided
disable disables disabled disallow disallowed forbid forbids forbidden prohibit prohibited off stop stopped
skip skips skipped unset nope ban banned
""".split())
# Pairs of words that flip a fact; a word and its antonym, each on one side only, is a conflict.
_ANTONYMS: tuple[tuple[str, str], ...] = (
    ("enable", "disable"), ("enabled", "disabled"), ("allow", "deny"), ("allow", "block"), ("always", "never"),
    ("include", "exclude"), ("true", "false"), ("yes", "no"), ("accept", "reject"), ("before", "after"),
    ("min", "max"), ("minimum", "maximum"), ("increase", "decrease"), ("raise", "lower"), ("more", "less"),
    ("more", "fewer"), ("public", "private"), ("required", "optional"), ("upper", "lower"),
    ("uppercase", "lowercase"), ("add", "remove"), ("encrypt", "decrypt"), ("sync", "async"),
    ("synchronous", "asynchronous"), ("first", "last"), ("start", "end"), ("open", "closed"), ("lock", "unlock"),
    ("success", "failure"), ("pass", "fail"), ("inside", "outside"), ("internal", "external"),
    ("ascending", "descending"), ("asc", "desc"), ("absolute", "relative"), ("strict", "loose"),
    ("strict", "lenient"), ("local", "remote"), ("local", "global"), ("tabs", "spaces"), ("single", "double"),
    ("light", "dark"), ("short", "long"), ("small", "large"), ("old", "new"), ("top", "bottom"),
    ("left", "right"), ("morning", "evening"), ("morning", "afternoon"), ("am", "pm"), ("merge", "rebase"),
    ("squash", "rebase"), ("monorepo", "polyrepo"), ("horizontal", "vertical"), ("read", "write"),
)
# Well-known alternatives: two members of one group, each on one side only, are two different choices.
# Aliases map to the first spelling. Written from general knowledge, not tuned on the labelled pairs.
_ALTERNATIVES: tuple[tuple[str, ...], ...] = (
    ("npm", "pnpm", "yarn", "bun", "pip", "pipx", "poetry", "uv", "conda", "pipenv", "cargo", "maven", "gradle",
     "composer", "bundler", "brew", "homebrew", "apt", "nix"),
    ("production", "prod", "staging", "stage", "development", "dev", "test", "testing", "qa", "sandbox",
     "preview", "canary", "local"),
    ("python", "javascript", "js", "typescript", "ts", "go", "golang", "rust", "java", "kotlin", "ruby", "php",
     "swift", "scala", "elixir", "c#", "csharp", "c++", "cpp", "bash", "zsh", "fish", "powershell", "lua"),
    ("postgres", "postgresql", "mysql", "mariadb", "sqlite", "mongodb", "mongo", "redis", "dynamodb",
     "cassandra", "elasticsearch", "opensearch", "clickhouse", "snowflake", "bigquery", "memcached", "kafka",
     "rabbitmq", "sqs", "nats"),
    ("pytest", "unittest", "nose", "jest", "vitest", "mocha", "jasmine", "cypress", "playwright", "selenium",
     "rspec", "junit", "hypothesis"),
    ("black", "ruff", "flake8", "pylint", "isort", "autopep8", "yapf", "prettier", "eslint", "biome", "rome",
     "tslint", "rubocop", "gofmt", "rustfmt", "clippy", "mypy", "pyright", "pyre"),
    ("react", "vue", "svelte", "angular", "preact", "ember", "htmx", "nextjs", "nuxt",
     "remix", "astro", "gatsby", "django", "flask", "fastapi", "rails", "express", "nestjs", "spring",
     "laravel", "starlette", "tornado", "sanic", "gin", "fiber", "axum", "actix"),
    ("linux", "ubuntu", "debian", "fedora", "alpine", "centos", "arch", "macos", "mac", "osx", "windows",
     "wsl", "freebsd"),
    ("aws", "gcp", "azure", "heroku", "vercel", "netlify", "digitalocean", "cloudflare",
     "hetzner", "linode"),
    ("main", "master", "develop", "trunk", "release"),
    ("github", "gitlab", "bitbucket", "gitea", "jenkins", "circleci", "travis", "buildkite", "teamcity",
     "drone", "argo", "argocd", "flux", "spinnaker"),
    ("docker", "podman", "containerd", "kubernetes", "k8s", "nomad", "swarm", "ecs", "lambda", "vm",
     "compose", "helm", "kustomize", "terraform", "pulumi", "ansible", "chef", "puppet", "cloudformation"),
    ("vim", "neovim", "nvim", "emacs", "vscode", "intellij", "pycharm", "webstorm", "sublime",
     "zed", "cursor", "xcode"),
    ("monday", "mondays", "tuesday", "tuesdays", "wednesday", "wednesdays", "thursday", "thursdays", "friday",
     "fridays", "saturday", "saturdays", "sunday", "sundays", "weekday", "weekdays", "weekend", "weekends"),
    ("january", "february", "april", "june", "july", "august", "september", "october",
     "november", "december"),
    ("daily", "hourly", "weekly", "monthly", "yearly", "nightly", "quarterly"),
    ("seconds", "minutes", "minute", "hours", "hour", "days", "day", "weeks", "week", "months",
     "month", "years", "year", "ms", "milliseconds"),
    ("kb", "mb", "gb", "tb", "kib", "mib", "gib"),
    ("utc", "pst", "pdt", "est", "edt", "cet", "cest", "gmt", "ist", "jst"),
    ("camelcase", "snake_case", "kebab-case", "pascalcase", "screaming_snake_case"),
    ("json", "yaml", "yml", "toml", "xml", "csv", "ini", "protobuf", "msgpack", "parquet", "avro"),
    ("rest", "graphql", "grpc", "soap", "websocket", "websockets", "sse", "trpc"),
    ("http", "https", "ssh", "ftp", "sftp", "tcp", "udp"),
    ("slack", "teams", "discord", "email", "jira", "linear", "trello", "asana", "notion", "confluence"),
    ("chrome", "firefox", "safari"),
    ("oauth", "saml", "jwt", "ldap"),
    ("unit", "integration", "e2e", "end-to-end", "smoke", "load", "snapshot", "regression"),
    ("webpack", "vite", "rollup", "esbuild", "parcel", "turbopack", "swc", "babel", "tsc"),
    ("celery", "rq", "dramatiq", "sidekiq", "airflow", "dagster", "prefect", "cron", "temporal"),
    ("nginx", "apache", "caddy", "traefik", "envoy", "haproxy", "gunicorn", "uvicorn", "uwsgi", "hypercorn"),
    ("sentry", "datadog", "grafana", "prometheus", "newrelic", "honeycomb", "splunk", "kibana", "loki"),
    ("requests", "httpx", "aiohttp", "urllib3", "urllib", "axios", "fetch", "superagent"),
    ("markdown", "restructuredtext", "rst", "asciidoc", "latex", "org-mode", "mdx"),
    ("alembic", "flyway", "liquibase", "sqitch", "dbmate", "goose", "atlas", "prisma", "knex", "sequelize"),
    ("claude", "codex", "gemini", "copilot", "gpt", "chatgpt", "llama", "mistral"),
    ("s3", "gcs", "r2", "minio"),
)
_ALIASES = {
    "prod": "production", "stage": "staging", "dev": "development", "testing": "test", "js": "javascript",
    "ts": "typescript", "golang": "go", "csharp": "c#", "cpp": "c++", "postgresql": "postgres", "mongo": "mongodb",
    "homebrew": "brew", "mac": "macos", "osx": "macos", "k8s": "kubernetes", "nvim": "neovim",
    "yml": "yaml", "argocd": "argo", "websockets": "websocket", "end-to-end": "e2e",
    "mondays": "monday", "tuesdays": "tuesday", "wednesdays": "wednesday", "thursdays": "thursday",
    "fridays": "friday", "saturdays": "saturday", "sundays": "sunday", "weekdays": "weekday",
    "weekends": "weekend", "minute": "minutes", "hour": "hours", "day": "days",
    "week": "weeks", "month": "months", "year": "years", "milliseconds": "ms", "kib": "kb", "mib": "mb",
    "gib": "gb", "rst": "restructuredtext", "pdt": "pst", "edt": "est", "cest": "cet",
}
_GROUP_OF = {word: index for index, group in enumerate(_ALTERNATIVES) for word in group}
_ANTONYM_OF: dict[str, frozenset[str]] = {}
for _x, _y in _ANTONYMS:
    _ANTONYM_OF[_x] = _ANTONYM_OF.get(_x, frozenset()) | {_y}
    _ANTONYM_OF[_y] = _ANTONYM_OF.get(_y, frozenset()) | {_x}
# Words that are not content: left out of the specificity count.
_FUNCTION_WORDS = frozenset("""
a an the and or but of to in on at for with by from as is are was were be been being it its this that these
those we our us you your i my me they them their he she his her do does did so if then than there here into
onto over about also just only should must will would can could may might shall have has had all any each
every some such very use using used please always
""".split())


class Decision(NamedTuple):
    """Whether two texts are one fact, and why (for logs and for the merge record)."""

    duplicate: bool
    reason: str


class _Facts(NamedTuple):
    words: frozenset[str]
    negations: int
    numbers: frozenset[str]
    number_order: tuple[str, ...]
    identifiers: frozenset[str]
    raw_tokens: frozenset[str]
    choices: dict[int, frozenset[str]]


def _identifier(token: str) -> bool:
    """Looks like code: a flag, a path or URL, snake_case, camelCase, a dotted or ``=`` name, an env var."""
    if len(token) < 2 or _NUMERIC.fullmatch(token):
        return False
    if token[0] == "-" and len(token) > 1 and token.lstrip("-")[:1].isalpha():
        return True
    if _CAMEL.search(token):
        return True
    inner = token[1:-1]
    if any(mark in inner for mark in "/\\_=@:~$#") or token.startswith(("/", "~/", "./", "$")):
        return True
    if "." in inner:
        parts = [p for p in token.split(".") if p]
        return len(parts) >= 2 and not all(len(p) == 1 for p in parts) and not token.replace(".", "").isdigit()
    return False


@lru_cache(maxsize=512)  # a new memory is compared with a handful of candidates: analysed once
def _analyse(text: str) -> _Facts:
    plain = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    raw: set[str] = set()
    identifiers: set[str] = set()
    for chunk in plain.split():
        token = chunk.strip(_TOKEN_EDGE + ".,:;")
        if not token:
            continue
        raw.add(token.casefold())
        if _identifier(token):
            identifiers.add(token.casefold())
    lowered = plain.casefold()
    words = _WORD.findall(lowered)
    order = tuple(_canonical_number(n) for n in _NUMBER.findall(lowered))
    numbers = set(order)
    numbers.update(_NUMBER_WORDS[w] for w in words if w in _NUMBER_WORDS)
    negations = sum(w in _NEGATIONS or w.endswith("n't") for w in _PHRASE_WORD.findall(lowered))
    choices: dict[int, set[str]] = {}
    for token in set(words) | {t for t in raw if t in _GROUP_OF}:
        group = _GROUP_OF.get(token)
        if group is not None:
            choices.setdefault(group, set()).add(_ALIASES.get(token, token))
    return _Facts(frozenset(words), negations, frozenset(numbers), order, frozenset(identifiers), frozenset(raw),
                  {g: frozenset(m) for g, m in choices.items()})


def _polarity(negations: int) -> int:
    """0 for a plain statement; 1 or 2 for an odd or even (double) number of negations. Two texts differ
    in polarity unless both are plain or both negated alike: conservative, a merge is the costly mistake."""
    return 0 if negations == 0 else 2 - negations % 2


def _canonical_number(number: str) -> str:
    if "," in number and ":" not in number and "." not in number:
        number = number.replace(",", "")  # 10,000 -> 10000
    if ":" in number:  # a time: 02:00 = 2:00
        return ":".join(part.lstrip("0") or "0" for part in number.split(":"))
    head, dot, tail = number.partition(".")
    return (head.lstrip("0") or "0") + dot + tail


def _substituted(left: frozenset[str], right: frozenset[str]) -> tuple[str, str] | None:
    only_left, only_right = left - right, right - left
    if only_left and only_right:
        return min(only_left), min(only_right)
    return None


def lexical_conflict(a: str, b: str) -> str | None:
    """Why ``a`` and ``b`` state different facts however close they embed, or None.

    In order: a negation on one side only; a number of one side replaced by
    another; an identifier (path, URL, flag, code name) of each side missing
    from the other; two different members of a set of well-known alternatives
    (``pnpm``/``yarn``, ``staging``/``production``, ``Friday``/``Monday``);
    a word on one side whose antonym is on the other. Extra detail on one side
    only (a number, a path, a tool named once) is not a conflict."""
    fa, fb = _analyse(a), _analyse(b)
    if _polarity(fa.negations) != _polarity(fb.negations):
        return "negation differs"
    numbers = _substituted(fa.numbers, fb.numbers)
    if numbers:
        return f"numbers differ ({numbers[0]} vs {numbers[1]})"
    shared = fa.numbers & fb.numbers
    if [n for n in fa.number_order if n in shared] != [n for n in fb.number_order if n in shared]:
        return "numbers in another order"
    only_a = {t for t in fa.identifiers if t not in fb.raw_tokens}
    only_b = {t for t in fb.identifiers if t not in fa.raw_tokens}
    if only_a and only_b:
        return f"identifiers differ ({min(only_a)} vs {min(only_b)})"
    for group in sorted(fa.choices.keys() & fb.choices.keys()):
        choice = _substituted(fa.choices[group], fb.choices[group])
        if choice:
            return f"alternatives differ ({choice[0]} vs {choice[1]})"
    for word in sorted(fa.words - fb.words):
        opposite = sorted((_ANTONYM_OF.get(word, frozenset()) & fb.words) - fa.words)
        if opposite:
            return f"opposites ({word} vs {opposite[0]})"
    return None


def near_duplicate(a: str, b: str, cosine: float, threshold: float = DEFAULT_NEAR_THRESHOLD) -> Decision:
    """Whether ``a`` and ``b`` (whose embeddings have ``cosine`` similarity) are one fact to merge."""
    if normalise(a) == normalise(b):
        return Decision(True, "same normalised text")
    if not cosine >= threshold:  # also refuses a NaN cosine
        return Decision(False, f"below threshold (cosine {cosine:.2f} < {threshold:.2f})")
    conflict = lexical_conflict(a, b)
    if conflict:
        return Decision(False, conflict)
    return Decision(True, f"cosine {cosine:.2f} >= {threshold:.2f}")


def _specificity(text: str) -> tuple[int, int, int]:
    facts = _analyse(text)
    precise = len(facts.numbers) + len(facts.identifiers)
    content = len(facts.words - _FUNCTION_WORDS)
    return precise, content, len(normalise(text))


def more_specific(a: str, b: str) -> str:
    """The text to keep when ``a`` and ``b`` are one fact: more numbers and identifiers, then more
    distinct content words, then longer; on a tie the smaller string, so the choice is symmetric."""
    key_a, key_b = _specificity(a), _specificity(b)
    if key_a != key_b:
        return a if key_a > key_b else b
    return min(a, b)


def _facts_of(text: str) -> list[str]:
    return [piece.strip() for line in text.splitlines() for piece in _SENTENCE_END.split(line) if piece.strip()]


def content_union(a: str, b: str) -> str:
    """``a`` followed by the lines and sentences of ``b`` it lacks (compared by :func:`normalise`),
    each on its own line, in ``b``'s order. ``a`` itself is kept as written."""
    seen = {normalise(fact) for fact in _facts_of(a)}
    new: list[str] = []
    for fact in _facts_of(b):
        key = normalise(fact)
        if key and key not in seen:
            seen.add(key)
            new.append(fact)
    if not new:
        return a
    head = a.rstrip()
    return "\n".join([head, *new]) if head else "\n".join(new)
