"""Text embedders: turn memory texts into unit-length float32 vectors.

Every embedder satisfies the :class:`Embedder` protocol: a stable ``name``
(model identity *and* dimensionality, stored next to every index so a change of
model is detected and forces a rebuild), ``dims`` and ``embed(texts)``.

* :class:`WordLlamaEmbedder` is the default. It runs fully offline: the
  ``wordllama`` wheel ships its 256-dim ``l2_supercat`` token table and its
  tokenizer, and we load it in a way that can never reach the network (see
  :func:`_load_wordllama` for the packaging quirk that makes this necessary).
* :class:`HashingEmbedder` has no dependencies at all. It is a deterministic
  bag-of-words/char-trigram feature hasher: good enough for tests and as a last
  resort, clearly worse at paraphrases than a learned model.
* :class:`SentenceTransformerEmbedder` and :class:`OpenAICompatibleEmbedder`
  are optional, imported lazily, and raise :class:`EmbeddingUnavailable` with
  the exact ``pip install`` line when their package is missing.

Rows that carry no signal at all (empty text, text made only of unknown tokens)
come back as all-zero rows rather than NaN: their cosine similarity to anything
is 0, which is the honest answer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from neuralsync.errors import EmbeddingUnavailable, InvalidInput

__all__ = [
    "Embedder",
    "WordLlamaEmbedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "OpenAICompatibleEmbedder",
    "get_embedder",
    "l2_normalize",
    "WORDLLAMA_PIP",
    "SENTENCE_TRANSFORMERS_PIP",
]

logger = logging.getLogger(__name__)

WORDLLAMA_PIP = "pip install wordllama==0.4.0.post1"
SENTENCE_TRANSFORMERS_PIP = "pip install sentence-transformers"


@runtime_checkable
class Embedder(Protocol):
    """What the store and the index need from a text embedder.

    ``name`` must change whenever the vectors would change (other model, other
    dims, other preprocessing) because it is persisted with the index and
    compared on open. ``embed`` returns float32 ``(len(texts), dims)`` with
    L2-normalised rows (all-zero rows for texts with no signal), and
    ``(0, dims)`` for empty input.

    Note: on Python < 3.12 ``isinstance(x, Embedder)`` evaluates ``name`` and
    ``dims`` via ``hasattr``; for lazily-sized embedders (sentence-transformers
    or OpenAI-compatible without ``dims=``) that loads the model / probes the
    server. Pass ``dims`` explicitly to keep such checks free.
    """

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


# --------------------------------------------------------------------------- helpers


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length; all-zero rows stay zero (no NaN)."""
    out = np.array(matrix, dtype=np.float32, copy=True)
    if out.ndim != 2:
        raise InvalidInput("matrix", f"expected a 2-D array, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    out[~np.isfinite(out).all(axis=1)] = 0.0
    return out


def _as_text_list(texts: Sequence[str]) -> list[str]:
    """Validate ``texts`` and return it as a list.

    A bare ``str`` is rejected because it is itself a ``Sequence[str]`` and
    would silently be embedded character by character.
    """
    if isinstance(texts, str | bytes):
        raise InvalidInput("texts", "expected a sequence of strings, got a single string")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInput("texts", f"item {i} is {type(item).__name__}, expected str")
    return items


def _empty(dims: int) -> np.ndarray:
    return np.zeros((0, dims), dtype=np.float32)


def _is_importable(module: str) -> bool:
    """Availability check that does not import the module.

    Honours ``sys.modules[name] = None`` (how tests simulate a missing package).
    """
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _require(module: str, pip_line: str) -> ModuleType:
    """Import an optional dependency, or raise ``EmbeddingUnavailable`` + pip line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EmbeddingUnavailable(f"{module} is not installed; install it with: {pip_line}") from exc


def _import_without_logging_side_effects(module: str, pip_line: str) -> ModuleType:
    """Import ``module`` and undo a ``logging.basicConfig()`` it runs at import time.

    wordllama 0.4.0.post1 calls ``logging.basicConfig(level=logging.INFO)`` in
    two of its modules, which installs a stderr handler on the *root* logger of
    the host application. A library must not do that, so handlers added to the
    root logger during the import are removed and the root level is restored.
    """
    if module in sys.modules and sys.modules[module] is not None:
        return sys.modules[module]
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    level_before = root.level
    try:
        return _require(module, pip_line)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers_before:
                root.removeHandler(handler)
        root.setLevel(level_before)


def _length_batches(texts: Sequence[str], max_items: int, max_chars: int) -> Iterator[np.ndarray]:
    """Yield index arrays of texts grouped by length.

    wordllama pads every batch to its longest text, so mixing one long note
    with 63 short ones costs 64 long rows of work and memory. Sorting by length
    and capping ``rows * longest`` keeps both bounded.
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    order = np.argsort(lengths, kind="stable")
    start = 0
    for pos in range(len(order)):
        rows = pos - start + 1
        longest = max(int(lengths[order[pos]]), 1)
        if pos > start and (rows > max_items or rows * longest > max_chars):
            yield order[start:pos]
            start = pos
    if start < len(order):
        yield order[start:]


# --------------------------------------------------------------------------- wordllama


class WordLlamaEmbedder:
    """Default offline embedder: wordllama's ``l2_supercat`` token table, mean pooled.

    Quality sits between bag-of-words and small sentence transformers, at
    ~0.04 ms per sentence on one core, with no network and a ~33 MB wheel.
    ``dims`` may be 256 (native), 128 or 64 (Matryoshka truncation of the same
    table; only the 256-dim file ships in the wheel).

    Thread safety: the model is loaded lazily, exactly once, under a lock;
    afterwards ``embed`` only reads shared state and may be called from many
    threads at once (the tokenizer is a read-only Rust object).
    """

    CONFIG = "l2_supercat"
    NATIVE_DIMS = 256
    SUPPORTED_DIMS = (64, 128, 256)

    def __init__(self, dims: int = 256, *, batch_size: int = 64, max_batch_chars: int = 262_144) -> None:
        if dims not in self.SUPPORTED_DIMS:
            raise InvalidInput(
                "dims",
                f"wordllama dims must be one of {self.SUPPORTED_DIMS}, got {dims}",
            )
        if batch_size < 1 or max_batch_chars < 1:
            raise InvalidInput("batch_size", "batch_size and max_batch_chars must be positive")
        if not _is_importable("wordllama"):
            raise EmbeddingUnavailable(f"wordllama is not installed; install it with: {WORDLLAMA_PIP}")
        self.dims = dims
        self.name = f"wordllama:{self.CONFIG}:{dims}"
        self.batch_size = batch_size
        self.max_batch_chars = max_batch_chars
        self._lock = threading.Lock()
        self._model: Any = None

    def __repr__(self) -> str:
        return f"WordLlamaEmbedder(dims={self.dims})"

    def load(self) -> None:
        """Load the model now (else the first ``embed`` does). Idempotent."""
        self._get_model()

    def _get_model(self) -> Any:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                self._model = _load_wordllama(self.CONFIG, self.NATIVE_DIMS, self.dims)
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, dims)`` float32 unit rows (zero rows if empty)."""
        items = _as_text_list(texts)
        if not items:
            return _empty(self.dims)
        model = self._get_model()
        out = np.empty((len(items), self.dims), dtype=np.float32)
        for idx in _length_batches(items, self.batch_size, self.max_batch_chars):
            chunk = [items[i] for i in idx]
            # norm=False: wordllama's own normalisation divides by zero on empty text.
            out[idx] = model.embed(chunk, norm=False, batch_size=len(chunk))
        return l2_normalize(out)


def _load_wordllama(config: str, native_dims: int, dims: int) -> Any:
    """Load the wheel-bundled wordllama model without any chance of a download.

    wordllama 0.4.0.post1 looks for tokenizers in ``<package>/tokenizer/``
    (singular) while the wheel ships them in ``<package>/tokenizers/``; the
    weights lookup (``<package>/weights/``) is right. With default arguments it
    therefore misses the bundled tokenizer and downloads it from the Hugging
    Face hub into ``~/.cache/wordllama`` (fails offline). Its second lookup is
    ``<cache_dir>/tokenizers/``, so pointing ``cache_dir`` at the package
    directory itself finds the bundled file; ``disable_download=True`` turns any
    remaining miss into ``FileNotFoundError`` instead of a network request. This
    also keeps working if a later release fixes the folder name.
    """
    wordllama = _import_without_logging_side_effects("wordllama", WORDLLAMA_PIP)
    if not wordllama.__file__:
        raise EmbeddingUnavailable(f"wordllama has no package directory; reinstall it with: {WORDLLAMA_PIP}")
    package_dir = Path(wordllama.__file__).resolve().parent
    trunc_dim = None if dims == native_dims else dims
    try:
        return wordllama.WordLlama.load(
            config=config,
            cache_dir=package_dir,
            dim=native_dims,
            trunc_dim=trunc_dim,
            disable_download=True,
        )
    except Exception as exc:  # FileNotFoundError, ValueError, safetensors/tokenizers errors
        version = getattr(wordllama, "__version__", "?")
        raise EmbeddingUnavailable(
            f"wordllama {version} is installed but its bundled {config} model "
            f"could not be loaded offline ({exc}); reinstall it with: {WORDLLAMA_PIP}"
        ) from exc


# --------------------------------------------------------------------------- hashing


_WORD_RE = re.compile(r"\w+", re.UNICODE)
# Function words carry no topic and would dominate short texts' overlap.
_STOPWORDS = frozenset(
    "a an and are as at be but by do does did for from has have how i in is it its "
    "me my of on or our so that the their them then there these this to was we were "
    "what when where which who why will with you your".split()
)
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.35


@functools.lru_cache(maxsize=65_536)
def _bucket(feature: str, dims: int) -> tuple[int, float]:
    """Stable (across processes and Python versions) bucket and sign of a feature."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dims, (1.0 if value >> 63 else -1.0)


