"""The soak's actors: writers of every kind, readers, a faulty peer, the killer, and what they record.

Each actor is a thread that repeats one kind of work at a bounded rate until
told to stop. Every call is timed into :class:`Stats` under an operation name
(``http.remember``, ``recall.semantic``, ...); every failure is counted by kind
(``http.unavailable`` while a server restarts, ``http.5xx`` never expected).
Every acknowledged write goes into the :class:`Ledger`, which the end of the
soak checks against both replicas.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import nacl.signing
from benchlib import summary
from corpus import Corpus

from neuralsync.errors import NeuralSyncError
from neuralsync.oplog import codec
from neuralsync.oplog.clock import pack
from neuralsync.replication.signing import sign_request
from neuralsync.unified_memory_api import UnifiedMemoryAPI
from neuralsync.utils import new_id, now_ms

MODES = ("text", "semantic", "hybrid")
CLI = [sys.executable, "-m", "neuralsync.cli"]


# ---------------------------------------------------------------- what the actors record
class Stats:
    """Latencies per operation and errors per kind, shared by every actor (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.samples: dict[str, list[int]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()  # expected outcomes worth counting (refusals of the faulty peer)

    def timed(self, name: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter_ns()
        result = call()
        with self._lock:
            self.samples[name].append(time.perf_counter_ns() - start)
        return result

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def note(self, kind: str) -> None:
        with self._lock:
            self.notes[kind] += 1

    def report(self, seconds: float) -> dict[str, Any]:
        with self._lock:
            ops = {name: {**summary(values), "per_s": round(len(values) / seconds, 2)}
                   for name, values in sorted(self.samples.items())}
            return {"operations": ops, "errors": dict(sorted(self.errors.items())),
                    "expected_refusals": dict(sorted(self.notes.items()))}


@dataclass
class Ledger:
    """Every acknowledged write: the content each memory must have at the end (None: forgotten)."""

    expected: dict[str, str | None] = field(default_factory=dict)
    by: dict[str, str] = field(default_factory=dict)  # memory id -> the writer that acknowledged it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked(self, writer: str, memory_id: str, content: str | None) -> None:
        with self.lock:
            self.expected[memory_id] = content
            self.by.setdefault(memory_id, writer)

    def own(self, writer: str, rng: random.Random) -> str | None:
        """A live memory this writer acknowledged (for its updates and forgets), if any."""
        with self.lock:
            mine = [m for m, w in self.by.items() if w == writer and self.expected.get(m) is not None]
        return rng.choice(mine) if mine else None

    def snapshot(self) -> dict[str, str | None]:
        with self.lock:
            return dict(self.expected)


class Actor(threading.Thread):
    """Repeat ``step`` about ``rate`` times a second until ``stop`` is set; a crash is counted, not raised."""

    def __init__(self, name: str, rate: float, stop: threading.Event, stats: Stats, seed: int) -> None:
        super().__init__(name=f"soak-{name}", daemon=True)
        self.label, self.interval, self.stop, self.stats = name, 1.0 / rate, stop, stats
        self.rng = random.Random(f"{name}-{seed}")

    def run(self) -> None:
        try:
            self.setup()
        except Exception as exc:  # noqa: BLE001 - counted; the other actors go on
            self.stats.error(f"{self.label}.setup:{type(exc).__name__}")
            return
        try:
            while not self.stop.is_set():
                begun = time.monotonic()
                try:
                    self.step()
                except Exception as exc:  # noqa: BLE001 - a soak counts what breaks and goes on
                    self.stats.error(f"{self.label}.crash:{type(exc).__name__}")
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - begun)))
        finally:
            self.teardown()

    def setup(self) -> None:
        """Before the first step (in the thread)."""

    def step(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        """After the last step (in the thread)."""


# ---------------------------------------------------------------- writers
class ContentSource:
    """Realistic memory content from the benchmark corpus, made unique per write."""

    def __init__(self, seed: int) -> None:
        self.corpus = Corpus(seed)
        self._next = 0
        self._lock = threading.Lock()

    def next(self, writer: str) -> dict[str, Any]:
        with self._lock:
            index, self._next = self._next, self._next + 1
        record = Corpus.remember_args(next(self.corpus.memories(1 << 30, index, index + 1)))
        record["content"] = f"{record['content']} [{writer} #{index}]"
        return record


class ApiWriter(Actor):
    """The library in this process (like an AI tool importing it): remember, sometimes update or forget."""

    def __init__(self, api: UnifiedMemoryAPI, source: ContentSource, ledger: Ledger, **kw: Any) -> None:
        super().__init__("api", **kw)
        self.api, self.source, self.ledger = api, source, ledger

    def step(self) -> None:
        roll, target = self.rng.random(), self.ledger.own(self.label, self.rng)
        try:
            if roll < 0.1 and target is not None:
                content = f"edited {secrets.token_hex(4)} " + self.source.next(self.label)["content"]
                stored = self.stats.timed("api.update", lambda: self.api.update(target, content=content))
                self.ledger.acked(self.label, target, stored.content)
            elif roll < 0.15 and target is not None:
                self.stats.timed("api.forget", lambda: self.api.forget(target))
                self.ledger.acked(self.label, target, None)
            else:
                record = self.source.next(self.label)
                stored = self.stats.timed("api.remember", lambda: self.api.remember_memory(**record))
                self.ledger.acked(self.label, stored.id, stored.content)
        except NeuralSyncError as exc:
            self.stats.error(f"api.{type(exc).__name__}")


class HttpWriter(Actor):
    """POST /v1/memories to the servers in turn; a 201 is an acknowledged write."""

    def __init__(self, urls: Callable[[], list[tuple[str, str]]], source: ContentSource, ledger: Ledger,
                 **kw: Any) -> None:
        super().__init__("http", **kw)
        self.urls, self.source, self.ledger = urls, source, ledger
        self.client = httpx.Client(timeout=10)

    def step(self) -> None:
        url, token = self.rng.choice(self.urls())
        record = self.source.next(self.label)
        try:
            response = self.stats.timed("http.remember", lambda: self.client.post(
                f"{url}/v1/memories", json=record, headers={"Authorization": f"Bearer {token}"}))
        except httpx.TransportError:
            self.stats.error("http.unavailable")  # the server is being killed or restarted
            return
        if response.status_code == 201:
            stored = response.json()  # the memory as stored (secrets redacted)
            self.ledger.acked(self.label, stored["id"], stored["content"])
        else:
            self.stats.error(f"http.{response.status_code // 100}xx")

    def teardown(self) -> None:
        self.client.close()


class CliWriter(Actor):
    """``neuralsync remember`` in a new process each time: an exit code 0 and an id are the acknowledgement."""

    def __init__(self, home: Path, source: ContentSource, ledger: Ledger, env: dict[str, str], **kw: Any) -> None:
        super().__init__("cli", **kw)
        self.home, self.source, self.ledger, self.env = home, source, ledger, env

    def step(self) -> None:
        record = self.source.next(self.label)
        command = [*CLI, "--home", str(self.home), "--json", "remember", "--scope", record["scope"], "--",
                   record["content"]]
        try:
            done = self.stats.timed("cli.remember", lambda: subprocess.run(
                command, env=self.env, capture_output=True, text=True, timeout=60))
        except subprocess.TimeoutExpired:
            self.stats.error("cli.timeout")
            return
        if done.returncode == 0:
            stored = json.loads(done.stdout)
            self.ledger.acked(self.label, stored["id"], stored["content"])
        else:
            self.stats.error(f"cli.exit{done.returncode}")


class McpWriter(Actor):
    """One long-lived ``neuralsync mcp`` (stdio) process: ``remember`` and ``recall`` tool calls, raw JSON-RPC."""

    def __init__(self, home: Path, source: ContentSource, ledger: Ledger, env: dict[str, str], log: IO[bytes],
                 **kw: Any) -> None:
        super().__init__("mcp", **kw)
        self.home, self.source, self.ledger, self.env, self.log = home, source, ledger, env, log
        self.process: subprocess.Popen[bytes] | None = None
        self.ids = 0
        self.pid = 0

    def _call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.process and self.process.stdin and self.process.stdout
        self.ids += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.ids, "method": method}
        if params is not None:
            message["params"] = params
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise ConnectionError("the MCP server closed its output")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def setup(self) -> None:
        self.process = subprocess.Popen([*CLI, "--home", str(self.home), "mcp"], env=self.env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.pid = self.process.pid
        self._call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "soak", "version": "1"}})
        assert self.process.stdin
        self.process.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        self.process.stdin.flush()

    def step(self) -> None:
        if self.rng.random() < 0.3:
            query = self.source.corpus.queries(1, seed=self.rng.randrange(1 << 30))[0].text
            answer = self.stats.timed("mcp.recall", lambda: self._call(
                "tools/call", {"name": "recall", "arguments": {"query": query, "limit": 5}}))
            if "error" in answer or answer["result"].get("isError"):
                self.stats.error("mcp.recall_error")
            return
        record = self.source.next(self.label)
        arguments = {k: record[k] for k in ("content", "scope", "tags", "kind")}
        answer = self.stats.timed("mcp.remember", lambda: self._call(
            "tools/call", {"name": "remember", "arguments": arguments}))
        result = answer.get("result") or {}
        if "error" in answer or result.get("isError"):
            self.stats.error("mcp.remember_error")
        else:
            self.ledger.acked(self.label, json.loads(result["content"][0]["text"])["id"], record["content"])

    def teardown(self) -> None:
        if self.process is not None:
            if self.process.stdin:
                self.process.stdin.close()  # the server exits at end of input
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


