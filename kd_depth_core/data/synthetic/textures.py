"""Procedural, tileable surface textures and a mip-mapped atlas sampled in world units.

Every texture is a periodic S×S RGB image (built from spectral noise, so it tiles without
seams) with a physical texel size in metres: the renderer maps a hit point's coordinates on a
face (metres) to texels, so textures stick to surfaces. Sampling is trilinear over a mip chain
(one `cv2.remap` call for two levels), which keeps far surfaces free of aliasing shimmer that
would break photometric self-supervision.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Rng = np.random.Generator


# ----------------------------------------------------------------------------- building blocks
def spectral_noise(rng: Rng, size: int, beta: float = 1.0, low: float = 1.0, high: float | None = None,
                   stretch: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Tileable noise (size,size) float32, zero mean, unit std; amplitude ~ 1/f^beta for low <= f <= high.

    ``stretch`` (sx, sy) scales the frequency axes: sy > sx gives streaks along x (grain, streaks).
    """
    fy = np.fft.fftfreq(size) * size * stretch[1]
    fx = np.fft.rfftfreq(size) * size * stretch[0]
    f = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    amp = np.where(f >= low, 1.0 / np.maximum(f, 1e-6) ** beta, 0.0)
    if high is not None:
        amp[f > high] = 0.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) * amp
    noise = np.fft.irfft2(spec, s=(size, size))
    noise -= noise.mean()
    return (noise / (noise.std() + 1e-12)).astype(np.float32)


def _rgb(base: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Colour (3,) times a brightness field (S,S) -> (S,S,3)."""
    return shade[..., None] * np.asarray(base, dtype=np.float32)[None, None, :]


def _jitter_color(rng: Rng, base: tuple[float, float, float], amount: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(base, dtype=np.float32) * (1 + rng.uniform(-amount, amount, 3)), 0.02, 1.0)


def _grid_cells(size: int, n_cols: float, n_rows: int, row_shift: float = 0.0) -> tuple[np.ndarray, ...]:
    """Cell ids and in-cell coordinates (0..1) of a running-bond grid tiling the texture exactly."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cw, ch = size / n_cols, size / n_rows
    row = np.floor(y / ch)
    xs = x + (row % 2) * row_shift * cw
    col = np.floor(xs / cw) % n_cols
    fx = (xs / cw) % 1.0
    fy = (y / ch) % 1.0
    return row.astype(np.int64), col.astype(np.int64), fx, fy


def _cell_values(rng: Rng, row: np.ndarray, col: np.ndarray, n: int = 4096) -> np.ndarray:
    table = rng.standard_normal(n).astype(np.float32)
    return table[(row * 7919 + col * 104729) % n]


def _mortar(fx: np.ndarray, fy: np.ndarray, wx: float, wy: float) -> np.ndarray:
    """1 inside a cell, 0 on the joints (width wx, wy as cell fractions), soft edge."""
    ex = np.minimum(fx, 1 - fx) / max(wx, 1e-6)
    ey = np.minimum(fy, 1 - fy) / max(wy, 1e-6)
    return np.clip(np.minimum(ex, ey) - 0.5, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- materials
def asphalt(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.33, 0.33, 0.34), 0.15)
    shade = (1 + 0.12 * spectral_noise(rng, s, 0.6, low=8) + 0.10 * spectral_noise(rng, s, 1.2, low=1)
             + 0.08 * spectral_noise(rng, s, 0.2, low=64))
    stones = rng.random((s, s)) < 0.02
    shade = shade + stones * rng.uniform(-0.35, 0.45, (s, s))
    patches = spectral_noise(rng, s, 1.5, low=1, high=12) > 1.1
    shade = shade * np.where(patches, 0.8, 1.0)
    return _rgb(base, shade)


def paving(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.62, 0.6, 0.56), 0.12)
    n = int(rng.choice([16, 20, 32]))
    row, col, fx, fy = _grid_cells(s, n, n, row_shift=0.5 * rng.integers(0, 2))
    tile = 1 + 0.1 * _cell_values(rng, row, col)
    joints = _mortar(fx, fy, 0.04, 0.04)
    shade = tile * (0.55 + 0.45 * joints) + 0.07 * spectral_noise(rng, s, 0.5, low=16)
    shade += 0.06 * spectral_noise(rng, s, 1.3, low=1)
    return _rgb(base, shade)


