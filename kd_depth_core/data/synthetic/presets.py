"""Scene presets: a seeded street (buildings, sidewalks, parked cars, poles, trees, markings) and
a seeded indoor room (walls, floor, ceiling, furniture), each with a camera path through it.

`build_scene(preset, rng, n_frames)` -> `Scene` (world + left-camera poses + exposure per frame).
Camera paths never enter a solid: objects keep clear of the path (and of the right camera).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from kd_depth_core.data.synthetic.trajectory import (
    Centerline,
    indoor_poses,
    smooth_signal,
    street_centerline,
    street_poses,
)
from kd_depth_core.data.synthetic.world import Box, Lighting, PointLight, Sky, World, yaw_matrix

Rng = np.random.Generator

DEFAULT_BASELINE = {"street": 0.54, "indoor": 0.12}


@dataclass
class Scene:
    """A world and a camera path: ``poses`` (N,4,4) T_world_camera of the left camera, ``exposure`` (N,)."""

    world: World
    poses: np.ndarray
    exposure: np.ndarray
    info: dict = field(default_factory=dict)


def _part(center: np.ndarray, yaw: float, offset: tuple[float, float, float]) -> tuple[float, float, float]:
    """World position of ``offset`` given in a parent's frame (centre, yaw)."""
    return tuple(float(v) for v in center + yaw_matrix(yaw) @ np.asarray(offset, dtype=np.float64))


def _exposure(rng: Rng, n: int) -> np.ndarray:
    """Per-frame exposure: a per-sequence level and a slow ±3 % drift (brightness mostly constant)."""
    return rng.uniform(0.92, 1.08) * (1 + smooth_signal(rng, n, 0.03, 30, 120))


# ----------------------------------------------------------------------------- street
def _car(rng: Rng, center_xz: tuple[float, float], yaw: float) -> list[Box]:
    color = tuple(float(c) for c in rng.choice(np.array([
        [0.8, 0.8, 0.82], [0.12, 0.12, 0.14], [0.7, 0.1, 0.1], [0.15, 0.25, 0.6], [0.5, 0.52, 0.55],
        [0.85, 0.75, 0.3], [0.2, 0.45, 0.25], [0.95, 0.95, 0.95]])) * rng.uniform(0.85, 1.1))
    van = rng.random() < 0.15
    length = rng.uniform(4.8, 6.0) if van else rng.uniform(3.8, 4.8)
    width = rng.uniform(1.9, 2.1) if van else rng.uniform(1.65, 1.9)
    clearance, wheel_r = 0.3, 0.32
    body_h = rng.uniform(1.5, 1.9) if van else rng.uniform(0.55, 0.75)
    base = np.array([center_xz[0], 0.0, center_xz[1]])
    boxes = [Box(_part(base, yaw, (0, -(clearance + body_h / 2), 0)), (width / 2, body_h / 2, length / 2),
                 "car_paint", "vehicle", yaw=yaw, tint=color, uv_offset=(rng.uniform(0, 5), 0))]
    if not van:
        cabin_h, cabin_l = rng.uniform(0.45, 0.6), length * rng.uniform(0.45, 0.6)
        shift = length * rng.uniform(-0.12, 0.04)
        glass = ("car_glass", "car_glass", "car_paint", "car_paint", "car_glass", "car_glass")
        boxes.append(Box(_part(base, yaw, (0, -(clearance + body_h + cabin_h / 2), shift)),
                         (width / 2 - 0.08, cabin_h / 2, cabin_l / 2), glass, "vehicle", yaw=yaw, tint=color))
    for along in (length / 2 - 0.8, -(length / 2 - 0.8)):
        boxes.append(Box(_part(base, yaw, (0, -wheel_r, along)), (width / 2 + 0.02, wheel_r, wheel_r),
                         "rubber", "vehicle", yaw=yaw))
    return boxes


