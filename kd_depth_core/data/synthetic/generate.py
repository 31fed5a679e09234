"""Write synthetic sequences and whole dataset roots through the one sequence writer.

Each sequence is its own seeded scene (layout, textures, lighting, path): the seed of sequence i
is derived from (seed, preset, i), so the output does not depend on the number of workers, and
the held-out test sequences are scenes never seen in training. Same arguments -> identical bytes.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from kd_depth_core.data.sequence import (
    MAX_DEPTH_STORABLE,
    CameraModel,
    SequenceWriter,
    write_splits,
)
from kd_depth_core.data.synthetic.presets import DEFAULT_BASELINE, PRESETS, build_scene
from kd_depth_core.data.synthetic.render import Renderer, kitti_like_K, stereo_right_pose
from kd_depth_core.data.synthetic.world import SEMANTIC_CLASSES
from kd_depth_core.utils.atomic import commit_dir, temporary_dir_for, write_text_atomic

GENERATOR_VERSION = 1
FPS = 10.0
_EPOCH_NS = 1_600_000_000 * 10**9


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. ``baseline`` None = the preset's default (street 0.54 m, indoor 0.12 m)."""

    preset: str = "street"
    sequences: int = 20
    frames: int = 100
    width: int = 320
    height: int = 96
    seed: int = 0
    baseline: float | None = None

    def check(self) -> SynthSpec:
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("sequences", "frames", "width", "height"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.frames < 2:
            raise ValueError(f"frames: expected at least 2 per sequence (self-supervision needs neighbours), "
                             f"got {self.frames}")
        if self.baseline is not None and not self.baseline > 0:
            raise ValueError(f"baseline: expected a positive number of metres, got {self.baseline!r}")
        return self

    @property
    def stereo_baseline(self) -> float:
        return DEFAULT_BASELINE[self.preset] if self.baseline is None else float(self.baseline)


@dataclass
class DatasetSummary:
    """What `generate_dataset` wrote."""

    root: Path
    sequences: list[str]
    splits: dict[str, list[str]]
    frames: int
    seconds: float


def sequence_name(preset: str, index: int) -> str:
    return f"{preset}_{index:03d}"


def sequence_rng(seed: int, preset: str, index: int) -> np.random.Generator:
    """The generator of sequence ``index``: independent of worker count and of other sequences."""
    return np.random.default_rng([int(seed), zlib.crc32(preset.encode()), int(index)])


def make_splits(names: list[str]) -> dict[str, list[str]]:
    """Split by sequence: the last ~15 % are test, the ~10 % before them val (at least one each).

    1 sequence: train only; 2 sequences: train + test.
    """
    n = len(names)
    if n == 1:
        return {"train": list(names)}
    if n == 2:
        return {"train": names[:1], "test": names[1:]}
    n_test = max(1, round(0.15 * n))
    n_val = max(1, round(0.10 * n))
    return {"train": names[:n - n_test - n_val], "val": names[n - n_test - n_val:n - n_test],
            "test": names[n - n_test:]}


def generate_sequence(out_dir: str | os.PathLike, spec: SynthSpec, index: int, overwrite: bool = False) -> dict:
    """Render sequence ``index`` of ``spec`` into ``out_dir`` (stereo RGB, depth, semantics, poses).

    Depth is exact along the optical axis (stored as uint16 metres×256 by the writer); sky and any
    point beyond the storable range (255.99 m) are 0 = invalid. Returns the scene info.
    """
    spec.check()
    rng = sequence_rng(spec.seed, spec.preset, index)
    baseline = spec.stereo_baseline
    scene = build_scene(spec.preset, rng, spec.frames, baseline)
    renderer = Renderer(scene.world)
    K = kitti_like_K(spec.width, spec.height)
    camera = CameraModel(spec.width, spec.height, K, baseline=baseline, frame_id="synth_left_optical",
                         right_frame_id="synth_right_optical")
    source = {"kind": "synthetic", "generator": "kd_depth_core.data.synthetic", "generator_version": GENERATOR_VERSION,
              "preset": spec.preset, "seed": int(spec.seed), "index": int(index), "scene": scene.info}
    start_ns = _EPOCH_NS + index * 3600 * 10**9
    with SequenceWriter(out_dir, camera, has_right=True, has_depth=True, has_semantic=True,
                        semantic_classes=list(SEMANTIC_CLASSES), has_poses=True, source=source,
                        overwrite=overwrite) as writer:
        for i, T_left in enumerate(scene.poses):
            left, right = renderer.render([T_left, stereo_right_pose(T_left, baseline)], K, spec.width, spec.height,
                                          exposure=scene.exposure[i])
            depth = np.where(left.depth < MAX_DEPTH_STORABLE, left.depth, np.float32(0))
            writer.add_frame(start_ns + int(round(i * 1e9 / FPS)), left.rgb, right=right.rgb, depth=depth,
                             semantic=left.semantic, pose=T_left)
    return scene.info


def tune_allocator() -> bool:
    """Keep freed memory in this process (glibc): rendering allocates many ~0.25-1 MB temporaries,
    and returning each to the OS costs page faults (measured: about half of the CPU time).
    A process-wide setting, so only call it in processes that render. Returns False where
    unavailable (non-glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False


def _worker_init() -> None:
    cv2.setNumThreads(1)
    tune_allocator()


def _worker(args: tuple[str, SynthSpec, int]) -> tuple[int, float]:
    out_dir, spec, index = args
    t0 = time.perf_counter()
    generate_sequence(out_dir, spec, index)
    return index, time.perf_counter() - t0


def generate_dataset(out_root: str | os.PathLike, spec: SynthSpec, workers: int = 2, overwrite: bool = False,
                     progress: bool = True) -> DatasetSummary:
    """Write a dataset root: ``spec.sequences`` sequences plus ``splits/{train,val,test}.txt`` and
    ``synth.yaml`` (the spec). The root appears atomically; an existing one is replaced only with
    ``overwrite``. ``workers`` processes render sequences in parallel (1 = in this process)."""
    spec.check()
    out_root = Path(out_root)
    if out_root.exists() and not overwrite:
        raise FileExistsError(f"{out_root} already exists (pass --force / overwrite=True to replace it)")
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    t0 = time.perf_counter()
    names = [sequence_name(spec.preset, i) for i in range(spec.sequences)]
    tmp = temporary_dir_for(out_root)
    jobs = [(str(tmp / name), spec, i) for i, name in enumerate(names)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.sequences * spec.frames, unit="frame", desc=f"synth {spec.preset}")
    try:
        if workers == 1 or spec.sequences == 1:
            previous = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for job in jobs:
                    _worker(job)
                    if bar is not None:
                        bar.update(spec.frames)
            finally:
                cv2.setNumThreads(previous)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, spec.sequences), initializer=_worker_init) as pool:
                for _ in pool.imap_unordered(_worker, jobs):
                    if bar is not None:
                        bar.update(spec.frames)
        splits = make_splits(names)
        write_splits(tmp, splits)
        write_text_atomic(tmp / "synth.yaml", yaml.safe_dump(
            {"generator": "kd_depth_core.data.synthetic", "generator_version": GENERATOR_VERSION,
             "spec": asdict(spec), "baseline_m": spec.stereo_baseline, "semantic_classes": list(SEMANTIC_CLASSES)},
            sort_keys=False))
        commit_dir(tmp, out_root, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return DatasetSummary(out_root, names, splits, spec.sequences * spec.frames, time.perf_counter() - t0)
