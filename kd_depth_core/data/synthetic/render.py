"""Exact analytic ray casting of a `World` (numpy, vectorised).

For every pixel centre (u, v) the ray is o + t·R·K⁻¹[u, v, 1]ᵀ; because the camera-frame
direction has z = 1, the hit parameter t IS the depth along the optical axis. Each box is tested
(slab method) only on the pixels inside its screen rectangle: the projection of the box clipped
to the near plane, a conservative bound. Boxes covering many pixels are intersected one by one
on their rectangle (front to back, skipped when already hidden); all small boxes together in
one batch of (pixel, box) pairs. A z-buffer keeps the nearest hit; one vectorised shading pass
then finds face, normal, texture coordinates and semantic class of every hit pixel. Several
cameras (left + right of a stereo pair) are rendered together. Arrays are kept as separate
x/y/z planes (structure of arrays), which numpy processes fastest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kd_depth_core.data.synthetic.textures import TextureAtlas
from kd_depth_core.data.synthetic.world import CLASS_ID, SKY_CLASS, World

NEAR = 1e-3            # metres; hits closer than this are ignored
BATCH_MAX_PIXELS = 1500  # boxes whose rectangles (all cameras) cover fewer pixels go to the batched path
SHADE_CHUNK = 16384      # pixels shaded per vectorised pass

_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


@dataclass
class RenderedView:
    """One rendered camera: ``rgb`` uint8 (H,W,3), ``depth`` float32 (H,W) metres along z (0 = sky),
    ``semantic`` uint8 (H,W) ids into `world.SEMANTIC_CLASSES`."""

    rgb: np.ndarray
    depth: np.ndarray
    semantic: np.ndarray


def kitti_like_K(width: int, height: int) -> np.ndarray:
    """KITTI-like intrinsics scaled to (width, height): fx = 0.58 W, fy = 1.92 H, principal point
    deliberately off-centre (0.515 W, 0.485 H) so code that assumes a centred one is caught."""
    return np.array([[0.58 * width, 0.0, 0.515 * width],
                     [0.0, 1.92 * height, 0.485 * height],
                     [0.0, 0.0, 1.0]], dtype=np.float64)


def stereo_right_pose(T_world_left: np.ndarray, baseline: float) -> np.ndarray:
    """T_world_right of a rectified pair: the right camera sits at +x (left optical frame) by ``baseline`` m."""
    offset = np.eye(4)
    offset[0, 3] = baseline
    return np.asarray(T_world_left, dtype=np.float64) @ offset


class Renderer:
    """Renders a fixed `World`; packs the boxes into arrays and builds the texture atlas once."""

    def __init__(self, world: World) -> None:
        self.world = world
        boxes = world.boxes
        p = len(boxes)
        self.n_boxes = p
        self.centers = np.array([b.center for b in boxes], dtype=np.float64).reshape(p, 3)
        self.half = np.array([b.half_size for b in boxes], dtype=np.float64).reshape(p, 3)
        yaw = np.array([b.yaw for b in boxes], dtype=np.float64)
        self.cos, self.sin = np.cos(yaw), np.sin(yaw)
        self.cos32, self.sin32 = self.cos.astype(np.float32), self.sin.astype(np.float32)
        self.half32 = self.half.astype(np.float32)
        # 1-D per-box tables: numpy gathers from 1-D arrays are several times faster than 2-D ones.
        self.inv_hx, self.inv_hy, self.inv_hz = (np.ascontiguousarray(1.0 / self.half[:, a], dtype=np.float32)
                                                 for a in range(3))
        self.half_y = np.ascontiguousarray(self.half[:, 1], dtype=np.float32)
        self.inside = np.array([b.inside for b in boxes], dtype=bool)
        self.tint = np.array([b.tint for b in boxes], dtype=np.float32).reshape(p, 3)
        self.uv_offset = np.array([b.uv_offset for b in boxes], dtype=np.float32).reshape(p, 2)
        self.offset_u, self.offset_v = (np.ascontiguousarray(self.uv_offset[:, a]) for a in range(2))
        self.corners = np.stack([b.corners() for b in boxes]) if p else np.zeros((0, 8, 3))
        names = world.materials()
        if world.sky.cloud_cover > 0 and "clouds" not in names:
            names.append("clouds")
        self.atlas = TextureAtlas.from_materials(names, world.texture_seed)
        self.face_material = np.array([[self.atlas.index[m] for m in b.face_materials] for b in boxes],
                                      dtype=np.int64).reshape(p * 6)
        self.face_semantic = np.array([[CLASS_ID[c] for c in b.face_semantics] for b in boxes],
                                      dtype=np.uint8).reshape(p * 6)
        light = world.lighting
        self.ambient = np.asarray(light.ambient, dtype=np.float32)
        sun = np.asarray(light.sun_direction, dtype=np.float64)
        self.sun_dir = (sun / max(np.linalg.norm(sun), 1e-12)).astype(np.float32)
        self.sun_color = np.asarray(light.sun_color, dtype=np.float32)
        # Per-face tables (index box * 6 + face): world normal, and tint x directional irradiance
        # (ambient + sun depend only on the face normal, so they are computed once per world).
        local = np.zeros((6, 3))
        local[np.arange(6), np.arange(6) // 2] = [-1, 1, -1, 1, -1, 1]
        n_loc = local[None, :, :] * np.where(self.inside, -1.0, 1.0)[:, None, None]          # (P,6,3)
        c, s = self.cos[:, None], self.sin[:, None]
        normals = np.stack([c * n_loc[..., 0] + s * n_loc[..., 2], n_loc[..., 1], c * n_loc[..., 2] - s * n_loc[..., 0]],
                           axis=-1).reshape(p * 6, 3)
        self.face_normal = tuple(np.ascontiguousarray(normals[:, a], dtype=np.float32) for a in range(3))
        irradiance = self._directional_light(normals)                                        # (P*6,3)
        tint = np.repeat(self.tint, 6, axis=0)
        self.face_irradiance = tuple(np.ascontiguousarray(irradiance[:, a], dtype=np.float32) for a in range(3))
        self.face_tint = tuple(np.ascontiguousarray(tint[:, a], dtype=np.float32) for a in range(3))
        self.face_color = tuple(np.ascontiguousarray(irradiance[:, a] * tint[:, a], dtype=np.float32)
                                for a in range(3))
        self._ray_cache: tuple | None = None

    def _directional_light(self, normals: np.ndarray) -> np.ndarray:
        """Lambertian irradiance (N,3) of unit ``normals`` (N,3): hemispheric ambient + sun."""
        light = self.world.lighting
        up = -normals[:, 1]                                                       # world up is -y
        ambient_scale = (1 - light.up_weight) + light.up_weight * (0.5 + 0.5 * up)
        sun = np.maximum(normals @ self.sun_dir.astype(np.float64), 0)
        return ambient_scale[:, None] * self.ambient + sun[:, None] * self.sun_color

    # ------------------------------------------------------------------ rays
    def _camera_rays(self, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Camera-frame rays K⁻¹[u, v, 1] at pixel centres as planes x, y (H,W) float64 (z = 1) and |d| float32."""
        key = (K.tobytes(), width, height)
        if self._ray_cache is None or self._ray_cache[0] != key:
            v, u = np.mgrid[0:height, 0:width].astype(np.float64)
            y = (v - K[1, 2]) / K[1, 1]
            x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
            length = np.sqrt(x * x + y * y + 1.0).astype(np.float32)
            self._ray_cache = (key, x, y, length)
        return self._ray_cache[1], self._ray_cache[2], self._ray_cache[3]

    # ------------------------------------------------------------------ culling
    def _screen_rects(self, R: np.ndarray, origin: np.ndarray, K: np.ndarray, width: int,
                      height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per box: pixel rectangle (u0,u1,v0,v1) (half-open) that can see it, visibility, nearest depth."""
        pc = (self.corners - origin) @ R                                  # (P,8,3) camera frame
        a, b = pc[:, _EDGES[:, 0]], pc[:, _EDGES[:, 1]]
        za, zb = a[..., 2], b[..., 2]
        crosses = (za - NEAR) * (zb - NEAR) < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(crosses, (NEAR - za) / (zb - za), 0.0)
        pts = np.concatenate([pc, a + s[..., None] * (b - a)], axis=1)   # corners + near-plane cuts (P,20,3)
        valid = np.concatenate([pc[..., 2] >= NEAR, crosses], axis=1)
        z = np.where(valid, pts[..., 2], 1.0)
        u = (K[0, 0] * pts[..., 0] + K[0, 1] * pts[..., 1]) / z + K[0, 2]
        v = K[1, 1] * pts[..., 1] / z + K[1, 2]
        u_lo = np.where(valid, u, np.inf).min(axis=1)
        u_hi = np.where(valid, u, -np.inf).max(axis=1)
        v_lo = np.where(valid, v, np.inf).min(axis=1)
        v_hi = np.where(valid, v, -np.inf).max(axis=1)
        with np.errstate(invalid="ignore"):
            rect = np.stack([np.floor(np.clip(u_lo, -2, width + 2)) - 1, np.floor(np.clip(u_hi, -2, width + 2)) + 2,
                             np.floor(np.clip(v_lo, -2, height + 2)) - 1, np.floor(np.clip(v_hi, -2, height + 2)) + 2],
                            axis=1)
        rect = np.clip(np.nan_to_num(rect), 0, [width, width, height, height]).astype(np.int64)
        zmin = np.where(valid, pts[..., 2], np.inf).min(axis=1)
        rect[self.inside] = (0, width, 0, height)
        zmin[self.inside] = NEAR
        visible = (valid.any(axis=1) | self.inside) & (rect[:, 0] < rect[:, 1]) & (rect[:, 2] < rect[:, 3])
        return rect, visible, zmin

    # ------------------------------------------------------------------ main entry
    def render(self, poses: np.ndarray | list[np.ndarray], K: np.ndarray, width: int, height: int,
               exposure: float | np.ndarray = 1.0) -> list[RenderedView]:
        """Render cameras with poses T_world_camera (C,4,4) sharing intrinsics K (3,3) at width×height.

        ``exposure``: brightness multiplier, one value or one per camera.
        """
        poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K: expected a 3x3 intrinsics matrix with positive fx, fy, got {K.tolist()}")
        if width <= 0 or height <= 0:
            raise ValueError(f"width/height: expected positive pixels, got {width}x{height}")
        n_cam = poses.shape[0]
        x, y, ray_len = self._camera_rays(K, width, height)
        # World ray directions as contiguous planes (3,C,H,W): d_world = R_world_camera · (x, y, 1).
        R = poses[:, :3, :3]
        dirs = (R[:, :, 0, None, None] * x + R[:, :, 1, None, None] * y + R[:, :, 2, None, None])
        dirs = np.ascontiguousarray(dirs.transpose(1, 0, 2, 3), dtype=np.float32)
        origins = poses[:, :3, 3]
        with np.errstate(divide="ignore"):
            inv = np.float32(1.0) / dirs
        zbuf = np.full((n_cam, height, width), np.inf, dtype=np.float32)
        ids = np.full((n_cam, height, width), -1, dtype=np.int32)
        if self.n_boxes:
            self._rasterize(dirs, inv, origins, R, K, zbuf, ids)
        exposure = np.broadcast_to(np.asarray(exposure, np.float32), (n_cam,))
        return self._shade(dirs, np.broadcast_to(ray_len, (n_cam, height, width)), origins, zbuf, ids, K, exposure)

    def _rasterize(self, dirs: np.ndarray, inv: np.ndarray, origins: np.ndarray, R: np.ndarray, K: np.ndarray,
                   zbuf: np.ndarray, ids: np.ndarray) -> None:
        n_cam, height, width = zbuf.shape
        rects, vis, zmins = map(np.stack, zip(*(self._screen_rects(R[c], origins[c], K, width, height)
                                                for c in range(n_cam))))
        area = np.where(vis, (rects[..., 1] - rects[..., 0]) * (rects[..., 3] - rects[..., 2]), 0)   # (C,P)
        visible = vis.any(axis=0)
        big = visible & ((area.sum(axis=0) >= BATCH_MAX_PIXELS) | self.inside)
        small = visible & ~big
        # Large boxes: one by one on the union rectangle of all cameras, front to back.
        huge = np.iinfo(np.int64).max // 4
        u0 = np.where(vis, rects[..., 0], huge).min(axis=0)
        u1 = np.where(vis, rects[..., 1], -huge).max(axis=0)
        v0 = np.where(vis, rects[..., 2], huge).min(axis=0)
        v1 = np.where(vis, rects[..., 3], -huge).max(axis=0)
        zmin = np.where(vis, zmins, np.inf).min(axis=0)
        order = np.flatnonzero(big)
        for k in order[np.argsort(zmin[order], kind="stable")]:
            self._intersect_box(int(k), slice(v0[k], v1[k]), slice(u0[k], u1[k]), dirs, inv, origins, zbuf, ids,
                                float(zmin[k]))
        if small.any():
            self._intersect_batch(np.flatnonzero(small), rects, vis, dirs, origins, zbuf, ids)

    def _local_origins(self, boxes: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Camera origins in the frames of ``boxes``: (len(boxes), C, 3) float64."""
        rel = origins[None, :, :] - self.centers[boxes, None, :]
        c, s = self.cos[boxes, None], self.sin[boxes, None]
        return np.stack([c * rel[..., 0] - s * rel[..., 2], rel[..., 1], s * rel[..., 0] + c * rel[..., 2]], axis=-1)

    def _intersect_box(self, k: int, rows: slice, cols: slice, dirs: np.ndarray, inv: np.ndarray,
                       origins: np.ndarray, zbuf: np.ndarray, ids: np.ndarray, zmin: float) -> None:
        zr = zbuf[:, rows, cols]
        if zmin > zr.max():
            return                                  # everything in the rectangle is already nearer
        n_cam = origins.shape[0]
        o_loc = self._local_origins(np.array([k]), origins)[0]           # (C,3)
        if abs(self.sin[k]) > 1e-12:
            c, s = self.cos32[k], self.sin32[k]
            dx, dz = dirs[0][:, rows, cols], dirs[2][:, rows, cols]
            with np.errstate(divide="ignore"):
                inv_loc = (np.float32(1.0) / (c * dx - s * dz), inv[1][:, rows, cols],
                           np.float32(1.0) / (s * dx + c * dz))
        else:
            inv_loc = (inv[0][:, rows, cols], inv[1][:, rows, cols], inv[2][:, rows, cols])
        t_near = t_far = None
        with np.errstate(invalid="ignore"):
            for a in range(3):
                lo = (-self.half[k, a] - o_loc[:, a]).astype(np.float32).reshape(n_cam, 1, 1)
                hi = (self.half[k, a] - o_loc[:, a]).astype(np.float32).reshape(n_cam, 1, 1)
                t1, t2 = lo * inv_loc[a], hi * inv_loc[a]
                near, far = np.minimum(t1, t2), np.maximum(t1, t2)
                t_near = near if t_near is None else np.maximum(t_near, near)
                t_far = far if t_far is None else np.minimum(t_far, far)
            t = t_far if self.inside[k] else t_near
            hit = (t_near <= t_far) & (t > NEAR) & (t < zr)
        np.copyto(zr, t, where=hit)
        np.copyto(ids[:, rows, cols], np.int32(k), where=hit)

    def _intersect_batch(self, boxes: np.ndarray, rects: np.ndarray, vis: np.ndarray, dirs: np.ndarray,
                         origins: np.ndarray, zbuf: np.ndarray, ids: np.ndarray) -> None:
        """Intersect many small (outside-visible) boxes at once over their (pixel, box) pairs."""
        n_cam, height, width = zbuf.shape
        cam, which = np.nonzero(vis[:, boxes])
        k = boxes[which]
        r = rects[cam, k]
        w, h = r[:, 1] - r[:, 0], r[:, 3] - r[:, 2]
        counts = w * h
        total = int(counts.sum())
        if total == 0:
            return
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        j = np.arange(total) - starts
        wr = np.repeat(w, counts)
        pix = (np.repeat(cam * height + r[:, 2], counts) + j // wr) * width + np.repeat(r[:, 0], counts) + j % wr
        pair_cam, pair_box = np.repeat(cam, counts), np.repeat(k, counts)
        o_loc = self._local_origins(boxes, origins).astype(np.float32)   # (B,C,3)
        slot = np.empty(self.n_boxes, dtype=np.int64)
        slot[boxes] = np.arange(boxes.size)
        o_pair = o_loc[slot[pair_box], pair_cam]                        # (M,3)
        flat = dirs.reshape(3, -1)
        dx, dy, dz = flat[0][pix], flat[1][pix], flat[2][pix]
        c, s = self.cos32[pair_box], self.sin32[pair_box]
        local = (c * dx - s * dz, dy, s * dx + c * dz)
        half = self.half32[pair_box]
        t_near = t_far = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):
                inv_a = np.float32(1.0) / local[a]
                t1 = (-half[:, a] - o_pair[:, a]) * inv_a
                t2 = (half[:, a] - o_pair[:, a]) * inv_a
                near, far = np.minimum(t1, t2), np.maximum(t1, t2)
                t_near = near if t_near is None else np.maximum(t_near, near)
                t_far = far if t_far is None else np.minimum(t_far, far)
            zflat = zbuf.reshape(-1)
            hit = np.flatnonzero((t_near <= t_far) & (t_near > NEAR) & (t_near < zflat[pix]))
        if hit.size == 0:
            return
        t, pix, box = t_near[hit], pix[hit], pair_box[hit]
        order = np.lexsort((t, pix))                                    # nearest first within each pixel
        pix, t, box = pix[order], t[order], box[order]
        first = np.ones(pix.size, dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        zflat[pix[first]] = t[first]
        ids.reshape(-1)[pix[first]] = box[first].astype(np.int32)

    # ------------------------------------------------------------------ shading
    def _shade(self, dirs: np.ndarray, ray_len: np.ndarray, origins: np.ndarray, zbuf: np.ndarray, ids: np.ndarray,
               K: np.ndarray, exposure: np.ndarray) -> list[RenderedView]:
        n_cam, height, width = zbuf.shape
        flat_ids = ids.reshape(-1)
        flat_dirs = dirs.reshape(3, -1)
        flat_len = np.ascontiguousarray(ray_len).reshape(-1)
        rgb = np.empty((3, n_cam * height * width), dtype=np.float32)
        semantic = np.full(n_cam * height * width, SKY_CLASS, dtype=np.uint8)
        hit = np.flatnonzero(flat_ids >= 0)
        sky = np.flatnonzero(flat_ids < 0)
        if sky.size:
            rgb[:, sky] = self._sky_color(flat_dirs[:, sky], flat_len[sky], K)
        flat_z = zbuf.reshape(-1)
        rel = (origins[:, None, :] - self.centers[None, :, :]).astype(np.float32).reshape(-1, 3)  # (C*P,3)
        rel = tuple(np.ascontiguousarray(rel[:, a]) for a in range(3))
        for start in range(0, hit.size, SHADE_CHUNK):                  # chunks stay in cache: much faster
            idx = hit[start:start + SHADE_CHUNK]
            colors, classes = self._surface_color(idx // (height * width), flat_ids[idx], flat_dirs[:, idx],
                                                  flat_len[idx], flat_z[idx], rel, K)
            rgb[:, idx] = colors
            semantic[idx] = classes
        rgb = rgb.reshape(3, n_cam, height, width) * exposure[None, :, None, None]
        rgb8 = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 3, 0)
        depth = np.where(np.isfinite(zbuf), zbuf, np.float32(0)).astype(np.float32)
        semantic = semantic.reshape(n_cam, height, width)
        return [RenderedView(np.ascontiguousarray(rgb8[c]), depth[c], semantic[c]) for c in range(n_cam)]

    def _surface_color(self, cam: np.ndarray, prim: np.ndarray, d: np.ndarray, d_len: np.ndarray, t: np.ndarray,
                       rel: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour planes (3,N) and class ids (N,) of hit pixels (camera, box, world direction (3,N), depth);
        ``rel``: x, y, z planes (C*P,) of camera origins minus box centres."""
        key = cam * self.n_boxes + prim
        px = rel[0][key] + t * d[0]                                             # hit - centre, world axes
        py = rel[1][key] + t * d[1]
        pz = rel[2][key] + t * d[2]
        c, s = self.cos32[prim], self.sin32[prim]
        qx, qy, qz = c * px - s * pz, py, s * px + c * pz                       # box frame
        rx, ry, rz = np.abs(qx) * self.inv_hx[prim], np.abs(qy) * self.inv_hy[prim], np.abs(qz) * self.inv_hz[prim]
        axis = np.where((rx >= ry) & (rx >= rz), 0, np.where(ry >= rz, 1, 2))
        q_axis = np.where(axis == 0, qx, np.where(axis == 1, qy, qz))
        face = prim * 6 + 2 * axis + (q_axis > 0)
        material = self.face_material[face]
        classes = self.face_semantic[face]
        # Texture coordinates (m): u along the face; v = height above the box bottom on vertical faces.
        u = np.where(axis == 0, qz, qx) + self.offset_u[prim]
        v = np.where(axis == 1, qz + self.offset_v[prim], self.half_y[prim] - qy)
        nx, ny, nz = (n[face] for n in self.face_normal)
        # Pixel footprint on the surface (m) for the mip level: distance / focal, widened at grazing angles.
        cos_incidence = np.abs(nx * d[0] + ny * d[1] + nz * d[2]) / d_len
        focal = np.float32(np.sqrt(K[0, 0] * K[1, 1]))
        footprint = t * d_len / (focal * np.sqrt(np.maximum(cos_incidence, np.float32(0.02))))
        color = self.atlas.sample(material, u, v, footprint)                   # albedo (3,N)
        if self.world.lighting.point_lights:
            light = self._point_light(nx, ny, nz, (px, py, pz), prim)
            for ch in range(3):
                color[ch] *= self.face_tint[ch][face] * (self.face_irradiance[ch][face] + light[ch])
        else:
            for ch in range(3):
                color[ch] *= self.face_color[ch][face]                          # tint x (ambient + sun)
        return color, classes

    def _point_light(self, nx: np.ndarray, ny: np.ndarray, nz: np.ndarray, p_rel: tuple,
                     prim: np.ndarray) -> np.ndarray:
        """Irradiance (3,N) from the point lights at hit points (box centre + ``p_rel``): Lambert x falloff."""
        irradiance = np.zeros((3, prim.size), dtype=np.float32)
        for pl in self.world.lighting.point_lights:
            lx, ly, lz = (np.float32(pl.position[a] - self.centers[:, a])[prim] - p_rel[a] for a in range(3))
            dist2 = lx * lx + ly * ly + lz * lz
            lambert = np.maximum(nx * lx + ny * ly + nz * lz, 0) / np.sqrt(np.maximum(dist2, 1e-6))
            irradiance += (lambert / (1 + dist2 / np.float32(pl.radius ** 2))) * \
                np.asarray(pl.color, dtype=np.float32)[:, None]
        return irradiance

    def _sky_color(self, d: np.ndarray, d_len: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Sky colour planes (3,N) from the ray direction only (at infinity, so stereo-consistent)."""
        sky = self.world.sky
        elevation = -d[1] / d_len
        mix = np.clip(elevation, 0, 1) ** np.float32(0.6)
        horizon, zenith = np.asarray(sky.horizon, np.float32)[:, None], np.asarray(sky.zenith, np.float32)[:, None]
        color = np.where(elevation < 0, horizon * np.float32(0.8), horizon + (zenith - horizon) * mix)
        if sky.cloud_cover > 0:
            height_m = np.float32(800.0)
            e = np.maximum(elevation, np.float32(0.02))
            scale = height_m / (e * d_len)
            focal = np.float32(np.sqrt(K[0, 0] * K[1, 1]))
            material = np.full(d.shape[1], self.atlas.index["clouds"], dtype=np.int64)
            footprint = height_m / (focal * e * np.sqrt(e))          # distance H/e over f·sqrt(cos), cos = e
            density = self.atlas.sample(material, d[0] * scale, d[2] * scale, footprint)[0]
            amount = np.clip((density - np.float32(1.0 - sky.cloud_cover)) * 2.5, 0, 1) * np.clip(elevation * 8, 0, 1)
            color = color + (np.asarray(sky.cloud_color, np.float32)[:, None] - color) * amount
        return color
