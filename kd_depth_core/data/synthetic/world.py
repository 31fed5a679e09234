"""Scene description of the synthetic world: boxes, lights, sky and the semantic class list.

World frame: x right, y DOWN, z forward (the optical frame of a level camera at the origin).
The ground's top surface is y = 0, so things above the ground have negative y. Lengths in metres.
Every solid is a box (a plane is a thick box, a room is a box seen from the inside), which keeps
the renderer to one exact ray–box intersection.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# One class list for every preset; ids index this list (stored in each sequence's meta.yaml).
SEMANTIC_CLASSES: tuple[str, ...] = (
    "sky", "road", "sidewalk", "building", "vehicle", "pole", "vegetation",
    "lane_marking", "wall", "floor", "ceiling", "furniture",
)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
SKY_CLASS = CLASS_ID["sky"]

# Face order of a box: index = 2 * axis + (1 on the positive side): -x, +x, -y (top), +y (bottom), -z, +z.
FACE_NAMES: tuple[str, ...] = ("-x", "+x", "-y", "+y", "-z", "+z")
TOP_FACE, BOTTOM_FACE = 2, 3


def _six(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) * 6
    value = tuple(value)
    if len(value) != 6:
        raise ValueError(f"{what}: expected one name or 6 (faces {FACE_NAMES}), got {len(value)}")
    return value


@dataclass(frozen=True)
class Box:
    """An oriented box: ``center`` (3,) m, ``half_size`` (3,) m, ``yaw`` rad about the world y axis.

    A local point q maps to the world as center + R_y(yaw) q with R_y = [[c,0,s],[0,1,0],[-s,0,c]].
    ``material`` / ``semantic`` name one value for all faces or six (order FACE_NAMES).
    ``inside=True`` makes the box visible from within (a room): rays hit its far side.
    ``tint`` multiplies the texture colour; ``uv_offset`` (m) shifts the texture on the faces.
    """

    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    material: str | tuple[str, ...]
    semantic: str | tuple[str, ...]
    yaw: float = 0.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    uv_offset: tuple[float, float] = (0.0, 0.0)
    inside: bool = False

    def __post_init__(self) -> None:
        if len(self.center) != 3 or len(self.half_size) != 3:
            raise ValueError(f"Box: center and half_size need 3 values, got {self.center}, {self.half_size}")
        if min(self.half_size) <= 0:
            raise ValueError(f"Box.half_size: expected positive metres, got {self.half_size}")
        for name in _six(self.semantic, "Box.semantic"):
            if name not in CLASS_ID:
                raise ValueError(f"Box.semantic: unknown class {name!r}; classes: {SEMANTIC_CLASSES}")
        _six(self.material, "Box.material")

    @property
    def face_materials(self) -> tuple[str, ...]:
        return _six(self.material, "Box.material")

    @property
    def face_semantics(self) -> tuple[str, ...]:
        return _six(self.semantic, "Box.semantic")

    def corners(self) -> np.ndarray:
        """The 8 corners in world coordinates, (8,3) float64."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        local = signs * np.asarray(self.half_size, dtype=np.float64)
        return local @ yaw_matrix(self.yaw).T + np.asarray(self.center, dtype=np.float64)


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about the world y axis (3,3): maps a box's local frame to the world."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True)
class PointLight:
    """A point light at ``position`` (m); intensity falls off as 1 / (1 + (r / radius)^2)."""

    position: tuple[float, float, float]
    color: tuple[float, float, float]
    radius: float = 3.0


@dataclass(frozen=True)
class Lighting:
    """Lambertian lighting, view-independent (brightness constancy holds between views).

    ``ambient`` is scaled by (1 - up_weight) + up_weight * (n · up) mapped to [0, 1] (sky light
    from above); ``sun_direction`` points from the scene TOWARDS the sun (world frame, unit).
    """

    ambient: tuple[float, float, float] = (0.45, 0.45, 0.45)
    up_weight: float = 0.3
    sun_direction: tuple[float, float, float] = (0.3, -0.8, 0.5)
    sun_color: tuple[float, float, float] = (0.6, 0.6, 0.6)
    point_lights: tuple[PointLight, ...] = ()


@dataclass(frozen=True)
class Sky:
    """Sky at infinity (depth invalid): a horizon-to-zenith gradient with optional clouds."""

    horizon: tuple[float, float, float] = (0.78, 0.84, 0.92)
    zenith: tuple[float, float, float] = (0.35, 0.52, 0.85)
    cloud_cover: float = 0.4   # 0 = clear, 1 = overcast
    cloud_color: tuple[float, float, float] = (0.95, 0.95, 0.97)


@dataclass
class World:
    """Everything the renderer needs; textures are generated from ``texture_seed``."""

    boxes: list[Box]
    lighting: Lighting = field(default_factory=Lighting)
    sky: Sky = field(default_factory=Sky)
    texture_seed: int = 0

    def materials(self) -> list[str]:
        """Material names used by the boxes, in first-use order."""
        names: dict[str, None] = {}
        for box in self.boxes:
            for m in box.face_materials:
                names.setdefault(m, None)
        return list(names)
