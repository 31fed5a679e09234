"""Training sequences on disk: writer, reader, validator and split files.

One folder per sequence (specification: docs/dataset_format.md, format version 1)::

    <name>/meta.yaml        camera, what the sequence holds, where it came from
    <name>/frames.csv       index,stamp_ns — one row per frame, index 0..N-1, stamps increasing
    <name>/poses.txt        optional: N rows of 12 numbers (T_world_camera, row-major 3x4)
    <name>/left/000000.png  RGB images (png or jpg)
    <name>/right/...        optional stereo partner, same stem
    <name>/depth/...        optional uint16 PNG, metres x 256, 0 = invalid (KITTI convention)
    <name>/semantic/...     optional uint8 PNG class ids (names in meta.yaml), 255 = ignore

A dataset root is a folder of sequences plus ``splits/{train,val,test}.txt`` (sequence names).
The writer fills a hidden temporary folder and renames it when complete, so an interrupted
write never leaves anything that loads as a sequence.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from kd_depth_core.utils.atomic import commit_dir, temporary_dir_for, write_text_atomic
from kd_depth_core.utils.quiet_codecs import call_quietly

FORMAT_VERSION = 1
DEPTH_SCALE = 256.0  # uint16 depth PNG value = metres * 256
MAX_DEPTH_STORABLE = 65535 / DEPTH_SCALE
IMAGE_FORMATS = ("png", "jpg")
SPLIT_NAMES = ("train", "val", "test")
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless either way; level 1 encodes ~3x faster than 3
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


class SequenceError(ValueError):
    """A sequence on disk is missing, malformed or inconsistent; the message names the file and field."""


@dataclass
class CameraModel:
    """Pinhole camera of the left image. K in pixels at (width, height); baseline in metres."""

    width: int
    height: int
    K: np.ndarray
    distortion: list[float] = field(default_factory=list)
    distortion_model: str = "plumb_bob"
    rectified: bool = True
    frame_id: str = "camera_optical_frame"
    baseline: float | None = None
    right_frame_id: str | None = None

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        if self.K.shape != (3, 3):
            raise SequenceError(f"camera.K: expected a 3x3 matrix, got shape {self.K.shape}")
        self.width, self.height = int(self.width), int(self.height)
        self.distortion = [float(v) for v in self.distortion]

    def scaled(self, width: int, height: int) -> CameraModel:
        """The same camera resampled to (width, height): fx, cx scale by x; fy, cy by y."""
        from kd_depth_core.geometry import scale_intrinsics  # lazy: geometry imports torch, this module does not

        K = scale_intrinsics(self.K, width / self.width, height / self.height)
        return CameraModel(width, height, K, list(self.distortion), self.distortion_model, self.rectified,
                           self.frame_id, self.baseline, self.right_frame_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width, "height": self.height, "K": self.K.tolist(),
            "distortion": list(self.distortion), "distortion_model": self.distortion_model,
            "rectified": bool(self.rectified), "frame_id": self.frame_id,
            "baseline": None if self.baseline is None else float(self.baseline),
            "right_frame_id": self.right_frame_id,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "camera") -> CameraModel:
        if not isinstance(data, dict):
            raise SequenceError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = {"width", "height", "K", "distortion", "distortion_model", "rectified", "frame_id", "baseline",
                 "right_frame_id"}
        unknown = set(data) - known
        if unknown:
            raise SequenceError(f"{where}: unknown field(s) {sorted(unknown)}; valid fields: {sorted(known)}")
        for key in ("width", "height", "K"):
            if key not in data:
                raise SequenceError(f"{where}.{key}: missing")
        for key in ("width", "height"):
            if not isinstance(data[key], int) or data[key] <= 0:
                raise SequenceError(f"{where}.{key}: expected a positive integer, got {data[key]!r}")
        try:
            K = np.asarray(data["K"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise SequenceError(f"{where}.K: expected a 3x3 list of numbers ({exc})") from None
        if K.shape != (3, 3):
            raise SequenceError(f"{where}.K: expected a 3x3 matrix, got shape {K.shape}")
        if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise SequenceError(f"{where}.K: expected finite values with positive fx and fy, got {K.tolist()}")
        baseline = data.get("baseline")
        if baseline is not None and (not isinstance(baseline, (int, float)) or baseline <= 0):
            raise SequenceError(f"{where}.baseline: expected a positive number of metres or null, got {baseline!r}")
        return cls(
            width=data["width"], height=data["height"], K=K,
            distortion=list(data.get("distortion") or []),
            distortion_model=str(data.get("distortion_model", "plumb_bob")),
            rectified=bool(data.get("rectified", True)),
            frame_id=str(data.get("frame_id", "camera_optical_frame")),
            baseline=None if baseline is None else float(baseline),
            right_frame_id=data.get("right_frame_id"),
        )


def encode_depth_png(depth: np.ndarray) -> np.ndarray:
    """Metres (float, 0/NaN/inf = invalid) -> uint16 metres*256 (0 = invalid; clipped at 255.99 m)."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape, dtype=np.uint16)
    out[valid] = np.clip(np.round(depth[valid] * DEPTH_SCALE), 1, 65535).astype(np.uint16)
    return out


