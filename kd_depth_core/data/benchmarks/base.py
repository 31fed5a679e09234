"""Shared parts of the benchmark readers: the sample tuple, the reader base class, file checks.

Every reader reads from a user-supplied root (nothing is downloaded), checks up front that every
file of the split exists (:class:`MissingFilesError` names each missing one with its full path
and the total), and yields :class:`Sample` tuples: image uint8 (H,W,3) RGB, ground-truth depth
float32 (H,W) metres (0 = invalid), a stable name and a ``meta`` dict.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from kd_depth_core.data.sequence import decode_depth_png
from kd_depth_core.utils.quiet_codecs import call_quietly

MAX_LISTED_MISSING = 10


class Sample(NamedTuple):
    """One evaluation sample: ``image`` uint8 (H,W,3) RGB, ``depth`` float32 (H,W) metres (0 = invalid)."""

    image: np.ndarray
    depth: np.ndarray
    name: str
    meta: dict[str, Any]


class MissingFilesError(FileNotFoundError):
    """Files of a benchmark split are missing; the message lists them by name and full path."""

    def __init__(self, dataset: str, root: str | os.PathLike, missing: Sequence[tuple[str, str, Path]],
                 total: int, hint: str = "") -> None:
        self.missing = list(missing)  # (sample name, what, full path)
        affected = len({sample for sample, _, _ in self.missing})
        lines = [f"{dataset}: {len(self.missing)} file(s) of the split are missing under {root} "
                 f"({affected} of {total} samples affected):"]
        lines += [f"  {sample} ({what}): {path}" for sample, what, path in self.missing[:MAX_LISTED_MISSING]]
        if len(self.missing) > MAX_LISTED_MISSING:
            lines.append(f"  ... and {len(self.missing) - MAX_LISTED_MISSING} more")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H,W,3) RGB image; a clear error if the file is missing or not an image."""
    image, said = call_quietly(cv2.imread, str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: missing, unreadable or not an image{f' ({said})' if said else ''}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_uint16_depth_png(path: str | os.PathLike, scale: float = 256.0) -> np.ndarray:
    """float32 metres from a single-channel uint16 PNG of ``metres * scale`` (0 = invalid)."""
    raw, said = call_quietly(cv2.imread, str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"{path}: missing, unreadable or not a PNG{f' ({said})' if said else ''}")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel uint16 depth PNG, got {raw.dtype.name} {raw.shape}")
    if scale == 256.0:
        return decode_depth_png(raw)  # the project's one uint16/256 conversion
    return (raw.astype(np.float64) / scale).astype(np.float32)


def first_existing(candidates: Sequence[Path]) -> Path | None:
    """The first path of ``candidates`` that is a file, else None."""
    return next((p for p in candidates if p.is_file()), None)


class BenchmarkReader:
    """Base class: a list of items checked at construction, loaded lazily by :meth:`load`.

    Subclasses fill ``self.items`` (any per-sample record) and implement ``_name`` and ``_load``.
    ``limit`` keeps only the first N items (quick runs; results are then not the official numbers).
    """

    dataset = "benchmark"
    expected_size: int | None = None

    def __init__(self, root: str | os.PathLike, limit: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.dataset}: data root {self.root} is not a folder")
        self.items: list[Any] = []
        self.limit = limit

    def _finish(self, missing: Sequence[tuple[str, str, Path]], hint: str = "") -> None:
        """Raise for missing files, warn about a non-standard size, then apply ``limit``."""
        if missing:
            raise MissingFilesError(self.dataset, self.root, missing, len(self.items), hint)
        if not self.items:
            raise FileNotFoundError(f"{self.dataset}: no samples found under {self.root}. {hint}".strip())
        if self.expected_size is not None and len(self.items) != self.expected_size:
            warnings.warn(f"{self.dataset}: {len(self.items)} samples, the official test set has "
                          f"{self.expected_size}; results are not comparable with published numbers",
                          stacklevel=3)
        if self.limit is not None:
            self.items = self.items[: max(int(self.limit), 0)]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [self._name(item) for item in self.items]

    def load(self, index: int) -> Sample:
        return self._load(self.items[index])

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self.items)):
            yield self.load(index)

    def _name(self, item: Any) -> str:
        raise NotImplementedError

    def _load(self, item: Any) -> Sample:
        raise NotImplementedError