def concrete(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.6, 0.6, 0.58), 0.1)
    shade = 1 + 0.08 * spectral_noise(rng, s, 0.7, low=4) + 0.08 * spectral_noise(rng, s, 1.4, low=1)
    shade += 0.05 * spectral_noise(rng, s, 0.1, low=100)
    return _rgb(base, shade)


def _windows(rng: Rng, s: int, wall: np.ndarray, n_x: int, n_y: int) -> np.ndarray:
    """Paint an n_x × n_y grid of windows (frame, glass with reflections) over a facade (S,S,3)."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    cw, ch = s / n_x, s / n_y
    fx, fy = (x / cw) % 1.0, (y / ch) % 1.0
    col, row = np.floor(x / cw).astype(int), np.floor(y / ch).astype(int)
    w, h = rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6)
    y0 = rng.uniform(0.25, 0.9 - h)                   # texture rows grow with height above the ground
    in_frame = (np.abs(fx - 0.5) < w / 2 + 0.03) & (fy > y0 - 0.03) & (fy < y0 + h + 0.03)
    in_glass = (np.abs(fx - 0.5) < w / 2) & (fy > y0) & (fy < y0 + h)
    frame_color = _jitter_color(rng, (0.85, 0.85, 0.82), 0.1)
    glass_base = _jitter_color(rng, (0.18, 0.22, 0.3), 0.3)
    per_window = 1 + 0.35 * _cell_values(rng, row, col)
    reflection = 1 + 0.25 * spectral_noise(rng, s, 1.2, low=2) + 0.6 * (fy - y0) / h
    glass = _rgb(glass_base, np.clip(per_window * reflection, 0.3, 3.0))
    mullion = (np.abs(fx - 0.5) < 0.012) | (np.abs(fy - (y0 + h * 0.62)) < 0.012)
    out = np.where(in_frame[..., None], frame_color, wall)
    out = np.where((in_glass & ~mullion)[..., None], glass, out)
    return out


def facade_brick(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.58, 0.3, 0.22), 0.2)
    row, col, fx, fy = _grid_cells(s, 20, 64, row_shift=0.5)
    brick = 1 + 0.15 * _cell_values(rng, row, col)
    joints = _mortar(fx, fy, 0.05, 0.2)
    mortar_color = _jitter_color(rng, (0.7, 0.68, 0.62), 0.1)
    wall = _rgb(base, brick * (1 + 0.08 * spectral_noise(rng, s, 0.5, low=32)))
    wall = wall * joints[..., None] + mortar_color * (1 - joints[..., None])
    wall *= (1 + 0.1 * spectral_noise(rng, s, 1.5, low=1))[..., None]
    return _windows(rng, s, wall, 4, 3)


def facade_plaster(rng: Rng, s: int) -> np.ndarray:
    hue = rng.choice(np.array([[0.85, 0.78, 0.62], [0.8, 0.8, 0.78], [0.75, 0.6, 0.5], [0.7, 0.75, 0.7],
                               [0.88, 0.86, 0.8]], dtype=np.float32))
    base = _jitter_color(rng, tuple(hue), 0.08)
    shade = 1 + 0.08 * spectral_noise(rng, s, 0.6, low=8) + 0.12 * spectral_noise(rng, s, 1.6, low=1)
    shade += 0.04 * spectral_noise(rng, s, 0.0, low=120)
    return _windows(rng, s, _rgb(base, shade), int(rng.choice([3, 4])), 3)


def facade_panels(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.55, 0.56, 0.58), 0.15)
    row, col, fx, fy = _grid_cells(s, 8, 6)
    panel = 1 + 0.07 * _cell_values(rng, row, col)
    joints = _mortar(fx, fy, 0.01, 0.012)
    shade = panel * (0.6 + 0.4 * joints) + 0.08 * spectral_noise(rng, s, 0.8, low=4)
    return _windows(rng, s, _rgb(base, shade), 4, 3)


def roof(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.35, 0.3, 0.3), 0.2)
    return _rgb(base, 1 + 0.15 * spectral_noise(rng, s, 0.9, low=2))


def car_paint(rng: Rng, s: int) -> np.ndarray:
    """Light neutral paint; boxes tint it to the car's colour."""
    shade = 0.8 + 0.05 * spectral_noise(rng, s, 0.8, low=2) + 0.06 * spectral_noise(rng, s, 1.6, low=1)
    row, col, fx, fy = _grid_cells(s, 2, 2)
    seams = _mortar(fx, fy, 0.006, 0.006)
    return _rgb((1.0, 1.0, 1.0), shade * (0.7 + 0.3 * seams))