def decode_depth_png(raw: np.ndarray) -> np.ndarray:
    """uint16 metres*256 -> float32 metres (0 = invalid)."""
    return raw.astype(np.float32) / np.float32(DEPTH_SCALE)


def encoded_format(data: bytes | bytearray | memoryview | np.ndarray) -> str | None:
    """The sequence image format of an encoded image by its signature: 'jpg', 'png' or None."""
    head = bytes(memoryview(data)[:8])
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def _stem(index: int) -> str:
    return f"{index:06d}"


class SequenceWriter:
    """Write one sequence. Use as a context manager; the folder appears only when complete.

    ``add_frame`` takes left RGB uint8 (H,W,3); optional right RGB, depth float32 metres (H,W),
    semantic uint8 (H,W) and pose T_world_camera (4,4). Stamps (ns) must increase. Left and right
    may instead be the bytes of an image already encoded in ``image_format`` (a camera's jpeg or
    png): they are stored as they are, without decoding (the caller checks their size).
    ``workers`` threads encode images in the background (OpenCV releases the GIL); 0 encodes
    in the caller's thread. Encoding errors surface at the next ``add_frame`` or at ``close``.
    """

    def __init__(self, out_dir: str | os.PathLike, camera: CameraModel, *, has_right: bool = False,
                 has_depth: bool = False, has_semantic: bool = False, semantic_classes: list[str] | None = None,
                 has_poses: bool = False, source: dict | None = None, image_format: str = "png",
                 overwrite: bool = False, workers: int | None = None) -> None:
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format: expected one of {IMAGE_FORMATS}, got {image_format!r}")
        if has_right and camera.baseline is None:
            raise ValueError("camera.baseline: a stereo sequence (has_right=True) needs the baseline in metres")
        if has_semantic and not semantic_classes:
            raise ValueError("semantic_classes: a sequence with semantic labels needs the class names")
        self.final = Path(out_dir)
        if self.final.exists() and not overwrite:
            raise FileExistsError(f"{self.final} already exists (use --force / overwrite=True to replace it)")
        self.camera = camera
        self.has_right, self.has_depth, self.has_semantic, self.has_poses = has_right, has_depth, has_semantic, has_poses
        self.semantic_classes = list(semantic_classes or [])
        self.source = dict(source or {})
        self.image_format = image_format
        self.overwrite = overwrite
        self._tmp = temporary_dir_for(self.final)
        for sub in ["left"] + ["right"] * has_right + ["depth"] * has_depth + ["semantic"] * has_semantic:
            (self._tmp / sub).mkdir()
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []
        self._closed = False
        workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="seq-writer") if workers > 0 else None
        self._pending: list[Future] = []

    def __len__(self) -> int:
        return len(self._stamps)

    def _camera_image(self, name: str, image) -> np.ndarray | bytes:
        """A left/right image: an RGB array (checked) or encoded bytes (format checked)."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self._check_encoded(name, image)
        return self._check_image(name, image, 3, np.uint8)

    def _check_image(self, name: str, image: np.ndarray | None, channels: int | None, dtype: type) -> np.ndarray:
        if image is None:
            raise ValueError(f"{name}: this sequence was opened with {name} enabled; every frame needs one")
        image = np.asarray(image)
        shape = (self.camera.height, self.camera.width) + ((channels,) if channels else ())
        if image.shape != shape or image.dtype != dtype:
            raise ValueError(f"{name}: expected {np.dtype(dtype).name} array of shape {shape}, "
                             f"got {image.dtype.name} {image.shape}")
        return image

    @staticmethod
    def _encode(path: Path, image: np.ndarray) -> None:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        params = PNG_PARAMS if path.suffix == ".png" else JPEG_PARAMS
        if not cv2.imwrite(str(path), image, params):
            raise OSError(f"could not write {path}")

    @staticmethod
    def _store(path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def _check_encoded(self, name: str, data: bytes | bytearray | memoryview | np.ndarray) -> bytes:
        found = encoded_format(data)
        if found != self.image_format:
            raise ValueError(f"{name}: encoded bytes are {found or 'not a jpeg or png image'}; this sequence stores "
                             f"{self.image_format} (decode the image and pass the array instead)")
        return bytes(memoryview(data))

    def _write_image(self, sub: str, index: int, image: np.ndarray | bytes, ext: str) -> None:
        path = self._tmp / sub / f"{_stem(index)}.{ext}"
        job = (self._store, path, image) if isinstance(image, bytes) else (self._encode, path, image)
        if self._pool is None:
            job[0](*job[1:])
        else:
            # The caller may reuse its buffer: the pool gets its own copy.
            data = image if isinstance(image, bytes) else np.array(image, copy=True)
            self._pending.append(self._pool.submit(job[0], path, data))

    def _drain(self, wait: bool) -> None:
        """Re-raise the first failed background write; with ``wait``, wait for all of them."""
        still = []
        for future in self._pending:
            if wait or future.done():
                future.result()
            else:
                still.append(future)
        self._pending = still

    def add_frame(self, stamp_ns: int, left: np.ndarray, right: np.ndarray | None = None,
                  depth: np.ndarray | None = None, semantic: np.ndarray | None = None,
                  pose: np.ndarray | None = None) -> int:
        """Append a frame; returns its index."""
        if self._closed:
            raise RuntimeError("SequenceWriter is closed")
        stamp_ns = int(stamp_ns)
        if self._stamps and stamp_ns <= self._stamps[-1]:
            raise ValueError(f"stamp_ns: stamps must increase, got {stamp_ns} after {self._stamps[-1]}")
        self._drain(wait=len(self._pending) > 64)  # bounded memory: at most ~64 frames in flight
        index = len(self._stamps)
        self._write_image("left", index, self._camera_image("left", left), self.image_format)
        if self.has_right:
            self._write_image("right", index, self._camera_image("right", right), self.image_format)
        if self.has_depth:
            if depth is None:
                raise ValueError("depth: this sequence was opened with depth enabled; every frame needs one")
            depth = np.asarray(depth)
            if depth.shape != (self.camera.height, self.camera.width):
                raise ValueError(f"depth: expected shape {(self.camera.height, self.camera.width)}, got {depth.shape}")
            self._write_image("depth", index, encode_depth_png(depth), "png")
        if self.has_semantic:
            self._write_image("semantic", index, self._check_image("semantic", semantic, None, np.uint8), "png")
        if self.has_poses:
            pose = np.asarray(pose if pose is not None else np.full((4, 4), np.nan), dtype=np.float64)
            if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
                raise ValueError(f"pose: expected a finite 4x4 T_world_camera, got {pose.shape}")
            self._poses.append(pose)
        self._stamps.append(stamp_ns)
        return index

    def meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "num_frames": len(self._stamps),
            "camera": self.camera.to_dict(),
            "image_format": self.image_format,
            "has_right": self.has_right,
            "has_depth": self.has_depth,
            "has_semantic": self.has_semantic,
            "has_poses": self.has_poses,
            "depth_scale": DEPTH_SCALE,
            "semantic_classes": self.semantic_classes,
            "source": self.source,
        }

    def close(self) -> Path:
        """Write the index and metadata, then rename the folder into place. Returns the final path."""
        if self._closed:
            return self.final
        if not self._stamps:
            self.abort()
            raise ValueError(f"{self.final}: no frames were added; nothing written")
        try:
            self._drain(wait=True)
        except BaseException:
            self.abort()
            raise
        self._shutdown_pool()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["index", "stamp_ns"])
        writer.writerows([i, s] for i, s in enumerate(self._stamps))
        write_text_atomic(self._tmp / "frames.csv", buf.getvalue())
        if self.has_poses:
            rows = [" ".join(f"{v:.9g}" for v in p[:3, :].reshape(-1)) for p in self._poses]
            write_text_atomic(self._tmp / "poses.txt", "\n".join(rows) + "\n")
        # meta.yaml last: its presence marks the content complete.
        write_text_atomic(self._tmp / "meta.yaml", yaml.safe_dump(self.meta(), sort_keys=False))
        commit_dir(self._tmp, self.final, overwrite=self.overwrite)
        self._closed = True
        return self.final

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Discard everything written so far."""
        self._closed = True
        self._shutdown_pool()
        self._pending = []
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SequenceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.yaml"
    if not path.is_dir():
        raise SequenceError(f"{path}: not a folder (expected a training sequence)")
    if not meta_path.is_file():
        raise SequenceError(f"{meta_path}: missing (is {path} a complete training sequence?)")
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except yaml.YAMLError as exc:
        raise SequenceError(f"{meta_path}: not valid YAML ({exc})") from None
    if not isinstance(meta, dict):
        raise SequenceError(f"{meta_path}: expected a mapping at the top level")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise SequenceError(f"{meta_path}: format_version: expected {FORMAT_VERSION}, got {version!r}")
    for key in ("num_frames", "camera", "image_format"):
        if key not in meta:
            raise SequenceError(f"{meta_path}: {key}: missing")
    if meta["image_format"] not in IMAGE_FORMATS:
        raise SequenceError(f"{meta_path}: image_format: expected one of {IMAGE_FORMATS}, got {meta['image_format']!r}")
    if not isinstance(meta["num_frames"], int) or meta["num_frames"] <= 0:
        raise SequenceError(f"{meta_path}: num_frames: expected a positive integer, got {meta['num_frames']!r}")
    return meta


