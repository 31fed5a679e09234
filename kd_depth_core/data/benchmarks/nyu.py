"""NYU Depth v2 test set (654 images, 480x640) from an extracted folder.

Two folder layouts are read (the labelled ``nyu_depth_v2_labeled.mat`` is an HDF5 file that would
need h5py, which kd-depth does not install: extract it to one of these layouts first)::

    # 1. "official_splits" layout (as used by BTS / AdaBins / NeWCRFs and many others)
    <root>/[official_splits/]test/<scene>/rgb_00045.jpg
    <root>/[official_splits/]test/<scene>/sync_depth_00045.png     uint16 millimetres
    # 2. flat layout
    <root>/rgb/<name>.png|.jpg
    <root>/depth/<name>.png (uint16 millimetres) or <name>.npy (float metres)

Depth 0 is invalid. ``depth_scale`` (default 1000) converts PNG values to metres.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kd_depth_core.data.benchmarks.base import BenchmarkReader, Sample, read_rgb, read_uint16_depth_png

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
LAYOUT_HELP = ("expected <root>/[official_splits/]test/<scene>/rgb_XXXXX.jpg + sync_depth_XXXXX.png, or "
               "<root>/rgb/<name>.png|jpg + <root>/depth/<name>.png|npy (see kd_depth_core/data/benchmarks/nyu.py)")


class NYUv2Reader(BenchmarkReader):
    """NYUv2 test images with their depth (metres)."""

    dataset = "NYUv2"
    expected_size = 654

    def __init__(self, root: str | os.PathLike, split: str = "test", *, depth_scale: float = 1000.0,
                 limit: int | None = None) -> None:
        super().__init__(root, limit)
        self.depth_scale = float(depth_scale)
        missing: list[tuple[str, str, Path]] = []
        split_dir = next((d for d in (self.root / "official_splits" / split, self.root / split) if d.is_dir()), None)
        if (self.root / "rgb").is_dir():
            self.layout = "flat"
            for image in sorted(p for p in (self.root / "rgb").iterdir() if p.suffix.lower() in IMAGE_EXTS):
                depth_dir = self.root / "depth"
                depth = next((p for p in (depth_dir / f"{image.stem}.png", depth_dir / f"{image.stem}.npy")
                              if p.is_file()), None)
                if depth is None:
                    missing.append((image.stem, "depth", depth_dir / f"{image.stem}.png"))
                self.items.append((image.stem, image, depth))
        elif split_dir is not None:
            self.layout = "official_splits"
            for image in sorted(split_dir.glob("*/rgb_*")):
                if image.suffix.lower() not in IMAGE_EXTS:
                    continue
                index = image.stem[len("rgb_"):]
                depth = image.parent / f"sync_depth_{index}.png"
                name = f"{image.parent.name}/{index}"
                if not depth.is_file():
                    missing.append((name, "depth", depth))
                self.items.append((name, image, depth))
        else:
            raise FileNotFoundError(f"NYUv2: {self.root} has neither rgb/ nor [official_splits/]{split}/; "
                                    + LAYOUT_HELP)
        self._finish(missing, hint=LAYOUT_HELP)

    def _name(self, item: tuple[str, Path, Path]) -> str:
        return item[0]

    def _load(self, item: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = item
        image = read_rgb(image_path)
        if depth_path.suffix == ".npy":
            depth = np.load(depth_path, allow_pickle=False).astype(np.float32)
        else:
            depth = read_uint16_depth_png(depth_path, scale=self.depth_scale)
        if depth.shape != image.shape[:2]:
            raise ValueError(f"{depth_path}: depth size {depth.shape} differs from image {image_path} "
                             f"size {image.shape[:2]}")
        return Sample(image, depth, name, {"image_path": str(image_path), "depth_path": str(depth_path)})
