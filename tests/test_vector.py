"""The usearch-backed ANN cache file: recall, persistence, atomicity, deletions, merging.

Real usearch only (no mocks of it). A few tests make ``os.replace``/``os.fsync``
fail to prove a failed save leaves the previous file intact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("usearch")

from neuralsync.errors import IntegrityError, InvalidInput
from neuralsync.search.vector import (
    FORMAT,
    AnnIndex,
    Hit,
    IndexFileError,
    IndexMeta,
    ReadOnlyIndexError,
    exact_search,
    merge_results,
    read_meta,
)
from neuralsync.search.vector import fileformat as vector_mod

DIMS = 64
N = 5000


def _clustered(n: int, dims: int = DIMS, seed: int = 7, clusters: int = 50) -> np.ndarray:
    """Vectors around a few topics, like real memory embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dims)).astype(np.float32)
    points = centers[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dims))
    return points.astype(np.float32)


def _queries(data: np.ndarray, n: int = 200, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = data[rng.integers(0, len(data), n)]
    return (picks + 0.2 * rng.standard_normal(picks.shape)).astype(np.float32)


def _recall(index: AnnIndex, data: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    found = index.search_many(queries, k)
    total = 0
    for query, hits in zip(queries, found, strict=True):
        truth = {h.key for h in exact_search(data, keys, query, k)}
        total += len(truth & {h.key for h in hits})
    return total / (k * len(queries))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return _clustered(N)


@pytest.fixture(scope="module")
def keys() -> np.ndarray:
    return np.arange(1000, 1000 + N, dtype=np.int64)


@pytest.fixture(scope="module")
def built(data: np.ndarray, keys: np.ndarray) -> AnnIndex:
    return AnnIndex.build(keys, data, embedder="test:64")


# --------------------------------------------------------------------------- recall


def test_recall_at_10_clustered(built: AnnIndex, data: np.ndarray, keys: np.ndarray) -> None:
    assert len(built) == N
    assert _recall(built, data, keys, _queries(data)) >= 0.95


def test_recall_at_10_uniform_random_with_higher_ef() -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((N, 32)).astype(np.float32)
    keys = np.arange(N, dtype=np.int64)
    index = AnnIndex.build(keys, data, expansion_search=256)
    queries = rng.standard_normal((100, 32)).astype(np.float32)
    assert _recall(index, data, keys, queries) >= 0.95


def test_similarities_are_cosine(built: AnnIndex, data: np.ndarray, keys: np.ndarray) -> None:
    hits = built.search(data[0], 5)
    assert hits[0].key == int(keys[0])
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-3)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    for hit in hits:
        row = int(hit.key) - 1000
        assert hit.similarity == pytest.approx(float(unit[0] @ unit[row]), abs=5e-3)  # f16 storage
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


def test_search_many_matches_search(built: AnnIndex, data: np.ndarray) -> None:
    many = built.search_many(data[:5], 7)
    assert [built.search(q, 7) for q in data[:5]] == many
    assert built.search(data[0][None, :], 3) == built.search(data[0], 3)


def test_small_and_empty_indexes() -> None:
    empty = AnnIndex(8)
    assert empty.search(np.ones(8, np.float32), 5) == []
    tiny = AnnIndex.build(np.array([5, 6, 7]), np.eye(3, 8, dtype=np.float32))
    hits = tiny.search(np.eye(1, 8, dtype=np.float32)[0], 10)
    assert sorted(h.key for h in hits) == [5, 6, 7]  # k > size returns everything, no padding
    assert all(isinstance(h, Hit) and isinstance(h.key, int) for h in hits)


# --------------------------------------------------------------------------- validation / upsert


def test_input_validation() -> None:
    index = AnnIndex(4)
    with pytest.raises(InvalidInput):
        index.add([-1], np.ones((1, 4)))  # -1 would wrap to usearch's free-slot sentinel
    with pytest.raises(InvalidInput):
        index.add([1], np.ones((1, 5)))
    with pytest.raises(InvalidInput):
        index.add([1, 2], np.ones((1, 4)))
    with pytest.raises(InvalidInput):
        index.add([1], np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(InvalidInput):
        index.add([1.5], np.ones((1, 4)))
    with pytest.raises(InvalidInput):
        index.search(np.ones(4), 0)
    with pytest.raises(InvalidInput):
        index.search(np.ones((2, 4)), 1)
    with pytest.raises(InvalidInput):
        AnnIndex(4, dtype="f64")
    with pytest.raises(InvalidInput):
        index.save("unused", covered_seq=-1)
    assert len(index) == 0


def test_add_is_an_upsert_and_refuses_duplicate_batches() -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = AnnIndex.build(np.arange(4), vectors)
    index.add([2], vectors[[0]])  # re-embed key 2 to point where key 0 points
    assert len(index) == 4
    assert {h.key for h in index.search(vectors[0], 2)} == {0, 2}
    with pytest.raises(InvalidInput, match="duplicate"):
        index.add([10, 10], vectors[:2])
    assert 10 not in index and len(index) == 4  # nothing half-applied (usearch alone would)


# --------------------------------------------------------------------------- deletions and filters


def test_removed_keys_are_never_returned(data: np.ndarray, keys: np.ndarray, tmp_path: Path) -> None:
    index = AnnIndex.build(keys, data)
    rng = np.random.default_rng(5)
    removed = rng.choice(keys, size=N * 3 // 10, replace=False)
    assert index.remove(removed) == len(removed)
    assert index.remove(removed[:10]) == 0  # already gone: ignored
    assert len(index) == N - len(removed)
    gone = set(int(k) for k in removed)
    queries = data[removed[:200] - 1000]  # each query's true nearest neighbour was deleted
    for hits in index.search_many(queries, 10):
        assert len(hits) == 10
        assert not gone & {h.key for h in hits}
    index.save(tmp_path / "idx.ann", covered_seq=1)
    viewed, meta = AnnIndex.open(tmp_path / "idx.ann")
    assert meta.deleted == len(removed) and meta.count == len(index)
    for hits in viewed.search_many(queries, 10):
        assert len(hits) == 10 and not gone & {h.key for h in hits}
    viewed.close()


def test_removed_key_can_be_added_back() -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = AnnIndex.build(np.arange(4), vectors)
    index.remove([1])
    assert 1 not in index
    index.add([1], vectors[[1]])
    assert index.search(vectors[1], 1)[0].key == 1


def test_exclude_with_oversampling_keeps_top_k_full(built: AnnIndex, data: np.ndarray, keys: np.ndarray) -> None:
    query = data[0]
    near = [h.key for h in built.search(query, 200)]
    excluded = set(near[:150])  # the 150 nearest are "deleted"
    hits = built.search(query, 10, exclude=excluded)
    assert len(hits) == 10 and not excluded & {h.key for h in hits}
    truth = exact_search(data, keys, query, 10, exclude=excluded)
    assert len({h.key for h in hits} & {h.key for h in truth}) >= 8
    # A predicate excluding 99% of the index still fills k (fetch widens until exhausted).
    allowed_keys = set(int(k) for k in keys[::100])
    hits = built.search(query, 10, allowed=lambda key: key in allowed_keys)
    assert len(hits) == 10 and {h.key for h in hits} <= allowed_keys
    both = built.search(query, 5, allowed=allowed_keys, exclude=lambda key: key % 200 == 0)
    assert all(h.key in allowed_keys and h.key % 200 for h in both) and len(both) == 5


# --------------------------------------------------------------------------- persistence


def test_save_and_view_round_trip(built: AnnIndex, data: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "vectors.ann"
    meta = built.save(path, covered_seq=1234)
    assert meta == IndexMeta(
        covered_seq=1234, dims=DIMS, embedder="test:64", count=N, dtype="f16", deleted=0, format=FORMAT
    )
    assert read_meta(path) == meta
    viewed, opened_meta = AnnIndex.open(path, view=True)
    with viewed:
        assert opened_meta == meta
        assert viewed.read_only and viewed.path == path and len(viewed) == N
        assert viewed.embedder == "test:64" and viewed.dims == DIMS
        queries = data[:20]
        assert viewed.search_many(queries, 10) == built.search_many(queries, 10)
    with pytest.raises(ReadOnlyIndexError):
        viewed.search(data[0], 1)  # closed


def test_viewed_index_is_read_only_and_copy_is_writable(built: AnnIndex, data: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "vectors.ann"
    built.save(path, covered_seq=1)
    viewed, _ = AnnIndex.open(path)
    with pytest.raises(ReadOnlyIndexError):
        viewed.add([1], data[:1])
    with pytest.raises(ReadOnlyIndexError):
        viewed.remove([1000])
    copy = viewed.writable_copy()
    assert not copy.read_only
    copy.add([1], data[:1])
    copy.remove([1000])
    viewed.close()
    path.unlink()  # the copy owns its memory: neither the view nor the file is needed
    assert copy.search(data[0], 1)[0].key == 1
    assert len(copy) == N


def test_open_writable_loads_private_copy(built: AnnIndex, data: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "vectors.ann"
    built.save(path, covered_seq=9)
    writable, meta = AnnIndex.open(path, view=False)
    assert not writable.read_only and meta.covered_seq == 9
    writable.add([1], data[:1])
    assert len(writable) == N + 1
    assert read_meta(path).count == N  # the file is untouched until save


def test_expansion_search_is_persisted(data: np.ndarray, keys: np.ndarray, tmp_path: Path) -> None:
    index = AnnIndex.build(keys[:500], data[:500], dtype="f32", connectivity=8, expansion_search=99)
    meta = index.save(tmp_path / "a.ann", covered_seq=0)
    assert (meta.dtype, meta.connectivity, meta.expansion_search) == ("f32", 8, 99)
    viewed, _ = AnnIndex.open(tmp_path / "a.ann")
    assert viewed.expansion_search == 99 and viewed.dtype == "f32" and viewed.connectivity == 8
    viewed.expansion_search = 150
    assert viewed.expansion_search == 150
    viewed.close()


def test_expansion_add_is_settable_on_writable_indexes_only(data: np.ndarray, keys: np.ndarray,
                                                            tmp_path: Path) -> None:
    # usearch does not keep expansion_add in its file: an opened file adds with its default until it is set.
    index = AnnIndex.build(keys[:300], data[:300], connectivity=8, expansion_add=300)
    assert index.expansion_add == 300
    index.save(tmp_path / "a.ann", covered_seq=0)
    viewed, _ = AnnIndex.open(tmp_path / "a.ann")
    with pytest.raises(ReadOnlyIndexError):
        viewed.expansion_add = 300
    copy = viewed.writable_copy()
    assert copy.expansion_add != 300
    copy.expansion_add = 300
    assert copy.expansion_add == 300
    with pytest.raises(InvalidInput, match="expansion_add"):
        copy.expansion_add = 0
    assert copy.expansion_add == 300
    copy.close()
    viewed.close()


def test_save_is_atomic_and_leaves_no_temp_files(built: AnnIndex, tmp_path: Path) -> None:
    path = tmp_path / "vectors.ann"
    built.save(path, covered_seq=1)
    built.save(path, covered_seq=2)  # overwrite in place
    assert os.listdir(tmp_path) == ["vectors.ann"]
    assert read_meta(path).covered_seq == 2


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_keeps_old_file(
    built: AnnIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "vectors.ann"
    built.save(path, covered_seq=1)
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(vector_mod.os, failing, boom)
    with pytest.raises(OSError, match="disk on fire"):
        built.save(path, covered_seq=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["vectors.ann"]
    viewed, meta = AnnIndex.open(path)
    assert meta.covered_seq == 1 and len(viewed) == N
    viewed.close()


def test_view_survives_file_being_replaced(built: AnnIndex, data: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "vectors.ann"
    built.save(path, covered_seq=1)
    viewed, _ = AnnIndex.open(path)
    expected = viewed.search(data[3], 5)
    small = AnnIndex.build(np.array([1, 2]), data[:2])
    small.save(path, covered_seq=2)  # rename over the viewed file
    assert viewed.search(data[3], 5) == expected  # old inode stays mapped
    viewed.close()
    reopened, meta = AnnIndex.open(path)
    assert meta.covered_seq == 2 and len(reopened) == 2
    reopened.close()


def test_viewed_index_can_be_resaved(built: AnnIndex, tmp_path: Path) -> None:
    viewed_path = tmp_path / "a.ann"
    built.save(viewed_path, covered_seq=5)
    viewed, _ = AnnIndex.open(viewed_path)
    meta = viewed.save(viewed_path, covered_seq=6)
    assert meta.count == N and read_meta(viewed_path).covered_seq == 6
    viewed.close()


def test_corrupt_or_missing_files(built: AnnIndex, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AnnIndex.open(tmp_path / "missing.ann")
    good = tmp_path / "good.ann"
    built.save(good, covered_seq=1)
    raw = good.read_bytes()
    cases = {
        "empty": b"",
        "garbage": b"not an index at all" * 10,
        "truncated": raw[: len(raw) // 2],
        "tail_cut": raw[:-1],
        "bad_json": raw[: len(raw) - 24 - 10] + b"x" * 10 + raw[-24:],
        "plain_usearch": raw[: int.from_bytes(raw[-16:-8], "little")],  # index without our footer
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.ann"
        bad.write_bytes(content)
        for view in (True, False):
            with pytest.raises(IndexFileError):
                AnnIndex.open(bad, view=view)
        with pytest.raises(IntegrityError):  # IndexFileError is an IntegrityError
            read_meta(bad)


def test_view_is_shared_with_another_process(built: AnnIndex, data: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "shared.ann"
    built.save(path, covered_seq=77)
    np.save(tmp_path / "q.npy", data[42])
    script = textwrap.dedent(
        f"""
        import numpy as np
        from neuralsync.search.vector import AnnIndex
        index, meta = AnnIndex.open({str(path)!r}, view=True)
        hits = index.search(np.load({str(tmp_path / "q.npy")!r}), 3)
        print(meta.covered_seq, hits[0].key)
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["77", "1042"]



def test_usearch_is_loaded_without_tqdm_and_tqdm_stays_importable(built: AnnIndex, tmp_path: Path) -> None:
    """issue 11: a fresh recall maps the index without importing tqdm (its import reads package metadata,
    25-130 ms); a later `import tqdm` gets the real package, and a built index still searches."""
    path = tmp_path / "fresh.ann"
    built.save(path, covered_seq=1)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from neuralsync.search.vector import AnnIndex
        index, _ = AnnIndex.open({str(path)!r}, view=True)
        print(len(index.search(np.ones({built.dims}, dtype=np.float32), 3)), "tqdm" in sys.modules)
        import tqdm
        print(hasattr(tqdm, "__version__") and hasattr(tqdm, "trange"))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "False", "True"]


# --------------------------------------------------------------------------- exact + merge


def test_exact_search_basics() -> None:
    matrix = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    keys = np.array([10, 11, 12, 13])
    hits = exact_search(matrix, keys, np.array([1, 0.1]), 3)
    assert [h.key for h in hits] == [10, 12, 11]
    assert hits[0].similarity == pytest.approx(1 / np.sqrt(1.01))
    assert exact_search(matrix, keys, np.array([1, 0]), 10, exclude={10, 12})[0].key == 11
    assert [h.key for h in exact_search(matrix, keys, np.array([0, 1]), 2, allowed=lambda k: k >= 12)] == [12, 13]
    assert exact_search(np.zeros((0, 2)), np.array([], dtype=np.int64), np.array([1, 0]), 3) == []
    with pytest.raises(InvalidInput):
        exact_search(matrix, keys[:2], np.array([1, 0]), 3)


def test_merge_results_dedupes_and_keeps_best() -> None:
    a = [Hit(1, 0.9), Hit(2, 0.5), Hit(3, 0.4)]
    b = [(2, 0.7), (4, 0.95), (1, 0.2)]
    assert merge_results(a, b, 3) == [Hit(4, 0.95), Hit(1, 0.9), Hit(2, 0.7)]
    assert merge_results([], [], 5) == []
    assert merge_results([Hit(7, 0.5)], [Hit(6, 0.5)], 5) == [Hit(6, 0.5), Hit(7, 0.5)]  # ties by key


def test_ann_file_plus_exact_tail_matches_full_exact(data: np.ndarray, keys: np.ndarray, tmp_path: Path) -> None:
    covered = 4000  # rows 0..3999 are in the file; the rest are newer than covered_seq
    AnnIndex.build(keys[:covered], data[:covered]).save(tmp_path / "v.ann", covered_seq=covered)
    index, meta = AnnIndex.open(tmp_path / "v.ann")
    deleted = {int(keys[10]), int(keys[4500])}  # one old, one new row deleted since
    tail = slice(meta.covered_seq, None)
    queries = _queries(data, 100)
    total = 0
    for query in queries:
        ann = index.search(query, 10, exclude=deleted)
        fresh = exact_search(data[tail], keys[tail], query, 10, exclude=deleted)
        merged = merge_results(ann, fresh, 10)
        truth = exact_search(data, keys, query, 10, exclude=deleted)
        assert not deleted & {h.key for h in merged}
        total += len({h.key for h in merged} & {h.key for h in truth})
    assert total / (10 * len(queries)) >= 0.95
    index.close()


# --------------------------------------------------------------------------- threads


def test_concurrent_search_add_remove(data: np.ndarray, keys: np.ndarray) -> None:
    index = AnnIndex.build(keys[:2000], data[:2000])
    removed = set(int(k) for k in keys[:500])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                for hits in index.search_many(data[2000:2020], 10, exclude=removed):
                    assert len(hits) == 10 and not removed & {h.key for h in hits}
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    readers = [threading.Thread(target=searcher) for _ in range(3)]
    for t in readers:
        t.start()
    for start in range(2000, 3000, 100):
        index.add(keys[start : start + 100], data[start : start + 100])
    index.remove(sorted(removed))
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert len(index) == 2500