def _read_index(path: Path, num_frames: int) -> np.ndarray:
    index_path = path / "frames.csv"
    if not index_path.is_file():
        raise SequenceError(f"{index_path}: missing")
    with index_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != ["index", "stamp_ns"]:
        raise SequenceError(f"{index_path}: header: expected 'index,stamp_ns', got {','.join(rows[0]) if rows else ''!r}")
    stamps = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            index, stamp = int(row[0]), int(row[1])
        except (ValueError, IndexError):
            raise SequenceError(f"{index_path}: line {line}: expected two integers 'index,stamp_ns', got {row}") from None
        if index != len(stamps):
            raise SequenceError(f"{index_path}: line {line}: index: expected {len(stamps)} (frames must be 0..N-1 "
                                f"with no gap), got {index}")
        if stamps and stamp <= stamps[-1]:
            raise SequenceError(f"{index_path}: line {line}: stamp_ns: stamps must increase, "
                                f"got {stamp} after {stamps[-1]}")
        stamps.append(stamp)
    if len(stamps) != num_frames:
        raise SequenceError(f"{index_path}: expected {num_frames} frames (meta.yaml num_frames), got {len(stamps)}")
    return np.asarray(stamps, dtype=np.int64)


def _read_poses(path: Path, num_frames: int) -> np.ndarray:
    poses_path = path / "poses.txt"
    if not poses_path.is_file():
        raise SequenceError(f"{poses_path}: missing (meta.yaml has_poses is true)")
    try:
        values = np.loadtxt(poses_path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise SequenceError(f"{poses_path}: not a table of numbers ({exc})") from None
    if values.shape != (num_frames, 12):
        raise SequenceError(f"{poses_path}: expected {num_frames} rows of 12 numbers, got shape {values.shape}")
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, :3, :] = values.reshape(num_frames, 3, 4)
    return poses