def _building(rng: Rng, line: Centerline, s0: float, length: float, side: int, front: float,
              depth: float) -> Box:
    x, z, heading = line.at(s0 + length / 2, side * (front + depth / 2))
    height = rng.uniform(5, 30) if rng.random() < 0.8 else rng.uniform(30, 45)
    facade = str(rng.choice(["facade_brick", "facade_plaster", "facade_panels"]))
    tint = tuple(float(c) for c in rng.uniform(0.85, 1.1, 3))
    return Box((float(x), -height / 2, float(z)), (depth / 2, height / 2, length / 2),
               (facade, facade, "roof", "roof", facade, facade), "building", yaw=float(heading), tint=tint,
               uv_offset=(rng.uniform(0, 10), 0))


def build_street(rng: Rng, n_frames: int, baseline: float) -> Scene:
    """A street with buildings on both sides; the camera drives in the right lane at ~1 m/frame."""
    speed = rng.uniform(0.7, 1.3)
    travel = speed * 1.2 * max(n_frames - 1, 1)
    s_min, s_max = -50.0, travel + 90.0
    line = street_centerline(rng, s_min - 20, s_max + 20)
    road_half = rng.uniform(5.6, 6.6)       # kerb to centre: a 3.2-4 m travel lane plus a parking strip
    sidewalk = rng.uniform(2.2, 4.0)
    lane = rng.uniform(1.6, 2.0)            # camera path, right of the centre line
    height = rng.uniform(1.5, 1.75)
    poses = street_poses(rng, line, n_frames, speed, lane, height)
    boxes: list[Box] = []

    # Ground: one thick slab whose top (y = 0) is the road surface everywhere.
    pad = 300.0
    x_lo, x_hi, z_lo, z_hi = line.x.min() - pad, line.x.max() + pad, line.z.min() - pad, line.z.max() + pad
    boxes.append(Box(((x_lo + x_hi) / 2, 5.0, (z_lo + z_hi) / 2), ((x_hi - x_lo) / 2, 5.0, (z_hi - z_lo) / 2),
                     "asphalt", "road", uv_offset=(float(rng.uniform(0, 100)), float(rng.uniform(0, 100)))))

    for side in (-1, 1):
        # Sidewalk slabs (15 cm kerb), straight pieces following the bends.
        for a, b in line.pieces(s_min, s_max, 40.0, 0.01):
            x, z, heading = line.at((a + b) / 2, side * (road_half + sidewalk / 2))
            boxes.append(Box((float(x), -0.075, float(z)), (sidewalk / 2, 0.075, (b - a) / 2 + 0.05),
                             ("concrete", "concrete", "paving", "concrete", "concrete", "concrete"), "sidewalk",
                             yaw=float(heading), uv_offset=(float(a), 0)))
            # Solid line between the travel lane and the parking strip.
            x, z, heading = line.at((a + b) / 2, side * (road_half - 2.3))
            boxes.append(Box((float(x), -0.002, float(z)), (0.06, 0.002, (b - a) / 2), "lane_paint", "lane_marking",
                             yaw=float(heading)))
        # Buildings with occasional gaps (hedges or set-back buildings in the gaps).
        s = s_min + rng.uniform(-10, 0)
        while s < s_max:
            front = road_half + sidewalk + rng.uniform(0, 2.0)
            if rng.random() < 0.2:
                gap = rng.uniform(4, 12)
                if rng.random() < 0.5:
                    x, z, heading = line.at(s + gap / 2, side * (road_half + sidewalk + 0.6))
                    h = rng.uniform(0.8, 1.6)
                    boxes.append(Box((float(x), -h / 2, float(z)), (0.5, h / 2, gap / 2 - 0.3), "foliage",
                                     "vegetation", yaw=float(heading)))
                else:
                    boxes.append(_building(rng, line, s, gap, side, front + rng.uniform(8, 20), rng.uniform(8, 15)))
                s += gap
            length = rng.uniform(8, 28)
            boxes.append(_building(rng, line, s, length, side, front, rng.uniform(8, 16)))
            s += length
        # Parked cars along the kerb.
        s = s_min + rng.uniform(0, 6)
        while s < s_max:
            slot = rng.uniform(5.5, 8.0)
            if rng.random() < 0.55:
                x, z, heading = line.at(s + slot / 2, side * (road_half - 1.05 + rng.uniform(-0.1, 0.1)))
                boxes += _car(rng, (float(x), float(z)), float(heading + rng.uniform(-0.04, 0.04)))
            s += slot
        # Street lamps and signs on the sidewalk edge.
        s = s_min + rng.uniform(0, 20)
        while s < s_max:
            x, z, heading = line.at(s, side * (road_half + 0.45))
            base, yaw = np.array([x, 0.0, z]), float(heading)
            if rng.random() < 0.75:
                h = rng.uniform(5, 8)
                boxes.append(Box(_part(base, yaw, (0, -h / 2, 0)), (0.07, h / 2, 0.07), "metal", "pole", yaw=yaw))
                boxes.append(Box(_part(base, yaw, (-side * 0.8, -h + 0.05, 0)), (0.8, 0.05, 0.07), "metal", "pole",
                                 yaw=yaw))
                boxes.append(Box(_part(base, yaw, (-side * 1.5, -h + 0.15, 0)), (0.15, 0.07, 0.3), "metal", "pole",
                                 yaw=yaw))
            else:
                h = rng.uniform(2.2, 2.8)
                boxes.append(Box(_part(base, yaw, (0, -h / 2, 0)), (0.04, h / 2, 0.04), "metal", "pole", yaw=yaw))
                boxes.append(Box(_part(base, yaw, (0, -h - 0.3, -0.06)), (0.32, 0.32, 0.015),
                                 ("metal", "metal", "metal", "metal", "sign", "metal"), "pole", yaw=yaw))
            s += rng.uniform(18, 35)
        # Trees at the back of the sidewalk.
        s = s_min + rng.uniform(0, 10)
        while s < s_max:
            if rng.random() < 0.6:
                x, z, heading = line.at(s, side * (road_half + sidewalk - 0.7))
                base = np.array([x, 0.0, z])
                trunk = rng.uniform(2.0, 3.0)
                boxes.append(Box(_part(base, 0.0, (0, -trunk / 2, 0)), (0.14, trunk / 2, 0.14), "bark", "vegetation",
                                 yaw=float(rng.uniform(0, np.pi))))
                for _ in range(2):
                    r = rng.uniform(1.0, 2.0)
                    boxes.append(Box(_part(base, 0.0, (rng.uniform(-0.4, 0.4), -(trunk + r * rng.uniform(0.8, 1.2)),
                                                       rng.uniform(-0.4, 0.4))),
                                     (r, r * rng.uniform(0.7, 1.0), r), "foliage", "vegetation",
                                     yaw=float(rng.uniform(0, np.pi)), uv_offset=(rng.uniform(0, 5), 0)))
            s += rng.uniform(8, 16)
    # Dashed centre line.
    s = s_min
    while s < s_max:
        x, z, heading = line.at(s + 1.5)
        boxes.append(Box((float(x), -0.002, float(z)), (0.06, 0.002, 1.5), "lane_paint", "lane_marking",
                         yaw=float(heading)))
        s += 9.0
    # Occasional stopped cars in the oncoming lane.
    s = 15.0 + rng.uniform(0, 20)
    while s < s_max:
        if rng.random() < 0.35:
            x, z, heading = line.at(s, -lane + rng.uniform(-0.15, 0.15))
            boxes += _car(rng, (float(x), float(z)), float(heading + np.pi + rng.uniform(-0.03, 0.03)))
        s += rng.uniform(12, 30)
    # Blocks closing both ends of the street.
    for s_end in (s_min - 8.0, s_max + 8.0):
        x, z, heading = line.at(s_end)
        h = rng.uniform(12, 30)
        boxes.append(Box((float(x), -h / 2, float(z)), (40.0, h / 2, 6.0),
                         ("facade_plaster",) * 2 + ("roof",) * 2 + ("facade_plaster",) * 2, "building",
                         yaw=float(heading)))

    overcast = rng.random() < 0.25
    elevation, azimuth = rng.uniform(np.radians(15), np.radians(65)), rng.uniform(0, 2 * np.pi)
    sun_dir = (np.cos(elevation) * np.sin(azimuth), -np.sin(elevation), np.cos(elevation) * np.cos(azimuth))
    warm = rng.uniform(0.0, 0.12)
    if overcast:
        lighting = Lighting(ambient=tuple(rng.uniform(0.72, 0.85) * np.array([1.0, 1.0, 1.02])), up_weight=0.35,
                            sun_direction=sun_dir, sun_color=(0.12, 0.12, 0.12))
        sky = Sky(horizon=(0.82, 0.83, 0.85), zenith=(0.68, 0.7, 0.74), cloud_cover=rng.uniform(0.6, 0.9))
    else:
        sun = rng.uniform(0.45, 0.7)
        lighting = Lighting(ambient=tuple(rng.uniform(0.38, 0.52) * np.array([0.95, 0.98, 1.05])), up_weight=0.3,
                            sun_direction=sun_dir, sun_color=tuple(sun * np.array([1.0 + warm, 1.0, 1.0 - warm])))
        sky = Sky(zenith=tuple(np.array([0.3, 0.48, 0.85]) * rng.uniform(0.85, 1.1)),
                  cloud_cover=rng.uniform(0.0, 0.6))
    world = World(boxes, lighting, sky, texture_seed=int(rng.integers(2 ** 31)))
    info = {"speed_m_per_frame": round(float(speed), 3), "road_half_width_m": round(float(road_half), 3),
            "overcast": bool(overcast), "boxes": len(boxes)}
    return Scene(world, poses, _exposure(rng, n_frames), info)