def car_glass(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.12, 0.15, 0.2), 0.2)
    y = np.linspace(0, 1, s, endpoint=False, dtype=np.float32)[:, None]
    shade = 1 + 0.4 * spectral_noise(rng, s, 1.4, low=1) + 0.8 * np.sin(2 * np.pi * y) ** 2
    return _rgb(base, shade)


def rubber(rng: Rng, s: int) -> np.ndarray:
    return _rgb((0.08, 0.08, 0.09), 1 + 0.3 * spectral_noise(rng, s, 0.8, low=2))


def metal(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.5, 0.52, 0.55), 0.15)
    shade = 1 + 0.12 * spectral_noise(rng, s, 1.0, low=1, stretch=(0.15, 1.0)) + 0.05 * spectral_noise(rng, s, 0.3)
    return _rgb(base, shade)


def sign_plate(rng: Rng, s: int) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    colors = np.array([[0.8, 0.1, 0.1], [0.1, 0.25, 0.7], [0.9, 0.8, 0.1], [0.1, 0.5, 0.2]], dtype=np.float32)
    c1, c2 = colors[rng.choice(4, 2, replace=False)]
    ring = (np.hypot(x - 0.5, y - 0.5) % 0.25) < 0.12
    out = np.where(ring[..., None], c1, c2)
    return out * (1 + 0.1 * spectral_noise(rng, s, 1.0, low=2))[..., None]


def foliage(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.2, 0.38, 0.12), 0.25)
    leaves = spectral_noise(rng, s, 0.5, low=24)
    clumps = spectral_noise(rng, s, 1.2, low=2)
    shade = 1 + 0.35 * leaves + 0.25 * clumps
    shade = np.where(leaves + 0.5 * clumps < -1.1, 0.25, shade)   # dark gaps between leaves
    hue = _rgb(base, shade)
    hue[..., 0] *= 1 + 0.15 * spectral_noise(rng, s, 1.0, low=4)
    return hue


def bark(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.32, 0.24, 0.17), 0.15)
    shade = 1 + 0.3 * spectral_noise(rng, s, 0.9, low=2, stretch=(1.0, 0.12))
    return _rgb(base, shade)


def lane_paint(rng: Rng, s: int) -> np.ndarray:
    return _rgb((0.88, 0.88, 0.84), 1 + 0.06 * spectral_noise(rng, s, 0.5, low=4))


def wall_paint(rng: Rng, s: int) -> np.ndarray:
    base = np.clip(rng.uniform(0.55, 0.9, 3).astype(np.float32), 0, 1)
    shade = 1 + 0.07 * spectral_noise(rng, s, 1.3, low=1) + 0.05 * spectral_noise(rng, s, 0.4, low=32)
    return _rgb(base, shade)


def wallpaper(rng: Rng, s: int) -> np.ndarray:
    c1 = rng.uniform(0.45, 0.85, 3).astype(np.float32)
    c2 = np.clip(c1 * rng.uniform(0.7, 0.95), 0, 1)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    n = int(rng.choice([8, 12, 16]))
    stripes = (0.5 + 0.5 * np.sin(2 * np.pi * n * x)) > 0.5
    ornament = spectral_noise(rng, s, 0.9, low=8, high=64)
    pattern = np.where(stripes, 1.0, 0.0) * 0.6 + 0.4 * (ornament > 0.3)
    out = c1 * (1 - pattern[..., None]) + c2 * pattern[..., None]
    return out * (1 + 0.05 * spectral_noise(rng, s, 1.2, low=1))[..., None]


def floor_wood(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.55, 0.38, 0.22), 0.2)
    row, col, fx, fy = _grid_cells(s, 4, 32, row_shift=rng.uniform(0.2, 0.6))
    plank = 1 + 0.12 * _cell_values(rng, row, col)
    grain = 1 + 0.15 * spectral_noise(rng, s, 0.8, low=2, stretch=(0.08, 1.0))
    joints = _mortar(fx, fy, 0.004, 0.03)
    return _rgb(base, plank * grain * (0.6 + 0.4 * joints))


def floor_tiles(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.75, 0.72, 0.68), 0.2)
    n = int(rng.choice([8, 10, 16]))
    row, col, fx, fy = _grid_cells(s, n, n)
    tile = 1 + 0.06 * _cell_values(rng, row, col) + 0.15 * ((row + col) % 2) * rng.uniform(0, 1)
    joints = _mortar(fx, fy, 0.015, 0.015)
    marble = 0.1 * spectral_noise(rng, s, 1.1, low=2)
    return _rgb(base, tile * (0.55 + 0.45 * joints) + marble)