def _hash_features(text: str) -> dict[str, int]:
    """Count word unigrams and char trigrams of ``#word#``.

    Trigrams let inflections share features (``test``/``tests``).
    """
    counts: dict[str, int] = {}
    for word in _WORD_RE.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        counts["w:" + word] = counts.get("w:" + word, 0) + 1
        padded = f"#{word}#"
        for i in range(len(padded) - 2):
            key = "c:" + padded[i : i + 3]
            counts[key] = counts.get(key, 0) + 1
    return counts


class HashingEmbedder:
    """Dependency-free deterministic fallback (feature hashing). LOWER QUALITY.

    It only sees shared words and word fragments, never meaning: "car" and
    "automobile" are unrelated to it. Use it in tests and when no real embedder
    can be installed; expect noticeably worse recall than wordllama. Output is
    identical across processes, platforms and runs (blake2b, not ``hash()``).
    Thread-safe (pure function plus an ``lru_cache``).
    """

    VERSION = "v1"

    def __init__(self, dims: int = 256) -> None:
        if not isinstance(dims, int) or dims < 8:
            raise InvalidInput("dims", f"hashing dims must be an int >= 8, got {dims!r}")
        self.dims = dims
        self.name = f"hashing:{self.VERSION}:{dims}"

    def __repr__(self) -> str:
        return f"HashingEmbedder(dims={self.dims})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, dims)`` float32 unit rows (zero if no words)."""
        items = _as_text_list(texts)
        out = np.zeros((len(items), self.dims), dtype=np.float32)
        for row, text in enumerate(items):
            for feature, count in _hash_features(text).items():
                bucket, sign = _bucket(feature, self.dims)
                base = _WORD_WEIGHT if feature.startswith("w:") else _TRIGRAM_WEIGHT
                out[row, bucket] += sign * base * (1.0 + math.log(count))  # sublinear tf
        return l2_normalize(out) if items else _empty(self.dims)