# ----------------------------------------------------------------------------- indoor
def _footprint_clear(center: np.ndarray, half_xz: np.ndarray, yaw: float, path_xz: np.ndarray,
                     clearance: float) -> bool:
    """True when the rotated rectangle (centre, half sizes, yaw) stays ``clearance`` m from every path point."""
    rel = path_xz - center
    c, s = np.cos(yaw), np.sin(yaw)
    lx = np.abs(c * rel[:, 0] - s * rel[:, 1]) - half_xz[0]
    lz = np.abs(s * rel[:, 0] + c * rel[:, 1]) - half_xz[1]
    dist = np.hypot(np.maximum(lx, 0), np.maximum(lz, 0))
    return bool(dist.min() > clearance)


def _furniture(rng: Rng, kind: str, center: np.ndarray, yaw: float) -> tuple[list[Box], np.ndarray]:
    """Boxes of one piece of furniture standing on the floor at (x, z) = center, and its half footprint."""
    base = np.array([center[0], 0.0, center[1]])
    wood_tint = tuple(float(c) for c in rng.uniform(0.8, 1.15, 3))

    def part(offset, half, material, tint=wood_tint):
        return Box(_part(base, yaw, offset), half, material, "furniture", yaw=yaw, tint=tint,
                   uv_offset=(float(rng.uniform(0, 3)), 0.0))

    if kind == "table":
        w, d, h = rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.6), rng.uniform(0.7, 0.78)
        boxes = [part((0, -h + 0.02, 0), (w, 0.02, d), "wood")]
        boxes += [part((sx * (w - 0.06), -(h - 0.04) / 2, sz * (d - 0.06)), (0.025, (h - 0.04) / 2, 0.025), "wood")
                  for sx in (-1, 1) for sz in (-1, 1)]
        return boxes, np.array([w, d])
    if kind == "cabinet":
        w, d, h = rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.3), rng.uniform(0.8, 2.1)
        return [part((0, -h / 2, 0), (w, h / 2, d), "wood")], np.array([w, d])
    if kind == "sofa":
        w, d = rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.5)
        tint = tuple(float(c) for c in rng.uniform(0.7, 1.2, 3))
        boxes = [part((0, -0.22, 0.05), (w, 0.22, d - 0.05), "fabric", tint),
                 part((0, -0.45, -(d - 0.1)), (w, 0.45, 0.1), "fabric", tint),
                 part((-(w - 0.1), -0.32, 0.05), (0.1, 0.32, d - 0.05), "fabric", tint),
                 part((w - 0.1, -0.32, 0.05), (0.1, 0.32, d - 0.05), "fabric", tint)]
        return boxes, np.array([w, d])
    if kind == "chair":
        w = rng.uniform(0.2, 0.25)
        boxes = [part((0, -0.45, 0), (w, 0.025, w), "wood"), part((0, -0.7, -(w - 0.02)), (w, 0.25, 0.02), "wood")]
        boxes += [part((sx * (w - 0.03), -0.22, sz * (w - 0.03)), (0.02, 0.22, 0.02), "wood")
                  for sx in (-1, 1) for sz in (-1, 1)]
        return boxes, np.array([w, w])
    if kind == "bed":
        w, d = rng.uniform(0.45, 0.85), rng.uniform(0.95, 1.05)
        tint = tuple(float(c) for c in rng.uniform(0.7, 1.2, 3))
        return [part((0, -0.25, 0), (w, 0.25, d), "fabric", tint),
                part((0, -0.5, -(d - 0.04)), (w, 0.5, 0.04), "wood")], np.array([w, d])
    # crate / box pile
    s = rng.uniform(0.2, 0.45)
    return [part((0, -s, 0), (s, s, s), str(rng.choice(["wood", "concrete", "fabric"])))], np.array([s, s])


