"""Camera paths: a curved street centreline, driving poses along it, and an indoor walk.

Poses are T_world_camera (4,4) in the world frame of `world.py` (x right, y down, z forward).
A heading θ is a rotation about the world y axis: direction of travel (sin θ, 0, cos θ), right
(cos θ, 0, −sin θ). Motion is smooth: sums of a few random sinusoids give the wobble.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Rng = np.random.Generator


def smooth_signal(rng: Rng, n: int, amplitude: float, min_period: float, max_period: float,
                  terms: int = 3) -> np.ndarray:
    """A smooth random signal (n,) with |value| <= amplitude: weighted random sinusoids whose
    periods (in samples) lie in [min_period, max_period]."""
    i = np.arange(n, dtype=np.float64)
    periods = rng.uniform(min_period, max_period, terms)
    phases = rng.uniform(0, 2 * np.pi, terms)
    weights = rng.uniform(0.5, 1.0, terms)
    signal = (weights[:, None] * np.sin(2 * np.pi * i[None, :] / periods[:, None] + phases[:, None])).sum(axis=0)
    return amplitude * signal / weights.sum()


def rotation_ypr(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R_world_camera (3,3) = R_y(yaw) · R_x(pitch) · R_z(roll); pitch > 0 looks up (y is down)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_y @ r_x @ r_z


def pose_matrix(rotation: np.ndarray, position: np.ndarray) -> np.ndarray:
    """T (4,4) from a rotation (3,3) and a translation (3,)."""
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = position
    return T


@dataclass
class Centerline:
    """A street centreline on the ground sampled every ``ds`` metres of arc length ``s`` (from s[0])."""

    s: np.ndarray        # (M,) arc length, metres
    x: np.ndarray        # (M,) world x
    z: np.ndarray        # (M,) world z
    heading: np.ndarray  # (M,) radians

    def at(self, s: np.ndarray | float, offset: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
        """(x, z, heading) at arc length ``s``, moved ``offset`` metres to the right of travel."""
        heading = np.interp(s, self.s, self.heading)
        x = np.interp(s, self.s, self.x) + np.cos(heading) * offset
        z = np.interp(s, self.s, self.z) - np.sin(heading) * offset
        return x, z, heading

    def pieces(self, s0: float, s1: float, max_length: float, max_turn: float = 0.01) -> list[tuple[float, float]]:
        """Split [s0, s1] into straight-enough pieces (heading change <= max_turn rad, length <= max_length)."""
        out, start = [], s0
        while start < s1:
            end = min(start + max_length, s1)
            h0 = np.interp(start, self.s, self.heading)
            probe = np.linspace(start, end, 16)
            turn = np.abs(np.interp(probe, self.s, self.heading) - h0)
            if turn.max() > max_turn:
                end = max(probe[np.argmax(turn > max_turn)], start + 1.0)
            out.append((start, min(end, s1)))
            start = end
        return out


def street_centerline(rng: Rng, s_min: float, s_max: float, ds: float = 0.5) -> Centerline:
    """A centreline of straight stretches and gentle bends (radius 50-150 m, turns <= ~50°).

    It starts straight along +z through the origin at s = 0, so the first frames look down a street.
    """
    s = np.arange(s_min, s_max + ds, ds)
    curvature = np.zeros_like(s)
    pos = 30.0 + rng.uniform(0, 40)
    while pos < s_max:
        length = rng.uniform(40, 110)
        if rng.random() < 0.55:
            kappa = rng.choice([-1, 1]) / rng.uniform(50, 150)
            length = min(length, 0.9 / abs(kappa))
            curvature[(s >= pos) & (s < pos + length)] = kappa
        pos += length + rng.uniform(20, 60)
    heading = np.cumsum(curvature) * ds
    heading -= np.interp(0.0, s, heading)
    x = np.cumsum(np.sin(heading)) * ds
    z = np.cumsum(np.cos(heading)) * ds
    x -= np.interp(0.0, s, x)
    z -= np.interp(0.0, s, z)
    return Centerline(s, x, z, heading)


def street_poses(rng: Rng, line: Centerline, n_frames: int, speed: float, lane_offset: float,
                 height: float) -> np.ndarray:
    """Driving poses (N,4,4) starting at s = 0: ``speed`` m/frame (±20 % smooth variation), lateral
    weave ±0.3 m, yaw ±1.5°, pitch ±0.8°, roll ±0.4°, bounce ±2 cm."""
    speeds = speed * (1 + smooth_signal(rng, n_frames, 0.2, 40, 160))
    s = np.concatenate([[0.0], np.cumsum(speeds[:-1])])
    lateral = lane_offset + smooth_signal(rng, n_frames, 0.3, 60, 240)
    x, z, heading = line.at(s, lateral)
    steer = np.arctan(np.gradient(lateral, s) if n_frames > 1 else np.zeros(1))
    yaw = heading + steer + smooth_signal(rng, n_frames, np.radians(1.5), 20, 90)
    pitch = smooth_signal(rng, n_frames, np.radians(0.8), 8, 40)
    roll = smooth_signal(rng, n_frames, np.radians(0.4), 10, 50)
    y = -(height + smooth_signal(rng, n_frames, 0.02, 6, 20))
    return np.stack([pose_matrix(rotation_ypr(yaw[i], pitch[i], roll[i]), np.array([x[i], y[i], z[i]]))
                     for i in range(n_frames)])


def indoor_poses(rng: Rng, n_frames: int, center: tuple[float, float], semi_axes: tuple[float, float],
                 height: float, speed: float) -> np.ndarray:
    """A walk (N,4,4) around an ellipse in the x-z plane at ``speed`` m/frame, looking ahead and
    somewhat into the room, with hand-held wobble (yaw ±4°, pitch ±3°, roll ±1°)."""
    a, b = semi_axes
    direction = rng.choice([-1.0, 1.0])
    phi = rng.uniform(0, 2 * np.pi)
    phis = []
    for _ in range(n_frames):
        phis.append(phi)
        step_len = np.hypot(a * np.sin(phi), b * np.cos(phi))           # |d position / d phi|
        phi += direction * speed / max(step_len, 1e-6)
    phis = np.asarray(phis)
    x = center[0] + a * np.cos(phis)
    z = center[1] + b * np.sin(phis)
    tangent = np.arctan2(-a * np.sin(phis) * direction, b * np.cos(phis) * direction)
    to_center = np.arctan2(center[0] - x, center[1] - z)
    turn_in = np.angle(np.exp(1j * (to_center - tangent)))
    bias = rng.uniform(0.1, 0.45)
    yaw = tangent + np.clip(turn_in, -bias, bias) + smooth_signal(rng, n_frames, np.radians(4), 15, 60)
    pitch = rng.uniform(-0.12, 0.02) + smooth_signal(rng, n_frames, np.radians(3), 10, 50)
    roll = smooth_signal(rng, n_frames, np.radians(1), 10, 40)
    y = -(height + smooth_signal(rng, n_frames, 0.02, 4, 12))
    return np.stack([pose_matrix(rotation_ypr(yaw[i], pitch[i], roll[i]), np.array([x[i], y[i], z[i]]))
                     for i in range(n_frames)])