def carpet(rng: Rng, s: int) -> np.ndarray:
    base = rng.uniform(0.25, 0.7, 3).astype(np.float32)
    shade = 1 + 0.2 * spectral_noise(rng, s, 0.2, low=32) + 0.12 * spectral_noise(rng, s, 1.2, low=1)
    return _rgb(base, shade)


def ceiling(rng: Rng, s: int) -> np.ndarray:
    shade = 0.9 + 0.04 * spectral_noise(rng, s, 1.2, low=1) + 0.03 * spectral_noise(rng, s, 0.3, low=32)
    row, col, fx, fy = _grid_cells(s, 4, 4)
    return _rgb(_jitter_color(rng, (0.92, 0.92, 0.9), 0.04), shade * (0.8 + 0.2 * _mortar(fx, fy, 0.01, 0.01)))


def wood(rng: Rng, s: int) -> np.ndarray:
    base = _jitter_color(rng, (0.5, 0.33, 0.18), 0.3)
    y = np.linspace(0, 1, s, endpoint=False, dtype=np.float32)[:, None]
    warp = 0.02 * spectral_noise(rng, s, 1.5, low=1)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * 24 * (y + warp))
    grain = 0.12 * spectral_noise(rng, s, 0.7, low=4, stretch=(0.1, 1.0))
    return _rgb(base, 0.85 + 0.2 * rings + grain)


def fabric(rng: Rng, s: int) -> np.ndarray:
    base = rng.uniform(0.2, 0.75, 3).astype(np.float32)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    weave = 0.08 * np.sign(np.sin(np.pi * x / 2) * np.sin(np.pi * y / 2))
    return _rgb(base, 1 + weave + 0.12 * spectral_noise(rng, s, 1.0, low=2))


def painting(rng: Rng, s: int) -> np.ndarray:
    out = np.stack([spectral_noise(rng, s, 1.6, low=1) for _ in range(3)], axis=-1)
    out = 0.5 + 0.22 * out
    row, col, fx, fy = _grid_cells(s, 1, 1)
    frame = _mortar(fx, fy, 0.06, 0.06)[..., None]
    return out * frame + np.float32(0.25) * (1 - frame)


def clouds(rng: Rng, s: int) -> np.ndarray:
    """Cloud density in all three channels (0..1), used by the sky."""
    density = spectral_noise(rng, s, 1.4, low=1)
    density = (density - density.min()) / (density.max() - density.min() + 1e-12)
    return np.repeat(density[..., None], 3, axis=-1)


@dataclass(frozen=True)
class MaterialSpec:
    """A texture: ``make(rng, size) -> float32 (size,size,3)`` in [0,1], ``texel_m`` metres per texel."""

    make: Callable[[Rng, int], np.ndarray]
    texel_m: float
    size: int = 256


MATERIALS: dict[str, MaterialSpec] = {
    "asphalt": MaterialSpec(asphalt, 0.03),
    "paving": MaterialSpec(paving, 0.02),
    "concrete": MaterialSpec(concrete, 0.02, 128),
    "facade_brick": MaterialSpec(facade_brick, 0.04),
    "facade_plaster": MaterialSpec(facade_plaster, 0.04),
    "facade_panels": MaterialSpec(facade_panels, 0.04),
    "roof": MaterialSpec(roof, 0.08, 128),
    "car_paint": MaterialSpec(car_paint, 0.02, 128),
    "car_glass": MaterialSpec(car_glass, 0.012, 128),
    "rubber": MaterialSpec(rubber, 0.01, 64),
    "metal": MaterialSpec(metal, 0.02, 128),
    "sign": MaterialSpec(sign_plate, 0.005, 128),
    "foliage": MaterialSpec(foliage, 0.012),
    "bark": MaterialSpec(bark, 0.015, 128),
    "lane_paint": MaterialSpec(lane_paint, 0.01, 64),
    "wall_paint": MaterialSpec(wall_paint, 0.02),
    "wallpaper": MaterialSpec(wallpaper, 0.01),
    "floor_wood": MaterialSpec(floor_wood, 0.016),
    "floor_tiles": MaterialSpec(floor_tiles, 0.02),
    "carpet": MaterialSpec(carpet, 0.006),
    "ceiling": MaterialSpec(ceiling, 0.02),
    "wood": MaterialSpec(wood, 0.004),
    "fabric": MaterialSpec(fabric, 0.004, 128),
    "painting": MaterialSpec(painting, 0.004),
    "clouds": MaterialSpec(clouds, 20.0, 128),
}
MATERIAL_NAMES: tuple[str, ...] = tuple(sorted(MATERIALS))
TEXTURE_VARIANTS = 4  # distinct base textures per material; scenes add their own colour transform