# ------------------------------------------------------------ sentence-transformers


class SentenceTransformerEmbedder:
    """Optional embedder on ``sentence-transformers``.

    The package is imported and the model loaded on first use, under a lock.
    Loading may download the model from the Hugging Face hub unless it is
    already cached (set ``HF_HUB_OFFLINE=1`` to forbid that). ``dims`` is read
    from the model unless given; give it to keep ``name``/``dims`` free of a
    model load. ``encode`` on one model instance is safe to call from several
    threads (torch inference, no shared mutable state on our side).
    """

    def __init__(
        self,
        model_name: str,
        *,
        dims: int | None = None,
        device: str | None = "cpu",
        batch_size: int = 32,
    ) -> None:
        if not model_name or not model_name.strip():
            raise InvalidInput("model_name", "a sentence-transformers model name is required")
        if dims is not None and dims < 1:
            raise InvalidInput("dims", f"dims must be positive, got {dims}")
        if not _is_importable("sentence_transformers"):
            raise EmbeddingUnavailable(
                f"sentence-transformers is not installed; install it with: {SENTENCE_TRANSFORMERS_PIP}"
            )
        self.model_name = model_name.strip()
        self.device = device
        self.batch_size = batch_size
        self._dims = dims
        self._lock = threading.Lock()
        self._model: Any = None

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.model_name!r})"

    @property
    def dims(self) -> int:
        """Output dimensionality (loads the model if it was not given)."""
        if self._dims is None:
            self._get_model()
        assert self._dims is not None
        return self._dims

    @property
    def name(self) -> str:
        return f"sentence-transformers:{self.model_name}:{self.dims}"

    def _get_model(self) -> Any:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                module = _require("sentence_transformers", SENTENCE_TRANSFORMERS_PIP)
                try:
                    loaded = module.SentenceTransformer(self.model_name, device=self.device)
                except Exception as exc:
                    raise EmbeddingUnavailable(
                        f"sentence-transformers model {self.model_name!r} could not be loaded: {exc}"
                    ) from exc
                model_dims = int(loaded.get_sentence_embedding_dimension())
                if self._dims is not None and self._dims != model_dims:
                    raise EmbeddingUnavailable(
                        f"model {self.model_name!r} produces {model_dims}-dim vectors, configured {self._dims}"
                    )
                self._dims = model_dims
                self._model = loaded
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, dims)`` float32 unit rows."""
        items = _as_text_list(texts)
        model = self._get_model()
        if not items:
            return _empty(self.dims)
        vectors = model.encode(
            items,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalize(np.asarray(vectors, dtype=np.float32).reshape(len(items), -1))


# ----------------------------------------------------------- OpenAI-compatible HTTP


def _embeddings_url(base_url: str) -> str:
    """Accept ``http://host:port``, ``.../v1`` or the full ``.../v1/embeddings``."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput("base_url", f"expected an http(s) URL, got {base_url!r}")
    if url.endswith("/embeddings"):
        return url
    if url.endswith("/v1"):
        return url + "/embeddings"
    return url + "/v1/embeddings"


