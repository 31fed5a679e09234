"""Teacher pseudo-label cache: memory-mapped records keyed by frame key and teacher fingerprint.

Running an MC-dropout teacher (N passes of a ViT) costs far more than a student step, and the
teacher is frozen, so its outputs for a frame never change: they are computed once, stored,
and read back in later epochs and later runs.

On disk (one cache per folder):
- ``cache.json``: format version, teacher fingerprint, record shape (C,H,W) and dtype.
- ``part-w<writer>-<chunk>.npy``: NumPy ``.npy`` files of fixed-size records, opened with
  ``np.lib.format.open_memmap`` (sparse on creation, so unused rows take no disk space). A
  record holds the data (C,H,W), the key digest (blake2b-128 of fingerprint + frame key), a
  CRC-32 of key + data, and a valid flag written last.

Guarantees:
- hit / miss: ``get`` returns a stored record or None; ``stats`` counts hits, misses, corrupt
  entries and writes.
- invalidation: opening the folder with another fingerprint, shape or dtype deletes every part
  file and starts empty (the key digest also contains the fingerprint, so a stale record can
  never match a key even if a file survived).
- corruption: every read checks the valid flag, the key digest and the CRC; a torn or bit-rotten
  record, or a part file whose header cannot be read, is counted as corrupt, treated as a miss
  (its data is never returned) and recomputed by the caller (``put`` writes it again).
- concurrency: only the training task, in the main process of each rank, reads or writes;
  DataLoader workers never touch the cache. Each writer (DDP rank r -> ``writer=r``) appends only
  to its own ``part-w<r>-*`` files, so files never have two writers; everyone reads everyone's
  files and rescans for other writers' new records after a miss (at most every
  ``refresh_interval_s``). Writer 0 owns the folder: only it creates or invalidates it, so it must
  open first (the distillation task opens rank 0, then a barrier, then the others). Files are
  created under a temporary name and renamed, and ``cache.json`` is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kd_depth_core.utils.atomic import write_text_atomic

log = logging.getLogger("kd_depth_core.distill")

CACHE_FORMAT = 1
META_NAME = "cache.json"
DTYPES = ("float16", "float32")


class CacheError(RuntimeError):
    """The cache folder cannot be used as asked (the message names the folder and what to do)."""


@dataclass
class CacheStats:
    """Counters since the cache was opened."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    writes: int = 0


def key_digest(fingerprint: str, key: str) -> bytes:
    """16-byte blake2b digest of (teacher fingerprint, frame key): the record's key on disk."""
    return hashlib.blake2b(f"{fingerprint}\0{key}".encode(), digest_size=16).digest()


def record_crc(digest: bytes, data: np.ndarray) -> int:
    """CRC-32 of the key digest followed by the record's data bytes."""
    return zlib.crc32(np.ascontiguousarray(data), zlib.crc32(digest)) & 0xFFFFFFFF


class _Part:
    """One part file: its path, writer id, and memory map (read-write for its own writer)."""

    def __init__(self, path: Path, writer: int, array: np.memmap) -> None:
        self.path, self.writer, self.array = path, writer, array


