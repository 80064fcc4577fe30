"""The index file: usearch's own bytes, then our metadata and a footer, replaced atomically.

Layout (one file, so index and metadata can never disagree)::

    [usearch index, exactly as usearch saves it][metadata JSON][footer 24 B]
    footer = little-endian u64 json_len, u64 index_len, 8-byte magic

usearch only reads the prefix it needs, so the file is also a valid usearch
file for debugging tools. :func:`write_file` writes a temp file, fsyncs it and
renames it over the old one (readers see the old file or the new one, never a
mix); :func:`map_file` opens one consistent snapshot through a single ``mmap``.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import struct
import sys
import tempfile
from contextlib import suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from ...errors import IntegrityError, NeuralSyncError

USEARCH_PIP = "pip install usearch"
FORMAT = "neuralsync-ann/1"
DTYPES = ("f32", "f16", "i8")

_MAGIC = b"NSANN\x00v1"
_FOOTER = struct.Struct("<QQ8s")
_MAX_META_BYTES = 1 << 20


class IndexFileError(IntegrityError):
    """The index file is not ours, truncated, corrupt or inconsistent: rebuild it."""


class VectorIndexUnavailable(NeuralSyncError):
    """usearch is not installed; the message has the pip line."""


def load_usearch() -> ModuleType:
    """Import ``usearch.index`` lazily so importing this package stays cheap.

    onnxruntime (the default embedder's runtime) is loaded first when it is
    installed: usearch loads its SIMD library with ``RTLD_GLOBAL``, and an
    onnxruntime loaded after that binds to those symbols and crashes the process
    (seen with usearch 2.26 and onnxruntime 1.32). The other order is safe.
    """
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime  # noqa: F401 - see the docstring
    stub = None
    if "tqdm" not in sys.modules and "usearch.index" not in sys.modules:
        # usearch imports tqdm at its top only to draw bars when a caller passes log=True, which this package
        # never does; tqdm's import looks its version up in the installed distributions (25-130 ms of a
        # fresh `neuralsync recall`). A stand-in serves that import; the real tqdm stays importable.
        stub = ModuleType("tqdm")
        stub.tqdm = _NoProgress  # type: ignore[attr-defined]
        sys.modules["tqdm"] = stub
    try:
        import usearch.index as usearch_index
    except ImportError as exc:
        raise VectorIndexUnavailable(f"usearch is not installed; install it with: {USEARCH_PIP}") from exc
    finally:
        if stub is not None and sys.modules.get("tqdm") is stub:
            del sys.modules["tqdm"]
    return usearch_index


class _NoProgress:
    """What usearch gets for ``tqdm`` (see :func:`load_usearch`): a bar that draws nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class IndexMeta:
    """Metadata stored in the index file.

    ``covered_seq``: every store row with seq <= this is in the index (minus
    deletions, which the caller filters). ``embedder``: the embedder ``name``;
    a different name means the vectors are from another space: rebuild.
    ``deleted``: usearch tombstones in the file (rebuild when large).
    """

    covered_seq: int
    dims: int
    embedder: str
    count: int
    dtype: str
    deleted: int = 0
    metric: str = "cos"
    connectivity: int = 16
    expansion_search: int = 64
    format: str = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> IndexMeta:
        """Parse metadata, ignoring unknown keys (forward compatible)."""
        try:
            data = json.loads(raw)
            known = {f.name for f in fields(cls)}
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError) as exc:
            raise IndexFileError(f"bad index metadata: {exc}") from exc
        if meta.format != FORMAT or meta.dtype not in DTYPES or meta.metric != "cos":
            raise IndexFileError(f"unsupported index format: {meta}")
        return meta


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_footer(buf: memoryview | bytes) -> tuple[IndexMeta, int]:
    """Parse and check the footer + metadata of a whole index file image."""
    size = len(buf)
    if size < _FOOTER.size:
        raise IndexFileError("index file too short")
    json_len, blob_len, magic = _FOOTER.unpack(bytes(buf[size - _FOOTER.size :]))
    if magic != _MAGIC:
        raise IndexFileError("not a neuralsync index file (bad magic)")
    if json_len > _MAX_META_BYTES or blob_len + json_len + _FOOTER.size != size:
        raise IndexFileError("index file is truncated or has a bad footer")
    meta = IndexMeta.from_json(bytes(buf[blob_len : blob_len + json_len]))
    return meta, blob_len