class OpenAICompatibleEmbedder:
    """Embeddings from any server speaking OpenAI's ``POST /v1/embeddings``.

    Works with OpenAI, vLLM, llama.cpp's server, Ollama and similar.

    Stdlib only (``urllib``), so it has no extra to install. ``name`` is
    ``openai:<model>:<dims>``: the server address is deliberately left out
    because the model, not the host serving it, defines the vector space.
    If ``dims`` is not given, the first access of ``dims``/``name`` sends one
    probe request. Network and HTTP failures raise :class:`EmbeddingUnavailable`
    (never with the API key in the message). Thread-safe: each call is an
    independent request; the lazily probed ``dims`` is guarded by a lock.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dims: int | None = None,
        *,
        timeout: float = 30.0,
        batch_size: int = 256,
        send_dimensions: bool = False,
    ) -> None:
        if not model or not model.strip():
            raise InvalidInput("model", "an embedding model name is required")
        if dims is not None and dims < 1:
            raise InvalidInput("dims", f"dims must be positive, got {dims}")
        if batch_size < 1:
            raise InvalidInput("batch_size", "batch_size must be positive")
        self.endpoint = _embeddings_url(base_url)
        self.model = model.strip()
        self.timeout = timeout
        self.batch_size = batch_size
        self.send_dimensions = send_dimensions and dims is not None
        self._api_key = api_key
        self._dims = dims
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAICompatibleEmbedder({self.endpoint!r}, {self.model!r})"

    @property
    def dims(self) -> int:
        """Output dimensionality (one probe request if it was not given)."""
        if self._dims is None:
            with self._lock:
                if self._dims is None:
                    self._dims = int(self._request(["dimension probe"]).shape[1])
        return self._dims

    @property
    def name(self) -> str:
        return f"openai:{self.model}:{self.dims}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (``batch_size`` per request) into ``(n, dims)`` unit rows."""
        items = _as_text_list(texts)
        if not items:
            return _empty(self.dims)
        parts = [self._request(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        out = np.concatenate(parts, axis=0)
        if out.shape[1] != self.dims:
            raise EmbeddingUnavailable(
                f"embedding server returned {out.shape[1]}-dim vectors for {self.model!r}, expected {self.dims}"
            )
        return l2_normalize(out)

    def _request(self, batch: list[str]) -> np.ndarray:
        payload: dict[str, Any] = {
            "model": self.model,
            "input": batch,
            "encoding_format": "float",
        }
        if self.send_dimensions:
            payload["dimensions"] = self._dims
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.endpoint,
            data=json.dumps(payload).encode("utf-8"),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise EmbeddingUnavailable(f"embedding server {self.endpoint} answered HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise EmbeddingUnavailable(f"embedding server {self.endpoint} unreachable: {exc}") from exc
        return _parse_embeddings(body, len(batch), self.endpoint)


def _parse_embeddings(body: bytes, expected: int, endpoint: str) -> np.ndarray:
    """Parse an OpenAI embeddings response, ordering rows by their ``index`` field."""
    try:
        data = json.loads(body)["data"]
        rows = sorted(data, key=lambda item: int(item.get("index", 0)))
        matrix = np.array([row["embedding"] for row in rows], dtype=np.float32)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EmbeddingUnavailable(f"embedding server {endpoint} sent a malformed response: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[0] != expected:
        raise EmbeddingUnavailable(
            f"embedding server {endpoint} returned "
            f"{matrix.shape[0] if matrix.ndim else 0} vectors "
            f"for {expected} inputs"
        )
    return matrix


# --------------------------------------------------------------------------- factory


def _parse_dims(text: str, spec: str) -> int:
    if not text.isdigit():
        raise InvalidInput("embedder", f"bad dims {text!r} in embedder spec {spec!r}")
    return int(text)


def get_embedder(
    spec: str = "wordllama",
    *,
    api_key: str | None = None,
    fallback_to_hashing: bool = False,
) -> Embedder:
    """Build an embedder from a config string.

    Accepted specs (an embedder's own ``name`` is accepted too, so the name
    stored with an index can be turned back into an embedder):

    * ``wordllama`` (default), ``wordllama:<dims>``, ``wordllama:l2_supercat:<dims>``
    * ``hashing``, ``hashing:<dims>``, ``hashing:v1:<dims>``
    * ``sentence-transformers:<model>`` (optionally ``:<dims>``)
    * ``openai:<model>@<base_url>`` (``api_key`` is passed through)

    Unknown specs raise ``InvalidInput("embedder", ...)``. A missing package
    raises :class:`EmbeddingUnavailable`, unless ``fallback_to_hashing`` is set:
    then a warning is logged and a :class:`HashingEmbedder` is returned (its
    different ``name`` makes any existing index rebuild, as it must).
    """
    text = (spec or "").strip() or "wordllama"
    try:
        return _build_embedder(text, spec, api_key)
    except EmbeddingUnavailable as exc:
        if not fallback_to_hashing:
            raise
        logger.warning(
            "embedder %r unavailable (%s); falling back to the hashing embedder",
            spec,
            exc,
        )
        return HashingEmbedder()


def _build_embedder(text: str, spec: str, api_key: str | None) -> Embedder:
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind == "wordllama":
        parts = rest.split(":") if rest else []
        if len(parts) == 2 and parts[0] == WordLlamaEmbedder.CONFIG:
            parts = parts[1:]
        if len(parts) > 1:
            raise InvalidInput("embedder", f"bad wordllama spec {spec!r}")
        return WordLlamaEmbedder(_parse_dims(parts[0], spec) if parts else 256)
    if kind == "hashing":
        parts = rest.split(":") if rest else []
        if len(parts) == 2 and parts[0] == HashingEmbedder.VERSION:
            parts = parts[1:]
        if len(parts) > 1:
            raise InvalidInput("embedder", f"bad hashing spec {spec!r}")
        return HashingEmbedder(_parse_dims(parts[0], spec) if parts else 256)
    if kind in ("sentence-transformers", "sentence_transformers", "st"):
        model, _, maybe_dims = rest.rpartition(":")
        dims: int | None = None
        if model and maybe_dims.isdigit():
            dims = int(maybe_dims)
        else:
            model = rest
        if not model.strip():
            raise InvalidInput(
                "embedder",
                f"missing model in {spec!r}; use sentence-transformers:<model>",
            )
        return SentenceTransformerEmbedder(model, dims=dims)
    if kind == "openai":
        model, at, base_url = rest.partition("@")
        if not at or not model.strip() or not base_url.strip():
            raise InvalidInput("embedder", f"bad openai spec {spec!r}; use openai:<model>@<base_url>")
        return OpenAICompatibleEmbedder(base_url, model, api_key=api_key)
    raise InvalidInput(
        "embedder",
        f"unknown embedder spec {spec!r}; expected 'wordllama', 'hashing', "
        "'sentence-transformers:<model>' or 'openai:<model>@<base_url>'",
    )