def build_indoor(rng: Rng, n_frames: int, baseline: float) -> Scene:
    """A furnished room (5-9 m × 6-11 m × 2.5-3.2 m); the camera walks an ellipse at 0.08-0.2 m/frame."""
    width, length, height = rng.uniform(5, 9), rng.uniform(6, 11), rng.uniform(2.5, 3.2)
    walls = [str(rng.choice(["wall_paint", "wallpaper", "wall_paint"])) for _ in range(4)]
    floor = str(rng.choice(["floor_wood", "floor_tiles", "carpet"]))
    boxes = [Box((0.0, -height / 2, 0.0), (width / 2, height / 2, length / 2),
                 (walls[0], walls[1], "ceiling", floor, walls[2], walls[3]),
                 ("wall", "wall", "ceiling", "floor", "wall", "wall"), inside=True,
                 uv_offset=(float(rng.uniform(0, 5)), float(rng.uniform(0, 5))))]
    margin_x, margin_z = rng.uniform(1.3, 1.9), rng.uniform(1.3, 1.9)
    semi = (max(width / 2 - margin_x, 0.8), max(length / 2 - margin_z, 0.8))
    cam_h = rng.uniform(1.2, 1.7)
    speed = rng.uniform(0.08, 0.2)
    poses = indoor_poses(rng, n_frames, (0.0, 0.0), semi, cam_h, speed)
    # Keep furniture clear of both cameras.
    right = poses[:, :3, 3] + baseline * poses[:, :3, 0]
    path_xz = np.concatenate([poses[:, [0, 2], 3], right[:, [0, 2]]])
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(80):
        if len(placed) >= 12:
            break
        kind = str(rng.choice(["table", "cabinet", "sofa", "chair", "bed", "crate", "cabinet", "chair"]))
        against_wall = rng.random() < 0.75
        wall = int(rng.integers(4))
        yaw = ([np.pi / 2, -np.pi / 2, 0.0, np.pi][wall] + rng.uniform(-0.03, 0.03) if against_wall
               else rng.uniform(0, 2 * np.pi))
        parts, half = _furniture(rng, kind, np.zeros(2), float(yaw))
        if against_wall:                               # back to the wall, facing into the room
            inset, along = half[1] + rng.uniform(0.03, 0.15), rng.uniform(-0.45, 0.45)
            center = [np.array([-width / 2 + inset, along * length]), np.array([width / 2 - inset, along * length]),
                      np.array([along * width, -length / 2 + inset]), np.array([along * width, length / 2 - inset])][wall]
        else:                                          # free-standing inside the walk
            center = np.array([rng.uniform(-0.6, 0.6) * semi[0], rng.uniform(-0.6, 0.6) * semi[1]])
        corners = center + np.array([[sx * half[0], sz * half[1]] for sx in (-1, 1) for sz in (-1, 1)]) @ \
            yaw_matrix(yaw)[np.ix_([0, 2], [0, 2])].T
        if np.any(np.abs(corners) > np.array([width / 2, length / 2]) - 0.01):
            continue
        if not _footprint_clear(center, half + 0.05, float(yaw), path_xz, 0.45):
            continue
        reach = float(np.hypot(*half))
        if any(np.hypot(*(center - c)) < reach + r for c, r in placed):
            continue
        parts = [replace(b, center=(b.center[0] + float(center[0]), b.center[1], b.center[2] + float(center[1])))
                 for b in parts]
        placed.append((center, reach))
        boxes += parts
    # Pictures and a door on the walls, a lamp fixture on the ceiling.
    for _ in range(int(rng.integers(2, 6))):
        wall = int(rng.integers(4))
        w, h = rng.uniform(0.25, 0.7), rng.uniform(0.2, 0.5)
        y = -rng.uniform(1.2, min(2.0, height - 0.6))
        if wall < 2:
            x, z, half = (-1 if wall == 0 else 1) * (width / 2 - 0.015), rng.uniform(-0.4, 0.4) * length, (0.015, h, w)
        else:
            x, z, half = rng.uniform(-0.4, 0.4) * width, (-1 if wall == 2 else 1) * (length / 2 - 0.015), (w, h, 0.015)
        boxes.append(Box((float(x), float(y), float(z)), half, "painting", "furniture",
                         uv_offset=(float(rng.uniform(0, 1)), 0.0)))
    door_x = rng.uniform(-0.3, 0.3) * width
    boxes.append(Box((float(door_x), -1.025, float(length / 2 - 0.02)), (0.45, 1.025, 0.02), "wood", "wall",
                     tint=(0.9, 0.85, 0.8)))
    lights = []
    for _ in range(int(rng.integers(1, 3))):
        lx, lz = rng.uniform(-0.3, 0.3) * width, rng.uniform(-0.3, 0.3) * length
        boxes.append(Box((float(lx), -height + 0.05, float(lz)), (0.25, 0.05, 0.25), "metal", "ceiling"))
        level = rng.uniform(0.35, 0.6)
        lights.append(PointLight((float(lx), float(-height + 0.3), float(lz)),
                                 tuple(level * np.array([1.0, 0.95, 0.85])), radius=float(rng.uniform(2.5, 4.0))))
    angle = rng.uniform(0, 2 * np.pi)
    lighting = Lighting(ambient=tuple(rng.uniform(0.32, 0.45) * np.array([1.0, 0.97, 0.92])), up_weight=0.2,
                        sun_direction=(float(np.cos(angle)), -0.3, float(np.sin(angle))),
                        sun_color=tuple(rng.uniform(0.1, 0.25) * np.ones(3)), point_lights=tuple(lights))
    world = World(boxes, lighting, Sky(cloud_cover=0.0), texture_seed=int(rng.integers(2 ** 31)))
    info = {"room_m": [round(float(width), 2), round(float(length), 2), round(float(height), 2)],
            "speed_m_per_frame": round(float(speed), 3), "furniture": len(placed), "boxes": len(boxes)}
    return Scene(world, poses, _exposure(rng, n_frames), info)


PRESETS: dict[str, Callable[[Rng, int, float], Scene]] = {"street": build_street, "indoor": build_indoor}


def build_scene(preset: str, rng: Rng, n_frames: int, baseline: float | None = None) -> Scene:
    """A seeded scene of ``preset`` ('street' or 'indoor') with ``n_frames`` camera poses."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    if n_frames < 1:
        raise ValueError(f"n_frames: expected at least 1, got {n_frames}")
    return PRESETS[preset](rng, n_frames, DEFAULT_BASELINE[preset] if baseline is None else baseline)
