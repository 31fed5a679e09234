"""Image preprocessing for inference: any numpy image -> RGB float32 in [0, 1] at the network's input size.

Accepted images (numpy, H×W at least 1×1):

| shape | dtype | meaning |
|---|---|---|
| H×W, H×W×1 | uint8 / uint16 / float | grey, replicated to RGB |
| H×W×3 | uint8 / uint16 / float | RGB (BGR with ``bgr=True``, e.g. from ``cv2.imread``) |
| H×W×4 | uint8 / uint16 / float | RGBA (BGRA with ``bgr=True``); alpha is dropped |

uint8 is scaled by 1/255, uint16 by 1/65535; float images must already lie in [0, 1].
Mean/std normalisation is *not* done here: networks normalise inside their encoder (the one
normalisation site), so the deployed graph (:class:`kd_depth_core.inference.deploy.DeployModule`)
and exports need no preprocessing beyond this module's resize and scaling.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_SCALES = {np.dtype(np.uint8): 1.0 / 255.0, np.dtype(np.uint16): 1.0 / 65535.0}
_ACCEPTED = "H×W, H×W×1 (grey), H×W×3 (RGB/BGR) or H×W×4 (RGBA/BGRA) uint8, uint16 or float in [0, 1]"


def round_to_multiple(value: int, multiple: int) -> int:
    """Nearest multiple of ``multiple`` to ``value`` (at least ``multiple``)."""
    return max(multiple, int(round(value / multiple)) * multiple)


def to_rgb(image: np.ndarray, bgr: bool = False, name: str = "image") -> np.ndarray:
    """Check ``image`` and return it as H×W×3 RGB of the same dtype (a view when nothing changes)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array ({_ACCEPTED}), got {type(image).__name__}")
    if image.dtype not in _SCALES and not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"{name}: expected dtype uint8, uint16 or float, got {image.dtype} ({_ACCEPTED})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected {_ACCEPTED}; got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    if bgr:
        image = image[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return image


@dataclass(frozen=True)
class Preprocessor:
    """Resize to the network input (``height``×``width`` pixels) and scale to float32 [0, 1], (3,H,W).

    Immutable and free of per-call state, so one instance serves several threads.
    Downscaling uses area interpolation, upscaling bilinear.
    """

    height: int
    width: int

    def __call__(self, image: np.ndarray, bgr: bool = False, name: str = "image") -> np.ndarray:
        """One image -> (3, height, width) float32 RGB in [0, 1]."""
        rgb = to_rgb(image, bgr=bgr, name=name)
        in_h, in_w = rgb.shape[:2]
        if rgb.dtype not in _SCALES and rgb.dtype != np.float32:
            rgb = rgb.astype(np.float32)  # cv2 resizes float32, not float16/float64
        if (in_h, in_w) != (self.height, self.width):
            shrinking = in_h * in_w > self.height * self.width
            rgb = cv2.resize(np.ascontiguousarray(rgb), (self.width, self.height),
                             interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        if rgb.dtype in _SCALES:
            out = rgb.astype(np.float32) * np.float32(_SCALES[rgb.dtype])
        else:
            out = rgb.astype(np.float32, copy=False)
            low, high = float(out.min()), float(out.max())
            if not (low >= 0.0 and high <= 1.0):  # also catches NaN
                raise ValueError(f"{name}: float images must hold values in [0, 1], got range [{low}, {high}] "
                                 "(pass uint8 for 0..255 images)")
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def batch(self, images: list[np.ndarray], bgr: bool = False) -> np.ndarray:
        """Images of any sizes -> (B, 3, height, width) float32."""
        if not images:
            raise ValueError("images: expected at least one image")
        return np.stack([self(image, bgr=bgr, name=f"images[{i}]") for i, image in enumerate(images)])


def resize_map(values: np.ndarray, height: int, width: int, out: np.ndarray | None = None,
               mode: str = "linear") -> np.ndarray:
    """Resize a float H×W map (depth or std in metres) to ``height``×``width``, bilinear or ``mode="nearest"``.

    ``out``: a C-contiguous float32 (height, width) array to write into (returned); without it the
    input itself is returned when it already has the size.
    """
    if out is not None and out.shape != (height, width):
        raise ValueError(f"out: expected shape {(height, width)}, got {out.shape}")
    if values.shape == (height, width):
        if out is None:
            return values
        np.copyto(out, values)
        return out
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode: expected 'linear' or 'nearest', got {mode!r}")
    interpolation = cv2.INTER_NEAREST if mode == "nearest" else cv2.INTER_LINEAR
    resized = cv2.resize(values, (int(width), int(height)), dst=out, interpolation=interpolation)
    if out is not None and resized is not out:  # OpenCV allocates instead when the dtype differs
        np.copyto(out, resized)
        return out
    return resized