def read_meta(path: str | os.PathLike[str]) -> IndexMeta:
    """Read only the metadata of an index file (cheap: footer + JSON, no mapping).

    Raises ``FileNotFoundError`` if missing and :class:`IndexFileError` if not
    a valid index file.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < _FOOTER.size:
            raise IndexFileError("index file too short")
        fh.seek(size - _FOOTER.size)
        json_len, blob_len, magic = _FOOTER.unpack(fh.read(_FOOTER.size))
        if magic != _MAGIC:
            raise IndexFileError("not a neuralsync index file (bad magic)")
        if json_len > _MAX_META_BYTES or blob_len + json_len + _FOOTER.size != size:
            raise IndexFileError("index file is truncated or has a bad footer")
        fh.seek(blob_len)
        return IndexMeta.from_json(fh.read(json_len))


def write_file(raw: Any, path: str | os.PathLike[str], meta: IndexMeta) -> IndexMeta:
    """Save the usearch index ``raw`` with ``meta`` (its ``deleted`` count filled in) atomically at ``path``.

    Temp file in the same directory, fsync, ``os.replace``, fsync of the
    directory; a failed save leaves the old file untouched and no temp file behind.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        raw.save(os.fspath(tmp))
        blob_len = tmp.stat().st_size
        header = load_usearch().Index.metadata(os.fspath(tmp)) or {}
        meta = IndexMeta(**{**asdict(meta), "deleted": int(header.get("count_deleted", 0))})
        encoded = meta.to_json()
        with open(tmp, "r+b") as fh:
            fh.seek(blob_len)
            fh.write(encoded)
            fh.write(_FOOTER.pack(len(encoded), blob_len, _MAGIC))
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(directory)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return meta


def map_file(path: str | os.PathLike[str], *, view: bool) -> tuple[Any, IndexMeta, mmap.mmap | None]:
    """Open an index file: (usearch index, metadata, the mapping to keep open while viewing, or None).

    ``view=True`` leaves the usearch index over the read-only mapping (O(1),
    shared by every process); ``view=False`` loads a private copy and closes it.
    Raises ``FileNotFoundError`` or :class:`IndexFileError`.
    """
    target = Path(path)
    with open(target, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < _FOOTER.size:
            raise IndexFileError(f"{target}: index file too short")
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        raw, meta = _open_mapping(mapping, view=view)
    except BaseException:
        mapping.close()
        raise
    if view:
        return raw, meta, mapping
    mapping.close()
    return raw, meta, None


def _open_mapping(mapping: mmap.mmap, *, view: bool) -> tuple[Any, IndexMeta]:
    """Create the usearch index over (view) or from (load) a mapped file image."""
    usearch_index = load_usearch()
    whole = memoryview(mapping)
    blob = whole[:0]
    try:
        meta, blob_len = _read_footer(whole)
        blob = whole[:blob_len]
        try:
            header = usearch_index.Index.metadata(blob)
        except (ValueError, RuntimeError) as exc:
            raise IndexFileError(f"unreadable usearch header: {exc}") from exc
        if not header or int(header["dimensions"]) != meta.dims or int(header["count_present"]) != meta.count:
            raise IndexFileError("usearch header disagrees with index metadata")
        index = usearch_index.Index(
            ndim=meta.dims,
            metric="cos",
            dtype=meta.dtype,
            connectivity=meta.connectivity,
            expansion_search=meta.expansion_search,
            multi=False,
        )
        try:
            if view:
                index.view(blob)
            else:
                index.load(blob)
        except (ValueError, RuntimeError) as exc:
            raise IndexFileError(f"usearch could not read the index: {exc}") from exc
        index.expansion_search = meta.expansion_search
        if len(index) != meta.count or index.ndim != meta.dims:
            raise IndexFileError("index contents disagree with metadata")
        return index, meta
    finally:
        # usearch does not hold a buffer export; the mmap itself stays open
        # (owned by the AnnIndex) for as long as the view is used.
        blob.release()
        whole.release()
