"""KITTI raw, Eigen test split: images plus ground truth from Velodyne scans or the improved maps.

Folder layout (the official raw-data archives, extracted into one root)::

    <root>/2011_09_26/calib_cam_to_cam.txt
    <root>/2011_09_26/calib_velo_to_cam.txt
    <root>/2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png   (or .jpg)
    <root>/2011_09_26/2011_09_26_drive_0002_sync/velodyne_points/data/0000000069.bin

Improved ground truth (``data_depth_annotated``: uint16 PNG, metres x 256, 0 = invalid) is looked
up, in order, at ``<root>/<date>/<drive>/proj_depth/groundtruth/image_02/<frame>.png`` (Monodepth2's
layout), ``<gt_root>/{train,val}/<drive>/proj_depth/...`` (the archive's) and ``<gt_root>/<drive>/...``.

Split files have one line per image, ``<date>/<drive> <frame> <l|r>`` (Monodepth2's
``splits/eigen/test_files.txt``, 697 lines, and ``splits/eigen_benchmark/test_files.txt``, 652).
They are not shipped (see ``kd_depth_core/resources/splits/README.md``): pass ``split_file``.

Velodyne projection (:func:`project_velodyne`) follows Monodepth2's ``generate_depth_map``, which
reproduces the KITTI devkit: points with x_velo < 0 are dropped; ``P = P_rect_0c · R_rect_00 ·
Tr_velo_to_cam``; ``(u, v) = round(P·X / z) − 1`` with numpy's round (half to even) and the −1
of the devkit's 1-based MATLAB pixels; depth is the third homogeneous coordinate of P·X (z in the
rectified frame plus P_rect[2,3], about 2.7 mm for camera 2); points outside the image are dropped;
where several points land on one pixel the nearest wins; negative depths become 0. (Monodepth2's
duplicate search uses a linear index ``row·(W−1) + col − 1`` that also merges the last column of a
row with the first of the next; here only true duplicates merge. Both columns lie outside the
Garg crop, so scores are identical.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kd_depth_core.data.benchmarks.base import (
    BenchmarkReader,
    Sample,
    first_existing,
    read_rgb,
    read_uint16_depth_png,
)

SPLIT_RESOURCES = {"eigen": "eigen_test_files.txt", "eigen_benchmark": "eigen_benchmark_test_files.txt"}
SPLIT_SIZES = {"eigen": 697, "eigen_benchmark": 652}
SPLIT_HELP = ("The official lists are Monodepth2's splits/eigen/test_files.txt (697 lines) and "
              "splits/eigen_benchmark/test_files.txt (652 lines), "
              "https://github.com/nianticlabs/monodepth2/tree/master/splits; pass the file with "
              "--split-file (split_file=...), or copy it to kd_depth_core/resources/splits/kitti/{resource}.")


# --------------------------------------------------------------------------- calibration and projection
def read_calib_file(path: str | os.PathLike) -> dict[str, Any]:
    """KITTI ``key: values`` calibration file -> {key: float64 array, or the text if not numeric}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: KITTI calibration file missing")
    data: dict[str, Any] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ValueError(f"{path}: line {number}: expected 'key: values', got {line!r}")
        key, value = line.split(":", 1)
        try:
            data[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            data[key.strip()] = value.strip()  # e.g. calib_time
    return data


def _calib_array(calib: dict[str, Any], key: str, size: int, where: str) -> np.ndarray:
    value = calib.get(key)
    if value is None:
        raise ValueError(f"{where}: {key}: missing")
    if not isinstance(value, np.ndarray) or value.size != size:
        raise ValueError(f"{where}: {key}: expected {size} numbers, got {value!r}")
    return value


def velo_to_image_matrix(cam_to_cam: dict[str, Any], velo_to_cam: dict[str, Any], cam: int = 2,
                         where: str = "calibration") -> tuple[np.ndarray, tuple[int, int]]:
    """(P (3,4) mapping homogeneous Velodyne points to camera ``cam``'s rectified image, (H, W)).

    ``P = P_rect_0{cam} · R_rect_00 · [R | T]_velo_to_cam``; (H, W) from ``S_rect_0{cam}``.
    """
    R_rect = np.eye(4)
    R_rect[:3, :3] = _calib_array(cam_to_cam, "R_rect_00", 9, f"{where} calib_cam_to_cam.txt").reshape(3, 3)
    P_rect = _calib_array(cam_to_cam, f"P_rect_0{cam}", 12, f"{where} calib_cam_to_cam.txt").reshape(3, 4)
    size = _calib_array(cam_to_cam, f"S_rect_0{cam}", 2, f"{where} calib_cam_to_cam.txt")
    Tr = np.eye(4)
    Tr[:3, :3] = _calib_array(velo_to_cam, "R", 9, f"{where} calib_velo_to_cam.txt").reshape(3, 3)
    Tr[:3, 3] = _calib_array(velo_to_cam, "T", 3, f"{where} calib_velo_to_cam.txt")
    return P_rect @ R_rect @ Tr, (int(size[1]), int(size[0]))


def load_velodyne_points(path: str | os.PathLike) -> np.ndarray:
    """(N,4) float32 points (x, y, z metres, reflectance) from a KITTI ``.bin`` scan."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise ValueError(f"{path}: expected float32 (x, y, z, reflectance) records, size {raw.size * 4} bytes "
                         f"is not a multiple of 16")
    return raw.reshape(-1, 4)


def project_velodyne(points: np.ndarray, P_velo_to_image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sparse depth map float32 (H,W) metres from Velodyne points (N,>=3); 0 where no point lands.

    Convention of Monodepth2's ``generate_depth_map`` (see the module docstring); nearest point wins.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points: expected (N,3) or (N,4), got shape {points.shape}")
    height, width = shape
    points = points[points[:, 0] >= 0, :3]
    projected = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.asarray(P_velo_to_image).T
    depth_values = projected[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(projected[:, 0] / depth_values) - 1
        v = np.round(projected[:, 1] / depth_values) - 1
        inside = (u >= 0) & (v >= 0) & (u < width) & (v < height)
    depth = np.full((height, width), np.inf)
    np.minimum.at(depth, (v[inside].astype(np.int64), u[inside].astype(np.int64)), depth_values[inside])
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth.astype(np.float32)


# --------------------------------------------------------------------------- split files
def packaged_split_file(split: str) -> Path | None:
    """Path of a split list shipped in kd_depth_core/resources/splits/kitti, or None."""
    resource = resources.files("kd_depth_core") / "resources" / "splits" / "kitti" / SPLIT_RESOURCES[split]
    return Path(str(resource)) if resource.is_file() else None


def resolve_split_file(split: str, split_file: str | os.PathLike | None) -> Path:
    """The user's ``split_file`` if given, else the packaged list; a clear error says where to get it."""
    if split not in SPLIT_RESOURCES:
        raise ValueError(f"split: expected one of {sorted(SPLIT_RESOURCES)}, got {split!r}")
    if split_file is not None:
        path = Path(split_file)
        if not path.is_file():
            raise FileNotFoundError(f"split file {path} does not exist. "
                                    + SPLIT_HELP.format(resource=SPLIT_RESOURCES[split]))
        return path
    packaged = packaged_split_file(split)
    if packaged is None:
        raise FileNotFoundError(f"KITTI {split} split: no split file given and none shipped with kd-depth. "
                                + SPLIT_HELP.format(resource=SPLIT_RESOURCES[split]))
    return packaged


@dataclass(frozen=True)
class KittiEntry:
    """One line of a split file."""

    folder: str  # "<date>/<drive>"
    frame: int
    side: str  # "l" (image_02) or "r" (image_03)

    @property
    def cam(self) -> int:
        return 2 if self.side == "l" else 3

    @property
    def name(self) -> str:
        return f"{self.folder} {self.frame:010d} {self.side}"


def read_split_file(path: str | os.PathLike) -> list[KittiEntry]:
    """Parse ``<date>/<drive> <frame> <l|r>`` lines (errors name the file and line)."""
    path = Path(path)
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("l", "r") or not parts[1].isdigit() or parts[0].count("/") != 1:
            raise ValueError(f"{path}: line {number}: expected '<date>/<drive> <frame> <l|r>' "
                             f"(e.g. '2011_09_26/2011_09_26_drive_0002_sync 0000000069 l'), got {line!r}")
        entries.append(KittiEntry(parts[0], int(parts[1]), parts[2]))
    if not entries:
        raise ValueError(f"{path}: the split file lists no images")
    return entries


# --------------------------------------------------------------------------- reader
@dataclass
class _Item:
    entry: KittiEntry
    image: Path
    velodyne: Path | None
    calib_dir: Path
    improved: Path | None


class KittiEigenReader(BenchmarkReader):
    """KITTI Eigen test split. ``improved_gt=False``: Velodyne projection (697 images); ``True``: the
    improved ground truth maps (652 images, needs ``split_file`` of the eigen_benchmark split)."""

    dataset = "KITTI"

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike | None = None, *,
                 improved_gt: bool = False, gt_root: str | os.PathLike | None = None,
                 limit: int | None = None) -> None:
        super().__init__(root, limit)
        self.split = "eigen_benchmark" if improved_gt else "eigen"
        self.dataset = f"KITTI {self.split}"
        self.expected_size = SPLIT_SIZES[self.split]
        self.improved_gt = improved_gt
        self.gt_root = Path(gt_root) if gt_root is not None else None
        self.split_file = resolve_split_file(self.split, split_file)
        self._calib: dict[tuple[Path, int], tuple[np.ndarray, tuple[int, int], np.ndarray]] = {}
        missing: list[tuple[str, str, Path]] = []
        for entry in read_split_file(self.split_file):
            date = entry.folder.split("/")[0]
            drive_dir = self.root / entry.folder
            stem = f"{entry.frame:010d}"
            image_dir = drive_dir / f"image_0{entry.cam}" / "data"
            image = first_existing([image_dir / f"{stem}.png", image_dir / f"{stem}.jpg"])
            if image is None:
                missing.append((entry.name, "image", image_dir / f"{stem}.png"))
            item = _Item(entry, image or image_dir / f"{stem}.png", None, self.root / date, None)
            if improved_gt:
                candidates = self._improved_candidates(entry)
                item.improved = first_existing(candidates)
                if item.improved is None:
                    missing.append((entry.name, "improved depth", candidates[0]))
            else:
                item.velodyne = drive_dir / "velodyne_points" / "data" / f"{stem}.bin"
                if not item.velodyne.is_file():
                    missing.append((entry.name, "velodyne", item.velodyne))
                for calib in (item.calib_dir / "calib_cam_to_cam.txt", item.calib_dir / "calib_velo_to_cam.txt"):
                    if not calib.is_file() and all(path != calib for _, _, path in missing):
                        missing.append((entry.name, "calibration", calib))
            self.items.append(item)
        self._finish(missing, hint=f"split file: {self.split_file}")

    def _improved_candidates(self, entry: KittiEntry) -> list[Path]:
        drive = entry.folder.split("/")[1]
        relative = Path("proj_depth") / "groundtruth" / f"image_0{entry.cam}" / f"{entry.frame:010d}.png"
        candidates = [self.root / entry.folder / relative]
        for base in [self.gt_root] if self.gt_root is not None else []:
            candidates += [base / "train" / drive / relative, base / "val" / drive / relative, base / drive / relative]
        return candidates

    def _calibration(self, calib_dir: Path, cam: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
        key = (calib_dir, cam)
        if key not in self._calib:
            cam_to_cam = read_calib_file(calib_dir / "calib_cam_to_cam.txt")
            velo_to_cam = read_calib_file(calib_dir / "calib_velo_to_cam.txt")
            P, shape = velo_to_image_matrix(cam_to_cam, velo_to_cam, cam, where=str(calib_dir))
            K = _calib_array(cam_to_cam, f"P_rect_0{cam}", 12, str(calib_dir)).reshape(3, 4)[:, :3].copy()
            self._calib[key] = (P, shape, K)
        return self._calib[key]

    def _name(self, item: _Item) -> str:
        return item.entry.name

    def _load(self, item: _Item) -> Sample:
        image = read_rgb(item.image)
        meta: dict[str, Any] = {"folder": item.entry.folder, "frame": item.entry.frame, "side": item.entry.side,
                                "image_path": str(item.image)}
        if item.improved is not None:
            depth = read_uint16_depth_png(item.improved)
            meta["depth_path"] = str(item.improved)
        else:
            P, shape, K = self._calibration(item.calib_dir, item.entry.cam)
            depth = project_velodyne(load_velodyne_points(item.velodyne), P, shape)
            meta.update(depth_path=str(item.velodyne), K=K)
        return Sample(image, depth, item.entry.name, meta)
