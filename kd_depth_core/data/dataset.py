"""PyTorch datasets over training sequences, yielding the batch dict of docs/architecture.md.

A sample is a target frame with its temporal sources at ``offsets`` (e.g. -1, +1) inside the
same sequence — samples never straddle a sequence boundary — plus, on request, the stereo
partner, ground-truth depth and semantics. Images are resized to the training size and K is
scaled with them.
"""
from __future__ import annotations

import os
from collections.abc import Sequence as SequenceLike
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from kd_depth_core.data.sequence import Sequence, SequenceError, read_split


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H,W,3) -> float32 (3,H,W) in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class SequenceDataset(Dataset):
    """Frame triplets (or any offsets) from the sequences of a dataset root.

    Args:
        root: dataset root (sequence folders + ``splits/``).
        split: split name (``splits/<split>.txt``), or an explicit list of sequence names; None = all.
        offsets: temporal source offsets relative to the target, e.g. (-1, 1); () for none.
        size: (height, width) of the training resolution; None keeps the stored size.
        stereo: also return ``image_right`` (every sequence must be stereo).
        load_depth / load_semantic: also return ``depth_gt`` / ``semantic``.
        augment: colour jitter (brightness, contrast, saturation, hue-free), the same for every
            frame of a sample so photometric constancy between them holds.
        flip: probability of the stereo mirror augmentation (needs ``stereo``): the sample is the
            frame's *right* camera mirrored left-right (target and temporal sources), with the
            mirrored left image as its stereo partner. Mirroring swaps the cameras' sides, so this is
            again a rectified pair with the right partner at +baseline: no sign flips downstream,
            only ``cx`` -> W-1-cx. ``frame_key`` gains ``/mirrored``. 0 = off (the right view has no
            ground truth, so it cannot be combined with ``load_depth`` / ``load_semantic``).
        stride: use every ``stride``-th valid target frame (for fast validation).
        proxy: a `classical.proxy_cache.ProxySource`: also return ``proxy_disparity``, the SGBM
            proxy of the (unaugmented) pair at the training size (needs ``stereo``).
    """

    def __init__(self, root: str | os.PathLike, split: str | SequenceLike[str] | None = "train",
                 offsets: SequenceLike[int] = (-1, 1), size: tuple[int, int] | None = None, stereo: bool = False,
                 load_depth: bool = False, load_semantic: bool = False, augment: bool = False,
                 stride: int = 1, seed: int = 0, proxy=None, flip: float = 0.0) -> None:
        self.root = Path(root)
        if isinstance(split, str):
            names = read_split(self.root, split)
        elif split is None:
            from kd_depth_core.data.sequence import list_sequences
            names = list_sequences(self.root)
        else:
            names = list(split)
        if not names:
            raise SequenceError(f"{self.root}: no sequences to load")
        self.sequences = [Sequence(self.root / n) for n in names]
        self.offsets = tuple(int(o) for o in offsets)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.stereo, self.load_depth, self.load_semantic, self.augment = stereo, load_depth, load_semantic, augment
        self.seed = seed
        self.epoch = 0
        self.proxy = proxy
        if proxy is not None and not stereo:
            raise SequenceError(f"{self.root}: the SGBM proxy needs the right images (stereo=True)")
        self.flip = float(flip)
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"data.flip: expected a probability in [0, 1], got {flip!r}")
        if self.flip > 0 and (not stereo or load_depth or load_semantic):
            raise ValueError("data.flip: the mirror augmentation trains the right camera's view, so it needs "
                             "data.stereo=true and no ground truth loaded (set data.flip=0)")
        for seq in self.sequences:
            if stereo and not seq.has_right:
                raise SequenceError(f"{seq.path}: data.stereo=true but the sequence has no right images (a mono "
                                    "dataset); for teacher_ms_dpt.yaml add data.stereo=false task.kwargs.mode=mono "
                                    "task.kwargs.proxy_weight=0 (teacher_stereo.yaml and distill_adu.yaml need "
                                    "stereo data)")
            if load_depth and not seq.has_depth:
                raise SequenceError(f"{seq.path}: load_depth=True but the sequence has no depth")
            if load_semantic and not seq.has_semantic:
                raise SequenceError(f"{seq.path}: load_semantic=True but the sequence has no semantic labels")
        lo = -min((0,) + self.offsets)
        hi = max((0,) + self.offsets)
        self.samples: list[tuple[int, int]] = [
            (s, i) for s, seq in enumerate(self.sequences) for i in range(lo, len(seq) - hi)
        ][:: max(1, int(stride))]
        if not self.samples:
            raise SequenceError(f"{self.root}: no frame has all of offsets {self.offsets} inside its sequence")

    def __len__(self) -> int:
        return len(self.samples)

    def _resize(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        if self.size is None or image.shape[:2] == self.size:
            return image
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
        return cv2.resize(image, (self.size[1], self.size[0]), interpolation=interp)

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer each epoch: augmentation depends only on (seed, epoch, index), so a
        resumed run and any number of DataLoader workers see exactly the same samples."""
        self.epoch = int(epoch)

    def _jitter(self, index: int):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)

        def apply(image: np.ndarray) -> np.ndarray:
            x = image.astype(np.float32) * brightness
            mean = x.mean()
            x = (x - mean) * contrast + mean
            gray = x.mean(axis=2, keepdims=True)
            x = (x - gray) * saturation + gray
            return np.clip(x, 0, 255).astype(np.uint8)

        return apply

    def mirrored(self, index: int) -> bool:
        """Whether sample `index` is the mirrored right view this epoch (depends on seed, epoch, index)."""
        return self.flip > 0 and bool(np.random.default_rng((self.seed, self.epoch, index, 1)).random() < self.flip)

    def frame_key(self, index: int) -> str:
        s, i = self.samples[index]
        return f"{self.sequences[s].name}/{i:06d}" + ("/mirrored" if self.mirrored(index) else "")

    def __getitem__(self, index: int) -> dict:
        s, i = self.samples[index]
        seq = self.sequences[s]
        jitter = self._jitter(index) if self.augment else (lambda im: im)
        camera = seq.camera if self.size is None else seq.camera.scaled(self.size[1], self.size[0])
        K = camera.K.astype(np.float32)
        mirrored = self.mirrored(index)
        view, partner = ("right", "left") if mirrored else ("left", "right")

        def load(side: str, frame: int) -> np.ndarray:
            image = self._resize(seq.load_right(frame) if side == "right" else seq.load_left(frame))
            return np.ascontiguousarray(image[:, ::-1]) if mirrored else image

        if mirrored:
            K = K.copy()
            K[0, 2] = (camera.width - 1) - K[0, 2]
        target = load(view, i)
        sample = {
            "image": _to_tensor(jitter(target)),
            "K": torch.from_numpy(K),
            "baseline": torch.tensor(float(seq.camera.baseline or 0.0)),
            "frame_key": self.frame_key(index),
        }
        if self.offsets:
            sample["sources"] = torch.stack([_to_tensor(jitter(load(view, i + o))) for o in self.offsets])
        if self.stereo:
            right = load(partner, i)
            sample["image_right"] = _to_tensor(jitter(right))
            if self.proxy is not None:
                disparity = self.proxy.get(seq.name, i, target, right, seq.frame_path("left", i),
                                           seq.frame_path("right", i), float(K[0, 0]),
                                           float(seq.camera.baseline or 0.0), mirrored=mirrored)
                sample["proxy_disparity"] = torch.from_numpy(disparity)[None]
        if self.load_depth:
            sample["depth_gt"] = torch.from_numpy(self._resize(seq.load_depth(i), nearest=True))[None]
        if self.load_semantic:
            sample["semantic"] = torch.from_numpy(self._resize(seq.load_semantic(i), nearest=True).astype(np.int64))
        return sample