# ---------------------------------------------------------------- readers
class Reader(Actor):
    """Recall in every mode, through the library (another replica's store) and over HTTP."""

    def __init__(self, api: UnifiedMemoryAPI, urls: Callable[[], list[tuple[str, str]]], source: ContentSource,
                 **kw: Any) -> None:
        super().__init__("reader", **kw)
        self.api, self.urls, self.queries = api, urls, source.corpus.queries(2000, seed=11)
        self.client = httpx.Client(timeout=10)

    def step(self) -> None:
        query, mode = self.rng.choice(self.queries), self.rng.choice(MODES)
        filters = {"scope": query.scope, "tags": list(query.tags) or None}
        if self.rng.random() < 0.5:
            try:
                self.stats.timed(f"recall.{mode}", lambda: self.api.recall(query.text, mode=mode, **filters))
            except NeuralSyncError as exc:
                self.stats.error(f"recall.{type(exc).__name__}")
            return
        url, token = self.rng.choice(self.urls())
        body = {"query": query.text, "mode": mode, **{k: v for k, v in filters.items() if v}}
        try:
            response = self.stats.timed(f"http.recall.{mode}", lambda: self.client.post(
                f"{url}/v1/recall", json=body, headers={"Authorization": f"Bearer {token}"}))
        except httpx.TransportError:
            self.stats.error("http.unavailable")
            return
        if response.status_code != 200:
            self.stats.error(f"http.recall.{response.status_code // 100}xx")

    def teardown(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- the faulty peer
class FaultyPeer(Actor):
    """A trusted peer gone bad: floods both servers' /v1/sync with what a correct replica must refuse
    (forged and malformed ops, bad messages, replays, strangers, deep JSON) and with well-signed ops
    that are valid but hostile (a different create for each replica, re-creates of acknowledged ids).
    Refusals are counted as expected; any 5xx is an error."""

    def __init__(self, key: nacl.signing.SigningKey, servers: Callable[[], list[tuple[str, bytes]]], ledger: Ledger,
                 **kw: Any) -> None:
        super().__init__("faulty", **kw)
        self.key, self.servers, self.ledger = key, servers, ledger
        self.stranger = nacl.signing.SigningKey.generate()
        self.client = httpx.Client(timeout=10)
        self.last: tuple[bytes, dict[str, str]] | None = None

    def _message(self) -> tuple[str, bytes]:
        fields = {"content": f"from the faulty peer {secrets.token_hex(4)}", "scope": "faulty", "kind": "fact",
                  "priority": 0.5, "confidence": 0.5}
        # Victims among writers that never forget: a re-create the delete had not seen would keep a
        # forgotten memory (update wins), which is the rule, not a loss.
        victim = self.ledger.own(self.rng.choice(["http", "cli", "mcp"]), self.rng)
        kinds: dict[str, Callable[[], object]] = {
            "valid create": lambda: {"v": 1, "ops": [self._pair("create", new_id(), fields)]},
            "re-create of an acknowledged id": lambda: {"v": 1, "ops": [self._pair(
                "create", victim or new_id(), {**fields, "content": "forged", "session": "forged"})]},
            "bad signature": lambda: {"v": 1, "ops": [[self._pair("create", new_id(), fields)[0],
                                                       base64.b64encode(secrets.token_bytes(64)).decode()]]},
            "invalid fields": lambda: {"v": 1, "ops": [self._pair("create", new_id(), {**fields, "content": "\x00",
                                                                                        "scope": "a\u202eb"})]},
            "orphan update": lambda: {"v": 1, "ops": [self._pair("update", new_id(), {"content": "no create"})]},
            "bad version": lambda: {"v": True, "heads": []},
            "junk needs": lambda: {"v": 1, "need": [secrets.token_hex(32) for _ in range(200)]},
            "deep json": lambda: b"[" * 5000 + b"]" * 5000,
            "not json": lambda: b"{not json",
        }
        label = self.rng.choice(list(kinds))
        made = kinds[label]()
        return label, made if isinstance(made, bytes) else json.dumps(made).encode()

    def _pair(self, kind: str, record_id: str, fields: dict[str, Any]) -> list[str]:
        wire = codec.op_to_wire(codec.make_op(self.key, kind, record_id, fields, pack(now_ms()), ()))
        return [wire["body"], wire["sig"]]

    def step(self) -> None:
        url, server_key = self.rng.choice(self.servers())
        roll = self.rng.random()
        if roll < 0.1 and self.last is not None:
            label, (body, headers) = "replayed request", self.last
        elif roll < 0.2:
            label, body = "stranger", b'{"v": 1}'
            headers = sign_request(self.stranger, server_key, body)
        else:
            label, body = self._message()
            headers = sign_request(self.key, server_key, body)
        self.last = (body, headers)
        try:
            response = self.stats.timed("faulty.sync", lambda: self.client.post(
                f"{url}/v1/sync", content=body, headers=headers))
        except httpx.TransportError:
            self.stats.error("faulty.unavailable")
            return
        if response.status_code >= 500:
            self.stats.error(f"faulty.{response.status_code}")
        else:
            self.stats.note(f"{label}: {response.status_code}")

    def teardown(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- processes
def memory_mb(pid: int) -> dict[str, float] | None:
    """Resident memory of a process (Linux /proc) in MB: ``rss``, and its ``anon`` (heap: Python
    objects, SQLite page caches) and ``file`` (mapped files: the database's mmap window) parts;
    None if the process is gone."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    found: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                name = fields.get(line.split(":", 1)[0] + ":")
                if name is not None:
                    found[name] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return found if "rss" in found else None


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no shutdown, no flush, what a crash or an OOM kill does."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
