"""DrivingStereo: left images with projected LiDAR depth (uint16 PNG, metres x 256, 0 = invalid).

Folder layouts of the official archives::

    # split "test" or "train"
    <root>/test-left-image/[<sequence>/]<stem>.jpg
    <root>/test-depth-map/[<sequence>/]<stem>.png         (also accepted: test-depth-maps/)
    # split "sunny", "cloudy", "foggy" or "rainy" (the "different weathers" subsets)
    <root>/<weather>/left-image-full-size/<stem>.jpg
    <root>/<weather>/depth-map-full-size/<stem>.png

Each left image needs a depth map with the same relative path and stem.
"""
from __future__ import annotations

import os
from pathlib import Path

from kd_depth_core.data.benchmarks.base import BenchmarkReader, Sample, read_rgb, read_uint16_depth_png

WEATHER_SPLITS = ("sunny", "cloudy", "foggy", "rainy")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def split_folders(root: Path, split: str) -> tuple[Path, list[Path]]:
    """(left image folder, candidate depth folders) of ``split``."""
    if split in WEATHER_SPLITS:
        return root / split / "left-image-full-size", [root / split / "depth-map-full-size"]
    return root / f"{split}-left-image", [root / f"{split}-depth-map", root / f"{split}-depth-maps"]


class DrivingStereoReader(BenchmarkReader):
    """DrivingStereo ``split`` ("test", "train" or a weather subset); names are relative image paths."""

    dataset = "DrivingStereo"

    def __init__(self, root: str | os.PathLike, split: str = "test", *, limit: int | None = None) -> None:
        super().__init__(root, limit)
        self.dataset = f"DrivingStereo {split}"
        image_dir, depth_dirs = split_folders(self.root, split)
        if not image_dir.is_dir():
            raise FileNotFoundError(f"DrivingStereo: {image_dir} is not a folder (split {split!r}; splits: test, "
                                    f"train, {', '.join(WEATHER_SPLITS)}; layout: see "
                                    f"kd_depth_core/data/benchmarks/drivingstereo.py)")
        depth_dir = next((d for d in depth_dirs if d.is_dir()), depth_dirs[0])
        missing: list[tuple[str, str, Path]] = []
        for image in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
            relative = image.relative_to(image_dir).with_suffix("")
            depth = depth_dir / relative.with_suffix(".png")
            if not depth.is_file():
                missing.append((relative.as_posix(), "depth", depth))
            self.items.append((relative.as_posix(), image, depth))
        self._finish(missing)

    def _name(self, item: tuple[str, Path, Path]) -> str:
        return item[0]

    def _load(self, item: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = item
        image, depth = read_rgb(image_path), read_uint16_depth_png(depth_path)
        if depth.shape != image.shape[:2]:
            raise ValueError(f"{depth_path}: depth size {depth.shape} differs from image {image_path} "
                             f"size {image.shape[:2]}")
        return Sample(image, depth, name, {"image_path": str(image_path), "depth_path": str(depth_path)})
