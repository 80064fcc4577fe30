"""A deterministic generator of realistic memories and recall queries.

The memories look like what an AI coding assistant stores for its user:
facts about a codebase, preferences, decisions, shell commands, file paths,
error messages and project notes. Properties that matter for a store's
performance are modelled on purpose:

- text of 80-300 characters (median ~180), built from templates whose slots
  are filled from Zipf-distributed word lists, so a few words ("the", "use",
  "project", "test") occur in a large share of rows and thousands of others
  (code identifiers, error names, file names) form a long tail;
- scopes: a handful of projects plus ``global``, skewed (``global`` ~30%);
- 0-3 tags from a vocabulary of ~40, also Zipf-distributed;
- varied kind, priority, confidence, tool and a small metadata dict on some;
- a ``created_at`` spread over the last ~180 days (denser towards now), for
  callers that import records with their own time.

Everything derives from one seed: the same seed gives the same corpus and the
same queries on every machine and Python version (only ``random.Random`` with
explicit seeds is used, never ``hash()``).

Usage::

    corpus = Corpus(seed=7)
    for record in corpus.memories(1000):   # dicts: content, scope, tags, ...
        api.remember(**Corpus.remember_args(record))
    for query in corpus.queries(500):      # Query(cls, text, scope, tags)
        api.recall(query.text, scope=query.scope, tags=query.tags)
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

DAY_MS = 86_400_000
SPREAD_DAYS = 180
MIN_CHARS = 80
MAX_CHARS = 300

# ---------------------------------------------------------------- vocabulary
# Each list is ordered from most to least frequent: samplers give rank r a
# weight of 1 / r**s (Zipf), so the order is the frequency ranking.
NOUNS = """test build config cache database server API endpoint query schema migration request response
token session user service worker queue job pipeline container image branch commit release version package
dependency module function class method type interface route handler middleware logger metric alert dashboard
timeout retry error exception warning stack trace memory thread process lock transaction connection pool
socket port host proxy certificate secret key permission role policy bucket file directory path script command
flag option argument environment variable index table column row field record model view controller template
component hook state store reducer action event listener callback promise future task scheduler cron backup
snapshot replica shard partition cluster node pod deployment manifest chart volume mount network firewall
gateway balancer DNS domain webhook payload header cookie form input output stream buffer parser lexer
compiler linter formatter debugger profiler benchmark fixture mock stub spec suite coverage report log audit
changelog readme docs tutorial guide license issue ticket sprint milestone roadmap review reviewer approval
merge rebase conflict tag hotfix rollback feature toggle experiment variant cohort funnel invoice payment
customer order cart checkout product catalog inventory shipment notification email message chat thread
upload download attachment thumbnail avatar profile setting preference theme layout style font color icon
animation modal dialog menu button link tooltip sidebar header footer page screen widget chart graph map
embedding vector tokenizer prompt completion model dataset checkpoint epoch batch gradient optimizer loss
accuracy latency throughput bandwidth quota limit budget cost estimate deadline owner team standup""".split()

VERBS = """use run add fix update remove check keep avoid prefer move rename split merge cache retry log
validate parse serialize deploy build install configure migrate refactor test mock profile debug restart
reload rotate encrypt decrypt compress index sort filter paginate batch stream throttle debounce memoize
pin bump vendor lint format document review approve revert squash rebase tag publish archive backfill
reindex vacuum truncate drop seed snapshot restore monitor alert page escalate invalidate prefetch
preload lazy-load hydrate render mount unmount subscribe unsubscribe emit handle wrap unwrap inline
extract generate scaffold""".split()

ADJECTIVES = """new old slow fast flaky stable broken large small default custom shared local remote internal
external public private legacy deprecated experimental async sync strict lenient stale fresh cold warm
hot empty full partial nested global optional required unique duplicate missing invalid expired encrypted
compressed cached readonly mutable immutable idempotent atomic concurrent parallel sequential incremental
verbose quiet noisy silent""".split()

TOOLS = """pytest git docker npm ruff mypy postgres redis sqlite kubernetes terraform nginx react typescript
webpack vite fastapi django flask celery numpy pandas pydantic sqlalchemy alembic poetry uv pip pnpm yarn
cargo rustc go gradle maven jest vitest eslint prettier black isort github gitlab jenkins circleci helm
ansible grafana prometheus sentry datadog aws gcp azure s3 lambda cloudflare vercel stripe openai torch
tensorflow jax onnx kafka rabbitmq elasticsearch mongodb mysql graphql grpc protobuf swagger storybook
tailwind nextjs nuxt svelte angular electron tauri flutter kotlin swift xcode playwright cypress selenium
locust k6 make cmake bazel nix homebrew apt systemd tmux vim vscode""".split()

PROJECTS = ["webshop", "infra-tools", "ml-pipeline", "mobile-app", "data-platform", "docs-site", "auth-service"]
SCOPES = ["global", *PROJECTS]
SCOPE_WEIGHTS = [30, 22, 15, 11, 9, 6, 4, 3]

TAGS = """testing build deploy database security performance style git ci docs api frontend backend infra
bug decision preference command config debugging refactor dependencies release monitoring auth python
typescript rust go docker kubernetes migrations caching logging onboarding billing search mobile data
ml""".split()

KINDS = ["fact", "preference", "decision", "command", "path", "error", "note"]
KIND_WEIGHTS = [30, 14, 14, 14, 9, 11, 8]
TOOL_NAMES = ["claude-code", "codex-cli", "gemini-cli", "mcp-client"]
TOOL_WEIGHTS = [50, 25, 15, 10]

ERROR_NAMES = """TypeError ValueError KeyError AttributeError ImportError ModuleNotFoundError TimeoutError
ConnectionError PermissionError FileNotFoundError IndexError RuntimeError AssertionError OSError
RecursionError UnicodeDecodeError JSONDecodeError IntegrityError OperationalError ValidationError
ECONNREFUSED ENOENT EADDRINUSE ETIMEDOUT OOMKilled CrashLoopBackOff SIGSEGV NullPointerException
ReferenceError SyntaxError DeadlockDetected""".split()

ERROR_MESSAGES = [
    "connection refused", "no such file or directory", "address already in use", "database is locked",
    "object has no attribute", "cannot import name", "unexpected keyword argument", "maximum recursion depth",
    "permission denied", "certificate verify failed", "duplicate key value violates unique constraint",
    "read timed out", "out of memory", "module not found", "invalid token", "expected str got None",
    "too many open files", "broken pipe", "segmentation fault", "relation does not exist",
]

FILE_EXTENSIONS = ["py", "ts", "tsx", "js", "go", "rs", "yaml", "toml", "json", "sql", "md", "sh"]
TOP_DIRS = ["src", "app", "lib", "tests", "scripts", "config", "deploy", "docs", "packages", "cmd", "internal"]

# ---------------------------------------------------------------- templates
# {n}/{n2} noun, {v} verb, {a} adjective, {t}/{t2} tool, {p} project, {id}/{id2}
# code identifier, {cls} class name, {path} file path, {err} error name,
# {msg} error message, {num} a number. Filler clauses extend a text to its
# target length.
TEMPLATES: dict[str, list[str]] = {
    "fact": [
        "The {p} project uses {t} for the {n} and {t2} for the {n2}; {id} is the entry point.",
        "In {p} the {n} is stored in {path} and loaded by {id} at startup.",
        "{cls} wraps the {a} {n} client; use it instead of calling {t} directly.",
        "The {n} for {p} runs on port {num}; the {n2} talks to it through {id}.",
        "{t} version {num} is pinned in {p} because the {a} {n} breaks with newer releases.",
        "The {a} {n} in {p} is owned by the {n2} team; ask before changing {id}.",
    ],
    "preference": [
        "User prefers {t} over {t2} for the {n} and wants {a} {n2} in every project.",
        "Prefer small commits with a clear message; always {v} the {n} before you push.",
        "The user likes {a} code: {v} the {n} with {t}, keep functions short and typed.",
        "Use {t} to {v} the {n} in {p}; do not use {t2}, the user finds it too {a}.",
        "Always answer with the exact command first, then explain the {n} and the {n2}.",
    ],
    "decision": [
        "Decided to use {t} for the {n} in {p} because the {a} {n2} was too slow.",
        "We will {v} the {n} with {t} and keep {t2} only for the {a} {n2} until the next release.",
        "Team agreed to {v} the {a} {n} into {cls} so the {n2} can be tested in isolation.",
        "Decision: the {n} in {p} moves to {t}; the old {n2} in {path} is deprecated.",
        "After the {n} incident we decided to {v} every {n2} and to alert on {id}.",
    ],
    "command": [
        "Run `{t} {v} --{n}` in {p} to {v2} the {a} {n2} before a release.",
        "To {v} the {n} locally use `make {v2}-{n}` then `{t} run {id}` from the project root.",
        "Command to {v} the {n}: `{t} {n2} {v2} --env {a}` (needs the {n3} token in the environment).",
        "Use `{t} {v} {path}` to {v2} the {n} of {p}; add --verbose to see each {n2}.",
        "The {n} tests run with `{t} -x {path}`; use the {a} marker to skip the {n2} suite.",
    ],
    "path": [
        "The {n} config for {p} lives in {path}; {id} reads it at startup.",
        "Templates for the {n} are in {path} and the {a} {n2} overrides are in {path2}.",
        "{path} defines {cls}; the {n} tests for it are in {path2}.",
        "Generated {n} code is written to {path}; never edit it by hand, run {id} instead.",
    ],
    "error": [
        "{err}: {msg} in {path} happens when the {n} is {a}; fix by calling {id} first.",
        "When {t} fails with {err} ({msg}) restart the {n} and {v} the {n2}.",
        "{err} in {cls}.{id} at line {num}: {msg}. The cause was a {a} {n} in {p}.",
        "The {a} {n} test fails with {msg} on CI only; it is the {n2} timeout, use {id} to {v} it.",
        "If you see '{msg}' from {t}, the {n} in {p} is {a}; run {id} to {v} it.",
    ],
    "note": [
        "Project {p}: the {n} is {a} this sprint; next step is to {v} the {n2} with {t}.",
        "Remember that the {n} and the {n2} in {p} share {id}; changing one breaks the other.",
        "TODO in {p}: {v} the {a} {n} and document {cls} in the {n2} guide.",
        "Meeting note: {v} the {n} before the {n2} review; the owner of {p} wants {t} numbers.",
    ],
}
FILLERS = [
    "This matters for the {n} in {p}.", "See {path} for the details.", "It was {a} last time.",
    "Use {t} when the {n} is {a}.", "The {n2} depends on it.", "Check {id} if the {n} looks {a}.",
    "Ask before you {v} the {n}.", "It affects the {a} {n2} too.", "Keep the {n} {a} for now.",
    "The tests cover {id}.", "We saw {err} with the {n} once.", "Do not {v} it on the {a} branch.",
    "It is part of the {n} project.", "The user asked to use {t} here.", "Last changed for the {n2} release.",
]

# ---------------------------------------------------------------- queries
QUESTION_TEMPLATES = [
    "how do we {v} the {n} in {p}",
    "what did we decide about {t}",
    "which command runs the {n} tests",
    "why does {err} happen when we {v} the {n}",
    "where is the {n} config for {p}",
    "what is the preferred way to {v} the {a} {n}",
    "how to fix {msg}",
    "what version of {t} does the project use",
    "who owns the {n} and the {n2}",
    "should I use {t} or {t2} for the {n}",
]
COMMON_WORDS = ["the", "use", "project", "test", "run", "the project", "use the", "fix the", "the test",
                "build", "config", "error"]
QUERY_CLASSES = ("rare", "common", "question", "identifier", "scoped", "tagged")
QUERY_CLASS_WEIGHTS = (15, 10, 30, 15, 15, 15)


@dataclass(frozen=True, slots=True)
class Query:
    """One recall query: its class, text and optional filters."""

    cls: str
    text: str
    scope: str | None = None
    tags: tuple[str, ...] = ()


class Zipf:
    """Draws items with probability proportional to 1 / rank**s."""

    def __init__(self, items: Sequence[str], s: float = 1.07) -> None:
        self.items = list(items)
        self._cum = list(itertools.accumulate(1.0 / (r**s) for r in range(1, len(self.items) + 1)))

    def __call__(self, rng: random.Random) -> str:
        return self.items[bisect.bisect_left(self._cum, rng.random() * self._cum[-1])]

    def tail(self, start_fraction: float) -> list[str]:
        """The least frequent items, from ``start_fraction`` of the ranking on."""
        return self.items[int(len(self.items) * start_fraction):]


def _camel(*parts: str) -> str:
    return parts[0].lower() + "".join(p.capitalize() for p in parts[1:])


def _pascal(*parts: str) -> str:
    return "".join(p.capitalize() for p in parts)


def _identifiers(rng: random.Random, count: int) -> list[str]:
    """Distinct code identifiers (camelCase, snake_case, PascalCase), in a seeded order."""
    verbs = [v for v in VERBS if "-" not in v]
    nouns = [n.lower() for n in NOUNS]
    seen: dict[str, None] = {}
    while len(seen) < count:
        style = rng.random()
        v, n, n2 = rng.choice(verbs), rng.choice(nouns), rng.choice(nouns)
        if style < 0.45:
            name = _camel(v, n) if rng.random() < 0.6 else _camel(v, n, n2)
        elif style < 0.8:
            name = f"{v}_{n}" if rng.random() < 0.6 else f"{v}_{n}_{n2}"
        else:
            name = _pascal(n, n2)
        seen.setdefault(name, None)
    return list(seen)


class Corpus:
    """Seeded generator of memories (:meth:`memories`) and queries (:meth:`queries`)."""

    def __init__(self, seed: int = 7, end_ms: int = 1_767_225_600_000) -> None:
        self.seed = seed
        self.end_ms = end_ms  # created_at of generated records ends here (default 2026-01-01 UTC)
        vocab_rng = random.Random(f"vocab-{seed}")
        self.identifiers = _identifiers(vocab_rng, 2400)
        classes = [i for i in self.identifiers if i[:1].isupper()]
        self.classes = classes + [_pascal(n.lower(), s) for n in NOUNS[:60]
                                  for s in ("Manager", "Client", "Store", "Service")]
        self.paths = self._make_paths(vocab_rng, 900)
        self.noun = Zipf(NOUNS, s=0.95)
        self.verb = Zipf(VERBS)
        self.adjective = Zipf(ADJECTIVES)
        self.tool = Zipf(TOOLS)
        self.project = Zipf(PROJECTS, s=0.8)
        self.identifier = Zipf(self.identifiers, s=0.9)
        self.cls = Zipf(self.classes, s=0.9)
        self.path = Zipf(self.paths, s=0.9)
        self.error = Zipf(ERROR_NAMES)
        self.message = Zipf(ERROR_MESSAGES)
        self.tag = Zipf(TAGS, s=0.9)

    @staticmethod
    def _make_paths(rng: random.Random, count: int) -> list[str]:
        nouns = [n.lower() for n in NOUNS]
        seen: dict[str, None] = {}
        while len(seen) < count:
            parts = [rng.choice(TOP_DIRS)] + [rng.choice(nouns) for _ in range(rng.randint(1, 2))]
            name = rng.choice(nouns) + ("_" + rng.choice(nouns) if rng.random() < 0.3 else "")
            seen.setdefault("/".join(parts) + f"/{name}.{rng.choice(FILE_EXTENSIONS)}", None)
        return list(seen)

    def vocabulary_size(self) -> int:
        """Distinct word-like tokens the generator can emit (templates excluded)."""
        words: set[str] = set()
        for item in (*NOUNS, *VERBS, *ADJECTIVES, *TOOLS, *PROJECTS, *TAGS, *ERROR_NAMES, *self.identifiers,
                     *self.classes, *self.paths, *ERROR_MESSAGES):
            words.update(_tokens(item))
        return len(words)

    # ------------------------------------------------------------ memories
    def _slots(self, rng: random.Random, project: str) -> dict[str, str]:
        return {
            "n": self.noun(rng), "n2": self.noun(rng), "n3": self.noun(rng), "v": self.verb(rng),
            "v2": self.verb(rng), "a": self.adjective(rng), "t": self.tool(rng), "t2": self.tool(rng),
            "p": project, "id": self.identifier(rng), "id2": self.identifier(rng), "cls": self.cls(rng),
            "path": self.path(rng), "path2": self.path(rng), "err": self.error(rng), "msg": self.message(rng),
            "num": str(_number(rng)),
        }

    def memory(self, rng: random.Random, index: int, count: int) -> dict[str, Any]:
        """One record (``index`` of ``count``: sets its place in the time spread)."""
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        scope = rng.choices(SCOPES, SCOPE_WEIGHTS)[0]
        project = scope if scope != "global" else self.project(rng)
        target = min(MAX_CHARS, max(MIN_CHARS, int(rng.triangular(MIN_CHARS, MAX_CHARS, 120))))
        text = rng.choice(TEMPLATES[kind]).format(**self._slots(rng, project))
        while len(text) < target:
            text += " " + rng.choice(FILLERS).format(**self._slots(rng, project))
        text = _clip(text, MAX_CHARS)
        n_tags = rng.choices((0, 1, 2, 3), (25, 35, 25, 15))[0]
        tags = sorted({self.tag(rng) for _ in range(n_tags)})
        if kind in ("preference", "decision", "command") and rng.random() < 0.5 and kind in TAGS:
            tags = sorted({*tags, kind})
        metadata: dict[str, Any] = {}
        if rng.random() < 0.3:
            metadata = {"file": self.path(rng), "line": rng.randint(1, 900)}
        # Older memories are sparser: the age fraction is skewed towards now.
        age = (1.0 - (index + rng.random()) / max(count, 1)) ** 1.6
        return {
            "content": text,
            "scope": scope,
            "tags": tags,
            "kind": kind,
            "priority": round(min(1.0, rng.betavariate(2.0, 3.0) + (0.2 if kind == "preference" else 0.0)), 2),
            "confidence": round(rng.uniform(0.5, 1.0), 2),
            "tool": rng.choices(TOOL_NAMES, TOOL_WEIGHTS)[0],
            "metadata": metadata,
            "created_at": self.end_ms - int(age * SPREAD_DAYS * DAY_MS),
        }

    def memories(self, count: int, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """Records ``start`` .. ``stop - 1`` of a corpus of ``count`` (any slice is reproducible)."""
        for index in range(start, count if stop is None else min(stop, count)):
            yield self.memory(random.Random(f"{self.seed}-{index}"), index, count)

    @staticmethod
    def remember_args(record: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``remember`` (``created_at`` is dropped: it is set on write)."""
        return {k: v for k, v in record.items() if k != "created_at"}

    # ------------------------------------------------------------ queries
    def queries(self, count: int, seed: int | None = None) -> list[Query]:
        """A reproducible mix of recall queries over this corpus's vocabulary.

        Classes: ``rare`` (1-2 long-tail identifiers), ``common`` (words in a
        large share of rows), ``question`` (natural-language questions),
        ``identifier`` (pasted error names, messages, paths, class names),
        ``scoped`` (a question or short query with a project scope filter) and
        ``tagged`` (a short query with 1-2 tag filters).
        """
        rng = random.Random(f"queries-{self.seed}-{seed if seed is not None else 0}")
        rare_pool = self.identifier.tail(0.5)
        out = []
        for _ in range(count):
            cls = rng.choices(QUERY_CLASSES, QUERY_CLASS_WEIGHTS)[0]
            project = self.project(rng)
            slots = self._slots(rng, project)
            if cls == "rare":
                text = " ".join(rng.choice(rare_pool) for _ in range(rng.randint(1, 2)))
                out.append(Query(cls, text))
            elif cls == "common":
                out.append(Query(cls, rng.choice(COMMON_WORDS)))
            elif cls == "question":
                out.append(Query(cls, rng.choice(QUESTION_TEMPLATES).format(**slots) + "?"))
            elif cls == "identifier":
                choice = rng.random()
                if choice < 0.3:
                    text = f"{slots['err']}: {slots['msg']}"
                elif choice < 0.55:
                    text = slots["path"]
                elif choice < 0.8:
                    text = f"{slots['cls']} {slots['id']}"
                else:
                    text = slots["id"]
                out.append(Query(cls, text))
            elif cls == "scoped":
                scope = rng.choices(SCOPES, SCOPE_WEIGHTS)[0]
                text = (rng.choice(QUESTION_TEMPLATES).format(**slots) if rng.random() < 0.5
                        else f"{slots['n']} {slots['t']}")
                out.append(Query(cls, text, scope=scope))
            else:
                tags = tuple(sorted({self.tag(rng) for _ in range(rng.randint(1, 2))}))
                text = f"{slots['n']} {slots['v']}" if rng.random() < 0.6 else rng.choice(COMMON_WORDS)
                out.append(Query(cls, text, tags=tags))
        return out


def _number(rng: random.Random) -> int:
    return rng.choice((rng.randint(1, 99), rng.randint(100, 999), rng.choice((3000, 5432, 6379, 8000, 8080))))


def _clip(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[:cut if cut > MIN_CHARS else limit].rstrip(" ,;:")


def _tokens(text: str) -> list[str]:
    word: list[str] = []
    out: list[str] = []
    for ch in text.lower():
        if ch.isalnum():
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out