class PseudoLabelCache:
    """Memory-mapped store of per-frame teacher outputs (see the module docstring).

    Args:
        directory: the cache folder (created when missing).
        fingerprint: identifies the teacher (``TeacherWrapper.fingerprint``) and anything else
            that changes the labels; a different one invalidates the folder.
        shape: (H, W) of a label map.
        channels: maps per record (2: ensemble mean depth and std).
        dtype: ``float16`` (half the disk; ~5e-4 relative rounding, applied to hits and misses alike
            by the task) or ``float32``.
        chunk_size: records per part file.
        writer: this process's writer id (DDP rank); None = read-only. Writer 0 owns the folder.
        refresh_interval_s: least time between rescans for other writers' records.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str, shape: tuple[int, int], *,
                 channels: int = 2, dtype: str = "float16", chunk_size: int = 64, writer: int | None = 0,
                 refresh_interval_s: float = 30.0) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        if len(shape) != 2 or min(int(s) for s in shape) < 1:
            raise ValueError(f"shape: expected (H, W) positive pixels, got {shape!r}")
        if channels < 1 or chunk_size < 1:
            raise ValueError(f"channels and chunk_size must be >= 1, got {channels}, {chunk_size}")
        if not fingerprint:
            raise ValueError("fingerprint: expected a non-empty string (e.g. TeacherWrapper.fingerprint)")
        self.directory = Path(directory)
        self.fingerprint = str(fingerprint)
        self.record_shape = (int(channels), int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.chunk_size = int(chunk_size)
        self.writer = writer
        self.refresh_interval_s = float(refresh_interval_s)
        self.record_dtype = np.dtype([("data", self.dtype, self.record_shape), ("key", "u1", (16,)), ("crc", "<u4"),
                                      ("valid", "u1")], align=True)
        self.stats = CacheStats()
        self._parts: dict[Path, _Part] = {}
        self._index: dict[bytes, tuple[Path, int]] = {}
        self._own: list[Path] = []  # this writer's part files, in chunk order
        self._next_row = 0  # next free row of the last own part
        self._last_scan = 0.0
        self._open()

    # ----------------------------------------------------------------------- folder
    def _meta(self) -> dict:
        return {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "shape": list(self.record_shape),
                "dtype": self.dtype.name}

    def _read_meta(self) -> dict | None:
        path = self.directory / META_NAME
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            log.warning("%s: unreadable cache metadata; the cache is rebuilt", path)
            return {}

    def _open(self) -> None:
        meta = self._read_meta()
        if meta != self._meta():
            if self.writer != 0:
                raise CacheError(f"{self.directory}: pseudo-label cache missing or made for another teacher/shape; "
                                 f"writer 0 (rank 0) must open it first (writer={self.writer})")
            self._invalidate(existed=meta is not None)
        self._scan()

    def _invalidate(self, existed: bool) -> None:
        """Delete every part file, then write the new metadata (in this order, so a crash never mixes)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        removed = 0
        for path in self.directory.glob("part-w*.npy"):
            path.unlink(missing_ok=True)
            removed += 1
        if existed:
            log.info("%s: teacher fingerprint, shape or dtype changed: pseudo-label cache invalidated "
                     "(%d part files removed)", self.directory, removed)
        write_text_atomic(self.directory / META_NAME, json.dumps(self._meta(), indent=1))

    @staticmethod
    def _writer_chunk(path: Path) -> tuple[int, int] | None:
        """(writer, chunk) from 'part-w<writer>-<chunk>.npy', or None for another name."""
        try:
            _, writer, chunk = path.stem.split("-")
            return int(writer[1:]), int(chunk)
        except ValueError:
            return None

    def _open_part(self, path: Path, writer: int) -> _Part | None:
        mode = "r+" if writer == self.writer else "r"
        try:
            array = np.load(path, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            array, reason = None, str(error)
        else:
            reason = f"records {array.dtype}{array.shape}, expected {self.record_dtype}({self.chunk_size},)"
            if array.dtype != self.record_dtype or array.ndim != 1:
                array = None
        if array is None:
            self.stats.corrupt += 1
            log.warning("%s: corrupt pseudo-label part file (%s): its entries are recomputed", path, reason)
            if writer == self.writer:
                path.unlink(missing_ok=True)
            return None
        return _Part(path, writer, array)

    def _scan(self) -> None:
        """(Re)index every part file: all of them the first time, other writers' files later."""
        for path in sorted(self.directory.glob("part-w*.npy")):
            parsed = self._writer_chunk(path)
            if parsed is None:
                continue
            writer = parsed[0]
            part = self._parts.get(path)
            if part is None:
                part = self._open_part(path, writer)
                if part is None:
                    continue
                self._parts[path] = part
                if writer == self.writer:
                    self._own.append(path)
            elif writer == self.writer:
                continue  # our own records are indexed as we write them
            keys, valid = np.asarray(part.array["key"]), np.asarray(part.array["valid"])
            for row in np.flatnonzero(valid == 1):
                self._index[keys[row].tobytes()] = (path, int(row))
            if writer == self.writer and path == self._own[-1]:
                used = np.flatnonzero(keys.any(axis=1))  # a row with a key was (being) written
                self._next_row = int(used[-1]) + 1 if used.size else 0
        self._last_scan = time.monotonic()

    def _new_part(self) -> Path:
        chunk = max((self._writer_chunk(p)[1] for p in self._own), default=-1) + 1
        path = self.directory / f"part-w{self.writer:03d}-{chunk:05d}.npy"
        tmp = self.directory / f".{path.name}.{os.getpid()}.tmp"
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.record_dtype, shape=(self.chunk_size,))
        array.flush()
        del array
        os.replace(tmp, path)
        self._parts[path] = _Part(path, self.writer, np.load(path, mmap_mode="r+", allow_pickle=False))
        self._own.append(path)
        self._next_row = 0
        return path

    # ----------------------------------------------------------------------- records
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key_digest(self.fingerprint, key) in self._index

    def _read(self, digest: bytes) -> np.ndarray | None:
        where = self._index.get(digest)
        if where is None:
            return None
        part = self._parts[where[0]]
        row = where[1]
        data = np.array(part.array["data"][row])  # copy: the file may change under a later write
        if part.array["valid"][row] != 1 or part.array["key"][row].tobytes() != digest \
                or int(part.array["crc"][row]) != record_crc(digest, data):
            self.stats.corrupt += 1
            del self._index[digest]
            log.warning("%s row %d: corrupt pseudo-label record (checksum mismatch): recomputed",
                        part.path, row)
            return None
        return data

    def get(self, key: str) -> np.ndarray | None:
        """The stored record (C,H,W) as float32, or None (a miss, also for a corrupt record)."""
        digest = key_digest(self.fingerprint, key)
        data = self._read(digest)
        if data is None and time.monotonic() - self._last_scan > self.refresh_interval_s:
            self._scan()  # other writers may have stored it since
            data = self._read(digest)
        if data is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return data.astype(np.float32)

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        """``get`` for each key."""
        return [self.get(key) for key in keys]

    def put(self, key: str, value: np.ndarray, flush: bool = True) -> None:
        """Store ``value`` (C,H,W) for ``key`` (no-op when read-only); replaces an earlier record."""
        value = np.asarray(value)
        if value.shape != self.record_shape:
            raise ValueError(f"pseudo-label for {key!r}: expected shape {self.record_shape}, got {value.shape}")
        if self.writer is None:
            return
        digest = key_digest(self.fingerprint, key)
        where = self._index.get(digest)
        if where is not None and self._parts[where[0]].writer == self.writer:
            path, row = where  # rewrite our own record in place
        else:
            if not self._own or self._next_row >= self.chunk_size:
                self._new_part()
            path, row = self._own[-1], self._next_row
            self._next_row += 1
        array = self._parts[path].array
        data = value.astype(self.dtype)
        array["valid"][row] = 0
        array["data"][row] = data
        array["crc"][row] = record_crc(digest, data)
        array["key"][row] = np.frombuffer(digest, dtype=np.uint8)
        array["valid"][row] = 1
        if flush:
            array.flush()
        self._index[digest] = (path, row)
        self.stats.writes += 1

    def put_many(self, keys: list[str], values: np.ndarray) -> None:
        """``put`` for each key with values (N,C,H,W); files are flushed once at the end."""
        if len(keys) != len(values):
            raise ValueError(f"put_many: {len(keys)} keys but {len(values)} values")
        for key, value in zip(keys, values):
            self.put(key, value, flush=False)
        self.flush()

    def flush(self) -> None:
        """Write this writer's dirty pages to disk."""
        for path in self._own:
            self._parts[path].array.flush()

    def close(self) -> None:
        """Flush and release the memory maps."""
        if self.writer is not None:
            self.flush()
        self._parts.clear()
        self._index.clear()
        self._own.clear()

    def describe(self) -> str:
        s = self.stats
        return (f"{self.directory}: {len(self)} labels; hits {s.hits}, misses {s.misses}, corrupt {s.corrupt}, "
                f"writes {s.writes}")