class Sequence:
    """Read a training sequence; opening checks metadata and the frame index (errors name file and field)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        self.name = self.path.name
        self.camera = CameraModel.from_dict(self.meta["camera"], where=f"{self.path / 'meta.yaml'}: camera")
        self.image_format = self.meta["image_format"]
        self.has_right = bool(self.meta.get("has_right", False))
        self.has_depth = bool(self.meta.get("has_depth", False))
        self.has_semantic = bool(self.meta.get("has_semantic", False))
        self.semantic_classes = list(self.meta.get("semantic_classes") or [])
        if self.has_right and self.camera.baseline is None:
            raise SequenceError(f"{self.path / 'meta.yaml'}: camera.baseline: missing for a stereo sequence")
        self.stamps_ns = _read_index(self.path, self.meta["num_frames"])
        self.poses = _read_poses(self.path, len(self.stamps_ns)) if self.meta.get("has_poses") else None

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def __repr__(self) -> str:
        return f"Sequence({str(self.path)!r}, frames={len(self)}, {self.camera.width}x{self.camera.height})"

    def frame_path(self, sub: str, index: int) -> Path:
        ext = self.image_format if sub in ("left", "right") else "png"
        return self.path / sub / f"{_stem(index)}.{ext}"

    def _load(self, sub: str, index: int, flags: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} out of range 0..{len(self) - 1}")
        path = self.frame_path(sub, index)
        if not path.is_file():
            raise SequenceError(f"{path}: missing")
        image, said = call_quietly(cv2.imread, str(path), flags)
        if image is None:
            raise SequenceError(f"{path}: unreadable or truncated image file{f' ({said})' if said else ''}")
        expected = (self.camera.height, self.camera.width)
        if image.shape[:2] != expected:
            raise SequenceError(f"{path}: size {image.shape[1]}x{image.shape[0]} does not match camera "
                                f"{expected[1]}x{expected[0]}")
        return image

    def load_left(self, index: int) -> np.ndarray:
        """Left image, uint8 (H,W,3) RGB."""
        return cv2.cvtColor(self._load("left", index, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def load_right(self, index: int) -> np.ndarray:
        """Right image, uint8 (H,W,3) RGB."""
        if not self.has_right:
            raise SequenceError(f"{self.path}: has no right images (meta.yaml has_right is false)")
        return cv2.cvtColor(self._load("right", index, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def load_depth(self, index: int) -> np.ndarray:
        """Ground-truth depth, float32 (H,W) metres, 0 = invalid."""
        if not self.has_depth:
            raise SequenceError(f"{self.path}: has no depth (meta.yaml has_depth is false)")
        raw = self._load("depth", index, cv2.IMREAD_UNCHANGED)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise SequenceError(f"{self.frame_path('depth', index)}: expected a single-channel uint16 PNG")
        return decode_depth_png(raw)

    def load_semantic(self, index: int) -> np.ndarray:
        """Semantic class ids, uint8 (H,W); 255 = ignore."""
        if not self.has_semantic:
            raise SequenceError(f"{self.path}: has no semantic labels (meta.yaml has_semantic is false)")
        return self._load("semantic", index, cv2.IMREAD_UNCHANGED)


def validate_sequence(path: str | os.PathLike, deep: bool = True) -> Sequence:
    """Check a sequence; with ``deep`` decode every image. Raises SequenceError naming the file and field."""
    seq = Sequence(path)
    subs = ["left"] + ["right"] * seq.has_right + ["depth"] * seq.has_depth + ["semantic"] * seq.has_semantic
    missing = [seq.frame_path(sub, i) for sub in subs for i in range(len(seq)) if not seq.frame_path(sub, i).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SequenceError(f"{missing[0]}: missing{more}")
    if deep:
        loaders = {"left": seq.load_left, "right": seq.load_right, "depth": seq.load_depth,
                   "semantic": seq.load_semantic}
        for sub in subs:
            for i in range(len(seq)):
                loaders[sub](i)
    return seq


def list_sequences(root: str | os.PathLike) -> list[str]:
    """Names of the complete sequences directly under ``root`` (folders with meta.yaml), sorted."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "meta.yaml").is_file())


