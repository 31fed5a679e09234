"""Readers for public depth benchmarks (KITTI, NYUv2, Make3D, DrivingStereo) and our own sequences.

All read from a user-supplied root (nothing is downloaded) and yield
:class:`~kd_depth_core.data.benchmarks.base.Sample` (image uint8 RGB, depth float32 metres, name, meta).
``open_benchmark(protocol_name, root, ...)`` picks the reader that matches an evaluation protocol.
"""
from __future__ import annotations

import os

from kd_depth_core.data.benchmarks.base import BenchmarkReader, MissingFilesError, Sample

__all__ = ["BenchmarkReader", "MissingFilesError", "Sample", "open_benchmark", "BENCHMARK_PROTOCOLS"]

BENCHMARK_PROTOCOLS = ("kitti_eigen", "kitti_eigen_benchmark", "nyu", "make3d", "drivingstereo", "sequence")


def open_benchmark(protocol: str, root: str | os.PathLike, *, split: str | None = None,
                   split_file: str | os.PathLike | None = None, gt_root: str | os.PathLike | None = None,
                   stride: int = 1, limit: int | None = None, right: bool = False) -> BenchmarkReader:
    """The reader for ``protocol`` over ``root``.

    ``split``: NYU / DrivingStereo / sequence split name (default "test"); ``split_file``: KITTI list
    (or a Make3D image list); ``gt_root``: KITTI improved-ground-truth archive root; ``stride``:
    every n-th frame of our sequences; ``limit``: the first N samples only; ``right``: also give each
    sample's right image as ``meta['right']`` (for stereo models; our sequences only).
    """
    if right and protocol != "sequence":
        raise ValueError(f"protocol {protocol!r}: stereo models are evaluated on kd-depth sequences only "
                         "(--protocol sequence), which store the right image next to the left")
    if protocol in ("kitti_eigen", "kitti_eigen_benchmark"):
        from kd_depth_core.data.benchmarks.kitti import KittiEigenReader

        return KittiEigenReader(root, split_file, improved_gt=protocol == "kitti_eigen_benchmark",
                                gt_root=gt_root, limit=limit)
    if protocol == "nyu":
        from kd_depth_core.data.benchmarks.nyu import NYUv2Reader

        return NYUv2Reader(root, split or "test", limit=limit)
    if protocol == "make3d":
        from kd_depth_core.data.benchmarks.make3d import Make3DReader

        return Make3DReader(root, split_file, limit=limit)
    if protocol == "drivingstereo":
        from kd_depth_core.data.benchmarks.drivingstereo import DrivingStereoReader

        return DrivingStereoReader(root, split or "test", limit=limit)
    if protocol == "sequence":
        from kd_depth_core.data.benchmarks.sequences import SequenceBenchmarkReader

        return SequenceBenchmarkReader(root, split or "test", stride=stride, limit=limit, right=right)
    raise ValueError(f"protocol: no benchmark reader for {protocol!r}; choose from {BENCHMARK_PROTOCOLS}")
