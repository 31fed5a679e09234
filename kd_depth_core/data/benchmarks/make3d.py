"""Make3D Test134: images and laser depth grids (metres), as extracted from the official archives::

    <root>/Test134/img-<stem>.jpg
    <root>/Gridlaserdata/depth_sph_corr-<stem>.mat     (or <root>/Test134Depth/Gridlaserdata/...)

The ``.mat`` files hold ``Position3DGrid`` (55x305x4); channel 3 is the depth. Reading them needs
scipy (``scipy.io.loadmat``), which kd-depth does not install. Without scipy, convert once on a
machine that has it and use the ``.npy`` layout, read without scipy::

    <root>/Gridlaserdata/depth_sph_corr-<stem>.npy     float (55,305) metres = Position3DGrid[:, :, 3]

    python -c "import glob, numpy, scipy.io; [numpy.save(f[:-4] + '.npy',
        scipy.io.loadmat(f)['Position3DGrid'][:, :, 3]) for f in glob.glob('Gridlaserdata/*.mat')]"

The image is not cropped here: the protocol's 2:1 centre crop (``protocols.center_crop``) is applied
to the image and the grid by the evaluation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kd_depth_core.data.benchmarks.base import BenchmarkReader, Sample, read_rgb

IMAGE_PREFIX, DEPTH_PREFIX = "img-", "depth_sph_corr-"


def load_make3d_depth(path: str | os.PathLike) -> np.ndarray:
    """float32 (55,305) depth in metres from a ``.npy`` grid or a ``.mat`` with Position3DGrid (scipy)."""
    path = Path(path)
    if path.suffix == ".npy":
        depth = np.load(path, allow_pickle=False)
    else:
        try:
            from scipy.io import loadmat
        except ImportError:
            raise ImportError(f"{path}: reading Make3D .mat files needs scipy (pip install scipy), which "
                              f"kd-depth does not install; or convert the grids to .npy as described in "
                              f"kd_depth_core/data/benchmarks/make3d.py") from None
        content = loadmat(str(path))
        if "Position3DGrid" not in content:
            raise ValueError(f"{path}: no Position3DGrid variable (keys: {sorted(k for k in content if k[0] != '_')})")
        grid = np.asarray(content["Position3DGrid"])
        if grid.ndim != 3 or grid.shape[2] < 4:
            raise ValueError(f"{path}: Position3DGrid: expected shape (H,W,4), got {grid.shape}")
        depth = grid[:, :, 3]
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D depth grid, got shape {depth.shape}")
    return depth


class Make3DReader(BenchmarkReader):
    """Make3D Test134 (134 images); names are the ``<stem>`` shared by image and depth files."""

    dataset = "Make3D"
    expected_size = 134

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike | None = None, *,
                 limit: int | None = None) -> None:
        super().__init__(root, limit)
        image_dir = self.root / "Test134"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"Make3D: {image_dir} is not a folder (expected Test134/img-<stem>.jpg)")
        depth_dirs = [self.root / "Gridlaserdata", self.root / "Test134Depth" / "Gridlaserdata"]
        depth_dir = next((d for d in depth_dirs if d.is_dir()), depth_dirs[0])
        if split_file is not None:
            lines = Path(split_file).read_text().split()
            stems = [Path(line).stem.removeprefix(IMAGE_PREFIX) for line in lines]
        else:
            stems = sorted(p.stem[len(IMAGE_PREFIX):] for p in image_dir.glob(f"{IMAGE_PREFIX}*.jpg"))
        missing: list[tuple[str, str, Path]] = []
        for stem in stems:
            image = image_dir / f"{IMAGE_PREFIX}{stem}.jpg"
            if not image.is_file():
                missing.append((stem, "image", image))
            candidates = [depth_dir / f"{DEPTH_PREFIX}{stem}.npy", depth_dir / f"{DEPTH_PREFIX}{stem}.mat"]
            depth = next((p for p in candidates if p.is_file()), None)
            if depth is None:
                missing.append((stem, "depth", candidates[1]))
            self.items.append((stem, image, depth))
        self._finish(missing, hint="depth grids: Gridlaserdata/depth_sph_corr-<stem>.mat (scipy) or .npy")

    def _name(self, item: tuple[str, Path, Path]) -> str:
        return item[0]

    def _load(self, item: tuple[str, Path, Path]) -> Sample:
        stem, image_path, depth_path = item
        return Sample(read_rgb(image_path), load_make3d_depth(depth_path), stem,
                      {"image_path": str(image_path), "depth_path": str(depth_path)})
