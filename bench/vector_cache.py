"""A bench-only cache of embedded texts, so the 100k and 1M runs embed each distractor once.

Embedding is the long part of every large quality or latency run (MiniLM int8
embeds ~130 corpus texts per CPU-second here: 100k texts are ~13 CPU-minutes,
1M over two CPU-hours). The generated corpus is deterministic (``corpus.py``,
seed 7) and a text's vector depends only on the model and the text, so the
vectors are kept in ``bench/out/vector-cache/<model id>/``:

- the model id is the embedder's persisted name plus, for MiniLM, the sha256
  the embedder checks before it runs the model file: another model, another
  cache;
- each part is ``part-NNNNN.keys`` (16-byte BLAKE2b digests of the texts) and
  ``part-NNNNN.npy`` (their float32 rows, exactly what the embedder returned),
  written to a temporary name and renamed, so an interrupted run leaves whole
  parts only.

:class:`CachedEmbedder` wraps an embedder under the same name and dims: cached
texts are looked up, the rest embedded by the wrapped embedder and appended.
The store sees the same vectors it would have computed itself, so every figure
is the model's. ``python bench/vector_cache.py --memories N`` fills the cache
with the first N corpus texts ahead of a run (resumable)::

    nice -n 10 python bench/vector_cache.py --memories 100000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE_ROOT = Path(__file__).resolve().parent / "out" / "vector-cache"
DIGEST = 16


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST).digest()


def model_id(embedder: Any) -> str:
    """The cache's key for an embedder: its persisted name, and the model file's checked sha256 for MiniLM."""
    extra = ""
    if embedder.name.startswith("minilm"):
        from neuralsync.search.embed.minilm import MODEL_SHA256

        extra = MODEL_SHA256
    tag = hashlib.sha256(f"{embedder.name}|{embedder.dims}|{extra}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder.name)
    return f"{safe}-{tag}"


class VectorCache:
    """Append-only parts of (text digest, vector) on disk, all loaded into memory on open."""

    def __init__(self, directory: Path, dims: int) -> None:
        self.directory = directory
        self.dims = dims
        directory.mkdir(parents=True, exist_ok=True)
        self._rows: dict[bytes, int] = {}
        blocks: list[np.ndarray] = []
        count = 0
        self._parts = sorted(directory.glob("part-*.npy"))
        for npy in self._parts:
            keys = npy.with_suffix(".keys").read_bytes()
            vectors = np.load(npy)
            if vectors.shape != (len(keys) // DIGEST, dims):
                raise ValueError(f"{npy}: shape {vectors.shape} does not match its keys")
            for i in range(vectors.shape[0]):
                self._rows.setdefault(keys[i * DIGEST:(i + 1) * DIGEST], count + i)
            blocks.append(vectors)
            count += vectors.shape[0]
        self._vectors = np.concatenate(blocks) if blocks else np.zeros((0, dims), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, keys: Sequence[bytes]) -> tuple[np.ndarray, list[int]]:
        """(rows found, in key order with zeros where missing; indexes of the missing keys)."""
        out = np.zeros((len(keys), self.dims), dtype=np.float32)
        missing: list[int] = []
        for i, key in enumerate(keys):
            row = self._rows.get(key)
            if row is None:
                missing.append(i)
            else:
                out[i] = self._vectors[row]
        return out, missing

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Append a part (keys already cached are skipped)."""
        fresh = [i for i, k in enumerate(keys) if k not in self._rows]
        if not fresh:
            return
        vectors = np.ascontiguousarray(vectors[fresh], dtype=np.float32)
        name = f"part-{len(self._parts):05d}-{os.getpid()}"  # the pid: fillers may run side by side
        npy = self.directory / f"{name}.npy"
        tmp_keys = self.directory / f".{name}.keys.tmp"
        tmp_npy = self.directory / f".{name}.npy.tmp"
        tmp_keys.write_bytes(b"".join(keys[i] for i in fresh))
        with open(tmp_npy, "wb") as fh:
            np.save(fh, vectors)
        tmp_keys.replace(npy.with_suffix(".keys"))
        tmp_npy.replace(npy)  # the .npy last: a part counts only once both files exist
        self._parts.append(npy)
        base = self._vectors.shape[0]
        self._vectors = np.concatenate([self._vectors, vectors])
        for j, i in enumerate(fresh):
            self._rows.setdefault(keys[i], base + j)


class CachedEmbedder:
    """``inner`` with a :class:`VectorCache` in front: same name, same dims, same vectors."""

    def __init__(self, inner: Any, root: Path = CACHE_ROOT) -> None:
        self.inner = inner
        self.name = inner.name
        self.dims = inner.dims
        self.cache = VectorCache(root / model_id(inner), inner.dims)
        self.hits = 0
        self.embedded = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = list(texts)
        keys = [digest(t) for t in items]
        out, missing = self.cache.lookup(keys)
        self.hits += len(items) - len(missing)
        if missing:
            vectors = np.asarray(self.inner.embed([items[i] for i in missing]), dtype=np.float32)
            out[missing] = vectors
            self.embedded += len(missing)
            if len(missing) > 1:  # single texts are queries or one-off writes: not worth a part each
                self.cache.add([keys[i] for i in missing], vectors)
        return out


def install(api: Any, root: Path = CACHE_ROOT) -> CachedEmbedder | None:
    """Put a cache in front of the store's own embedder (the store must not embed through a server)."""
    semantic = api.semantic
    if semantic is None:
        return None
    cached = CachedEmbedder(semantic.local_embedder, root)
    semantic._local_embedder = cached  # bench-only: the store embeds through the cache
    semantic.via_server = False
    return cached


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--memories", type=int, default=100_000, help="corpus texts 0 .. N-1 (seed 7)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--end", type=int, default=None, help="stop before this text (default: --memories)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from corpus import Corpus

    from neuralsync.search.embed import get_embedder

    cached = CachedEmbedder(get_embedder(args.embedder))
    print(f"cache {cached.cache.directory}: {len(cached.cache)} vectors", flush=True)
    corpus = Corpus(seed=7)
    started = time.perf_counter()
    end = args.memories if args.end is None else min(args.end, args.memories)
    for lo in range(args.start, end, args.chunk):
        hi = min(lo + args.chunk, end)
        texts = [r["content"] for r in corpus.memories(args.memories, lo, hi)]
        t0, c0 = time.perf_counter(), time.process_time()
        before = cached.embedded
        cached.embed(texts)
        done = cached.embedded - before
        if done:
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"{hi:>9,}: {done} embedded, {done / wall:.0f}/s wall, {done / max(cpu, 1e-9):.0f}/s cpu,"
                  f" cache {len(cached.cache):,}, {time.perf_counter() - started:.0f} s", flush=True)
    print(f"done: {len(cached.cache):,} vectors cached", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