def write_splits(root: str | os.PathLike, splits: dict[str, list[str]]) -> None:
    """Write ``splits/<name>.txt`` (one sequence name per line) under a dataset root."""
    for name, sequences in splits.items():
        write_text_atomic(Path(root) / "splits" / f"{name}.txt", "".join(f"{s}\n" for s in sequences))


def read_split(root: str | os.PathLike, name: str) -> list[str]:
    """Sequence names of split ``name``; checks that each exists under ``root``."""
    root = Path(root)
    path = root / "splits" / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
        raise SequenceError(f"{path}: missing split file; available splits: {available or 'none'}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    missing = [n for n in names if not (root / n / "meta.yaml").is_file()]
    if missing:
        raise SequenceError(f"{path}: {len(missing)} listed sequence(s) not found under {root}: {missing[:5]}")
    if not names:
        raise SequenceError(f"{path}: lists no sequences")
    return names


def ensure_splits(root: str | os.PathLike, val_every: int = 10) -> dict[str, list[str]] | None:
    """Write default ``splits/`` for a root that has none: every ``val_every``-th sequence (at least one
    when there are two or more) is held out as ``val``; ``test`` gets different sequences (the ones just
    before each val sequence) when there are three or more, else the same as ``val``; the rest is
    ``train``. Returns the splits written, or None when split files already exist (never touched)."""
    root = Path(root)
    if any((root / "splits" / f"{name}.txt").is_file() for name in SPLIT_NAMES):
        return None
    names = list_sequences(root)
    if not names:
        return None
    val = names[val_every - 1::val_every] or (names[-1:] if len(names) >= 2 else [])
    test = [names[names.index(v) - 1] for v in val] if len(names) >= 3 else list(val)
    held = set(val) | set(test)
    splits = {"train": [n for n in names if n not in held] or names}
    if val:
        splits["val"] = val
        splits["test"] = test
    write_splits(root, splits)
    return splits


def unsplit_sequences(root: str | os.PathLike) -> list[str]:
    """Sequences under ``root`` listed in no ``splits/*.txt`` file (training would ignore them)."""
    root = Path(root)
    listed: set[str] = set()
    for path in sorted((root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []:
        listed.update(line.strip() for line in path.read_text().splitlines()
                      if line.strip() and not line.startswith("#"))
    return [n for n in list_sequences(root) if n not in listed]


def append_to_split(root: str | os.PathLike, split: str = "train") -> list[str]:
    """Append every sequence in no split to ``splits/<split>.txt``; returns the names appended."""
    new = unsplit_sequences(root)
    if new:
        path = Path(root) / "splits" / f"{split}.txt"
        old = path.read_text() if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        write_text_atomic(path, old + "".join(f"{n}\n" for n in new))
    return new
