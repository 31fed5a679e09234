"""Per-frame cache of SGBM proxy disparities, shared by DataLoader workers and DDP ranks.

One file per frame: ``<cache_dir>/<sequence>/<index:06d>-<key>.npy``, float16 disparity (H,W) in
pixels at the training resolution, 0 = not confident (``<index:06d>m-<key>.npy`` for the frame's mirrored
view: the flipped right image as the left of a pair, the dataset's ``flip`` augmentation). ``key`` digests everything the proxy
depends on: the SGBM settings, the training size, the rig, and the size and modification time of
the left and right image files, so a changed setting or a touched image misses (and the stale
file of that frame is replaced). A file is written under a temporary name and renamed into place,
so concurrent writers of the same entry (workers, ranks) leave one complete file, and a reader
never sees a half-written one. Hits are memory-mapped (``np.load(mmap_mode='r')``).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from kd_depth_core.classical.sgbm import SGBMSettings, sgbm_disparity
from kd_depth_core.utils.atomic import current_umask


class ProxySource:
    """Computes (or reads back) the SGBM proxy of a dataset frame. Picklable (DataLoader workers).

    Args:
        settings: the matcher's settings.
        cache_dir: folder of the cache; "" = compute every time (no cache).
    """

    def __init__(self, settings: SGBMSettings | None = None, cache_dir: str | os.PathLike = "") -> None:
        self.settings = settings or SGBMSettings()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.computed = 0  # SGBM runs in this process (tests, stats)
        self.hits = 0

    def key(self, left_path: Path, right_path: Path, size: tuple[int, int], fx: float, baseline: float,
            mirrored: bool = False) -> str:
        stats = [(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (left_path, right_path)]
        text = f"{self.settings.fingerprint()}|{size}|{fx:.6f}|{baseline:.6f}|{stats}" + ("|mirrored" if mirrored else "")
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def path(self, sequence: str, index: int, key: str, mirrored: bool = False) -> Path | None:
        name = f"{index:06d}{'m' if mirrored else ''}-{key}.npy"
        return None if self.cache_dir is None else self.cache_dir / sequence / name

    def get(self, sequence: str, index: int, left: np.ndarray, right: np.ndarray, left_path: Path,
            right_path: Path, fx: float, baseline: float, mirrored: bool = False) -> np.ndarray:
        """Proxy disparity (H,W) float32 px for the (already resized, unaugmented) uint8 pair.

        mirrored: the pair is the frame's mirrored view (``left`` = the flipped right image, ``right`` = the
        flipped left image; `left_path` / `right_path` stay the frame's files): cached as its own entry.
        """
        size = left.shape[:2]
        path = None
        if self.cache_dir is not None:
            path = self.path(sequence, index, self.key(left_path, right_path, size, fx, baseline, mirrored),
                             mirrored)
            try:
                stored = np.load(path, mmap_mode="r")
                if stored.shape == size:
                    self.hits += 1
                    return np.asarray(stored, dtype=np.float32)
            except (OSError, ValueError):
                pass  # missing, stale or unreadable: recompute
        disparity, _ = sgbm_disparity(left, right, self.settings, fx=fx, baseline=baseline)
        self.computed += 1
        if path is not None:
            self._store(path, disparity.astype(np.float16))
        return disparity.astype(np.float16).astype(np.float32)  # the rounding a later hit sees

    @staticmethod
    def _store(path: Path, data: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(path.name.split("-")[0] + "-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, data)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def resize_pair(left: np.ndarray, right: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Resize a pair to (H, W) with area interpolation (as the dataset does)."""
    if size is None or left.shape[:2] == tuple(size):
        return left, right
    return tuple(cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in (left, right))
