"""PseudoLabelCache: hit/miss, reuse across openings, invalidation, corrupt entries and files, writers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kd_depth_core.distill.cache import CacheError, PseudoLabelCache

SHAPE = (6, 10)


def label(value: float) -> np.ndarray:
    """A (2,H,W) record whose every element is distinct, offset by `value`."""
    return (value + np.arange(2 * SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(2, *SHAPE) / 64).astype(np.float32)


def open_cache(directory, fingerprint="teacher-a", **kwargs) -> PseudoLabelCache:
    kwargs.setdefault("chunk_size", 3)
    kwargs.setdefault("dtype", "float32")
    return PseudoLabelCache(directory, fingerprint, SHAPE, **kwargs)


def test_hit_miss_and_reuse_across_openings(tmp_path):
    cache = open_cache(tmp_path)
    assert cache.get("seq/000001") is None and cache.stats.misses == 1
    keys = [f"seq/{i:06d}" for i in range(7)]  # 7 records over 3 part files of 3 rows
    cache.put_many(keys, np.stack([label(i) for i in range(7)]))
    assert len(cache) == 7 and "seq/000004" in cache and "seq/000099" not in cache
    got = cache.get("seq/000004")
    assert got.dtype == np.float32 and np.array_equal(got, label(4))
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (1, 1, 7)
    cache.close()
    assert sorted(p.name for p in tmp_path.glob("part-*.npy")) == [
        "part-w000-00000.npy", "part-w000-00001.npy", "part-w000-00002.npy"]

    again = open_cache(tmp_path)  # a later epoch or run
    assert len(again) == 7
    for i, record in enumerate(again.get_many(keys)):
        assert np.array_equal(record, label(i))
    assert again.stats.hits == 7 and again.stats.misses == 0
    again.put("seq/000007", label(7))  # appends after the last used row
    again.put("seq/000003", label(30))  # replaces in place
    again.close()
    third = open_cache(tmp_path)
    assert len(third) == 8 and np.array_equal(third.get("seq/000007"), label(7))
    assert np.array_equal(third.get("seq/000003"), label(30))


def test_float16_storage_rounds_values(tmp_path):
    cache = open_cache(tmp_path, dtype="float16")
    value = label(50.0)
    cache.put("a", value)
    got = cache.get("a")
    assert got.dtype == np.float32 and np.array_equal(got, value.astype(np.float16).astype(np.float32))
    assert np.allclose(got, value, rtol=1e-3) and not np.array_equal(got, value)


def test_invalidated_when_the_teacher_fingerprint_changes(tmp_path):
    cache = open_cache(tmp_path, "teacher-a")
    cache.put_many(["x", "y"], np.stack([label(1), label(2)]))
    cache.close()
    assert open_cache(tmp_path, "teacher-a").get("x") is not None
    other = open_cache(tmp_path, "teacher-b")  # the teacher checkpoint changed
    assert len(other) == 0 and other.get("x") is None
    assert not list(tmp_path.glob("part-*.npy"))
    assert json.loads((tmp_path / "cache.json").read_text())["fingerprint"] == "teacher-b"
    other.put("x", label(9))
    other.close()
    # back to the first teacher: rebuilt again, never the other teacher's labels
    first = open_cache(tmp_path, "teacher-a")
    assert first.get("x") is None
    # another label size or dtype invalidates too
    first.put("x", label(1))
    first.close()
    assert len(PseudoLabelCache(tmp_path, "teacher-a", (6, 12), dtype="float32", chunk_size=3)) == 0


def test_corrupt_entry_is_detected_and_recomputed(tmp_path):
    cache = open_cache(tmp_path)
    cache.put_many(["good", "bad"], np.stack([label(1), label(2)]))
    cache.close()
    # flip one byte inside the data of row 1 ("bad")
    path = tmp_path / "part-w000-00000.npy"
    raw = np.load(path, mmap_mode="r+")
    raw["data"][1, 0, 2, 3] += 1.0
    raw.flush()
    del raw
    reopened = open_cache(tmp_path)
    assert np.array_equal(reopened.get("good"), label(1))
    assert reopened.get("bad") is None  # never returned
    assert reopened.stats.corrupt == 1 and reopened.stats.misses == 1
    reopened.put("bad", label(2))  # the caller recomputes it
    assert np.array_equal(reopened.get("bad"), label(2))
    reopened.close()
    assert np.array_equal(open_cache(tmp_path).get("bad"), label(2))
    # a torn write: the valid flag never got set
    raw = np.load(path, mmap_mode="r+")
    raw["valid"][0] = 0
    raw.flush()
    del raw
    assert open_cache(tmp_path).get("good") is None


def test_corrupt_part_file_is_detected_and_rebuilt(tmp_path):
    cache = open_cache(tmp_path)
    cache.put_many([f"k{i}" for i in range(5)], np.stack([label(i) for i in range(5)]))  # files 0 and 1
    cache.close()
    (tmp_path / "part-w000-00000.npy").write_bytes(b"\x93NUMPY garbage")  # truncated header
    reopened = open_cache(tmp_path)
    assert reopened.stats.corrupt == 1
    assert [reopened.get(f"k{i}") is None for i in range(5)] == [True, True, True, False, False]
    assert not (tmp_path / "part-w000-00000.npy").exists()  # removed by its writer
    reopened.put_many(["k0", "k1", "k2"], np.stack([label(0), label(1), label(2)]))
    reopened.close()
    final = open_cache(tmp_path)
    assert all(np.array_equal(final.get(f"k{i}"), label(i)) for i in range(5))
    assert sorted(p.name for p in tmp_path.glob("part-*.npy")) == [
        "part-w000-00001.npy", "part-w000-00002.npy"]  # file 1 filled up, then a new file: none overwritten


def test_one_file_per_writer_and_readers_see_other_writers(tmp_path):
    owner = open_cache(tmp_path, writer=0, refresh_interval_s=0.0)
    second = open_cache(tmp_path, writer=1, refresh_interval_s=0.0)
    owner.put("from-0", label(0))
    second.put("from-1", label(1))
    assert {p.name for p in tmp_path.glob("part-*.npy")} == {"part-w000-00000.npy", "part-w001-00000.npy"}
    # each sees the other's record after a rescan (done on a miss)
    assert np.array_equal(owner.get("from-1"), label(1))
    assert np.array_equal(second.get("from-0"), label(0))
    reader = open_cache(tmp_path, writer=None)
    reader.put("ignored", label(5))  # read-only: no-op
    assert reader.get("ignored") is None and len(reader) == 2
    with pytest.raises(CacheError, match="writer 0 \\(rank 0\\) must open it first"):
        open_cache(tmp_path, "another-teacher", writer=1)


def test_bad_arguments_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="dtype: expected one of float16, float32"):
        open_cache(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="fingerprint: expected a non-empty string"):
        open_cache(tmp_path, "")
    cache = open_cache(tmp_path)
    with pytest.raises(ValueError, match=r"expected shape \(2, 6, 10\)"):
        cache.put("x", np.zeros((2, 6, 11), np.float32))
