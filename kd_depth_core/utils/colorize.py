"""Depth and uncertainty colourisation for viewing (PNG files, the ROS colourised topic, TensorBoard).

Depth is coloured in inverse depth (near = bright), like Monodepth2's figures, which spreads
the colours over the near range where detail matters. Invalid pixels (<= 0, NaN, inf) get
``invalid_color``. A fixed ``(min_depth, max_depth)`` range gives flicker-free video; without
it the range follows each frame's 5th..95th percentile of inverse depth.
"""
from __future__ import annotations

import cv2
import numpy as np

COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")}


def apply_colormap(values: np.ndarray, low: float, high: float, colormap: str = "magma",
                   valid: np.ndarray | None = None, invalid_color: tuple[int, int, int] = (0, 0, 0),
                   bgr: bool = False) -> np.ndarray:
    """Map an (H, W) float array linearly from [low, high] to colours: (H, W, 3) uint8 RGB (BGR with ``bgr``)."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"values: expected shape (H, W), got {values.shape}")
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap: expected one of {', '.join(sorted(COLORMAPS))}, got {colormap!r}")
    valid = np.isfinite(values) if valid is None else valid & np.isfinite(values)
    span = high - low if high > low else 1.0
    unit = np.clip((np.where(valid, values, low) - low) / span, 0.0, 1.0)
    colors = cv2.applyColorMap((unit * 255.0 + 0.5).astype(np.uint8), COLORMAPS[colormap])
    if not bgr:
        colors = colors[:, :, ::-1]
    colors = np.ascontiguousarray(colors)
    colors[~valid] = invalid_color[::-1] if bgr else invalid_color
    return colors


def colorize_depth(depth: np.ndarray, min_depth: float | None = None, max_depth: float | None = None,
                   colormap: str = "magma", invalid_color: tuple[int, int, int] = (0, 0, 0),
                   bgr: bool = False) -> np.ndarray:
    """Depth (H, W) metres -> (H, W, 3) uint8 RGB (BGR with ``bgr``), coloured by inverse depth.

    ``min_depth``/``max_depth`` fix the range (pass both, metres); otherwise the 5th..95th
    percentiles of the valid inverse depth are used. ``invalid_color`` is RGB.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected shape (H, W), got {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    inverse = np.zeros_like(depth)
    np.divide(1.0, depth, out=inverse, where=valid)
    if min_depth is not None and max_depth is not None:
        if not 0 < min_depth < max_depth:
            raise ValueError(f"min_depth/max_depth: expected 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        low, high = 1.0 / max_depth, 1.0 / min_depth
    elif valid.any():
        low, high = (float(v) for v in np.percentile(inverse[valid], [5.0, 95.0]))
    else:
        low, high = 0.0, 1.0
    return apply_colormap(inverse, low, high, colormap, valid, invalid_color, bgr)


def colorize_uncertainty(std: np.ndarray, max_std: float | None = None, colormap: str = "inferno",
                         bgr: bool = False) -> np.ndarray:
    """Depth standard deviation (H, W) metres -> colours; 0 .. ``max_std`` (default: 95th percentile)."""
    std = np.asarray(std, dtype=np.float32)
    valid = np.isfinite(std) & (std >= 0)
    if max_std is None:
        max_std = float(np.percentile(std[valid], 95.0)) if valid.any() else 1.0
    return apply_colormap(std, 0.0, max_std, colormap, valid, (0, 0, 0), bgr)