_TEXTURE_CACHE: dict[tuple[str, int], np.ndarray] = {}


def base_texture(name: str, variant: int) -> np.ndarray:
    """uint8 (S,S,3) texture ``variant`` of material ``name`` (cached per process; a pure function)."""
    if name not in MATERIALS:
        raise ValueError(f"material {name!r}: unknown; known materials: {list(MATERIAL_NAMES)}")
    key = (name, int(variant) % TEXTURE_VARIANTS)
    if key not in _TEXTURE_CACHE:
        spec = MATERIALS[name]
        image = spec.make(np.random.default_rng([MATERIAL_NAMES.index(name), key[1]]), spec.size)
        _TEXTURE_CACHE[key] = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _TEXTURE_CACHE[key]


def make_textures(names: list[str], seed: int) -> dict[str, np.ndarray]:
    """uint8 (S,S,3) RGB textures of ``names`` for a scene: a base variant per material (from ``seed``)
    under a per-scene colour gain (±10 % per channel), so scenes differ while base textures are reused."""
    out = {}
    for name in names:
        rng = np.random.default_rng([int(seed), MATERIAL_NAMES.index(name) if name in MATERIAL_NAMES else 0])
        variant = int(rng.integers(TEXTURE_VARIANTS))
        gain = rng.uniform(0.9, 1.1, 3) * rng.uniform(0.92, 1.08)
        texture = base_texture(name, variant)
        out[name] = np.clip(texture * gain.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- atlas
class TextureAtlas:
    """All textures' mip chains packed into one padded uint8 image, sampled trilinearly with wrap.

    Each mip level l of a texture (size S_l = S >> l) is stored with one extra wrapped row and
    column so bilinear taps never leave the tile. ``sample`` returns float32 planes (3,N) in [0,1],
    modulated by a slow analytic variation whose periods are not multiples of the tile, so the
    tiling does not repeat exactly.
    """

    MIN_LEVEL_SIZE = 4
    MAX_WIDTH = 16384
    MACRO_AMPLITUDE = 0.07

    def __init__(self, textures: dict[str, np.ndarray], texel_m: dict[str, float]) -> None:
        self.names = list(textures)
        n = max(len(self.names), 1)
        levels = [self._mip_chain(textures[name]) for name in self.names]
        self.n_levels = np.array([len(chain) for chain in levels] or [1], dtype=np.int64)
        self.texel_m = np.array([texel_m[name] for name in self.names] or [1.0], dtype=np.float32)
        max_l = int(self.n_levels.max())
        self.level_size = np.ones((n, max_l), dtype=np.float32)
        self.offset_x = np.zeros((n, max_l), dtype=np.float32)
        self.offset_y = np.zeros((n, max_l), dtype=np.float32)
        period = np.array([texel_m[name] * textures[name].shape[0] for name in self.names] or [1.0])
        self.macro_freq = (2 * np.pi / (period[:, None] * np.array([[2.618, 1.732, 3.303, 2.236]]))).astype(np.float32)
        # Shelf packing: block of a texture = level 0 on the left, levels >= 1 stacked on its right.
        blocks, x, y, shelf_h = [], 0, 0, 0
        for m, chain in enumerate(levels):
            s = chain[0].shape[0]
            bw, bh = s + 1 + (chain[1].shape[0] + 1 if len(chain) > 1 else 0), s + 1
            if x + bw > self.MAX_WIDTH:
                x, y, shelf_h = 0, y + shelf_h, 0
            ly = 0
            for lvl, img in enumerate(chain):
                ox, oy = (x, y) if lvl == 0 else (x + s + 1, y + ly)
                if lvl > 0:
                    ly += img.shape[0] + 1
                self.level_size[m, lvl] = img.shape[0]
                self.offset_x[m, lvl], self.offset_y[m, lvl] = ox, oy
                blocks.append((ox, oy, img))
            x, shelf_h = x + bw, max(shelf_h, bh)
        width = max([ox + img.shape[1] + 1 for ox, _, img in blocks] or [1])
        height = max([oy + img.shape[0] + 1 for _, oy, img in blocks] or [1])
        self.image = np.zeros((height, width, 4), dtype=np.uint8)   # RGBA: aligned texels, faster remap
        for ox, oy, img in blocks:
            self.image[oy:oy + img.shape[0] + 1, ox:ox + img.shape[1] + 1, :3] = np.pad(img, ((0, 1), (0, 1), (0, 0)),
                                                                                          mode="wrap")
        self.index = {name: i for i, name in enumerate(self.names)}
        # 1-D lookup tables indexed by material * max_levels + level (fast gathers).
        self.max_levels = max_l
        self.level_scale = (np.exp2(-np.arange(max_l))[None, :] / self.texel_m[:, None]).astype(np.float32).ravel()
        self.level_size_flat = self.level_size.ravel()
        self.offset_x_flat, self.offset_y_flat = self.offset_x.ravel(), self.offset_y.ravel()
        self.top_level = (self.n_levels - 1).astype(np.float32)
        self.inv_texel = (1.0 / self.texel_m).astype(np.float32)
        self.macro = tuple(np.ascontiguousarray(self.macro_freq[:, a]) for a in range(4))

    @classmethod
    def from_materials(cls, names: list[str], seed: int) -> TextureAtlas:
        return cls(make_textures(names, seed), {name: MATERIALS[name].texel_m for name in names})

    def _mip_chain(self, image: np.ndarray) -> list[np.ndarray]:
        if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[0] & (image.shape[0] - 1):
            raise ValueError(f"texture: expected a square power-of-two RGB image, got shape {image.shape}")
        chain = [image]
        while chain[-1].shape[0] // 2 >= self.MIN_LEVEL_SIZE:
            s = chain[-1].shape[0] // 2
            chain.append(cv2.resize(chain[-1], (s, s), interpolation=cv2.INTER_AREA))
        return chain

    def sample(self, material: np.ndarray, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Colour planes (3,N) float32 of ``material`` ids (N,) at surface coordinates ``u, v`` (m).

        ``footprint``: the size (m) of one pixel on the surface; it selects the mip level.
        """
        n = material.shape[0]
        if n == 0:
            return np.zeros((3, 0), np.float32)
        u, v = u.astype(np.float32, copy=False), v.astype(np.float32, copy=False)
        top = self.top_level[material]
        lod = np.clip(np.log2(np.maximum(footprint * self.inv_texel[material], np.float32(1e-6))), np.float32(0), top)
        l0 = lod.astype(np.int64)                                   # floor (lod >= 0)
        frac = lod - l0
        row0 = material * self.max_levels + l0
        rows = np.concatenate([row0, row0 + (l0 < top)])           # level l0 and l0 + 1 (clamped)
        scale, size = self.level_scale[rows], self.level_size_flat[rows]
        x = _wrap(np.concatenate([u, u]) * scale - np.float32(0.5), size) + self.offset_x_flat[rows]
        y = _wrap(np.concatenate([v, v]) * scale - np.float32(0.5), size) + self.offset_y_flat[rows]
        taps = _remap_flat(self.image, x, y)[:, :3]                 # (2N,3)
        color = (taps[:n] + (taps[n:] - taps[:n]) * frac[:, None]).T
        f0, f1, f2, f3 = (m[material] for m in self.macro)
        macro = 1 + np.float32(self.MACRO_AMPLITUDE / 2) * (np.sin(u * f0 + v * f1) + np.sin(v * f2 - u * f3))
        return color * macro


_REMAP_COLS = 4096


def _wrap(x: np.ndarray, size: np.ndarray) -> np.ndarray:
    """x mod size into [0, size) (np.mod is ~15x slower for floats)."""
    return x - np.floor(x / size) * size


def _remap_flat(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at pixel coordinates (x, y) (N,), as float32 (N,C) in [0,1]."""
    n = x.shape[0]
    rows = -(-n // _REMAP_COLS)
    pad = rows * _REMAP_COLS - n
    mx = np.pad(x.astype(np.float32, copy=False), (0, pad)).reshape(rows, _REMAP_COLS)
    my = np.pad(y.astype(np.float32, copy=False), (0, pad)).reshape(rows, _REMAP_COLS)
    out = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * _REMAP_COLS, -1)[:n].astype(np.float32) * np.float32(1 / 255)
