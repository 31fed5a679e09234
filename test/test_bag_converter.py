"""Bags written by rosbags' own writers convert into sequences whose frames, stamps, intrinsics and lidar depth
match the sources exactly (values worked out by hand)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import bag_fixtures as bf  # noqa: E402

from kd_depth_core.data.sequence import Sequence, validate_sequence  # noqa: E402
from kd_depth_ros import bag_converter  # noqa: E402
from kd_depth_ros.bag_converter import ConvertOptions, convert_bag  # noqa: E402
from kd_depth_ros.lidar import cloud_to_xyz  # noqa: E402

W, H = 64, 48
K = bf.intrinsics(W, H, 50.0)  # fx = fy = 50, cx = 32, cy = 24
BASELINE = 0.12
P_RIGHT = np.array([[50.0, 0, 32, -50.0 * BASELINE], [0, 50, 24, 0], [0, 0, 1, 0]])
T0 = 1_000_000_000
DT = 100_000_000  # 10 Hz
# ROS base -> optical rotation (x right, y down, z forward) as a quaternion (x, y, z, w)
OPTICAL_Q = (-0.5, 0.5, -0.5, 0.5)
TF = [("base_link", "lidar", (0.0, 0.0, 0.5), (0, 0, 0, 1)),
      ("base_link", "camera_optical_frame", (0.2, 0.0, 0.3), OPTICAL_Q)]
# Lidar points and where they land (worked by hand: X_base = X_lidar + (0,0,0.5);
# X_opt = (-(y_b - 0), -(z_b - 0.3), x_b - 0.2); u = 50 x/z + 32, v = 50 y/z + 24).
LIDAR_POINTS = np.array([
    [5.2, -1.0, -0.7],    # optical (1, 0.5, 5)      -> pixel (u=42, v=29), 5 m
    [10.2, -2.0, -1.2],   # optical (2, 1, 10)       -> same pixel, 10 m: hidden behind the 5 m point
    [2.7, 0.5, 0.05],     # optical (-0.5, -0.25, 2.5) -> pixel (22, 19), 2.5 m
    [-3.0, 0.0, 0.0],     # behind the camera
    [5.2, -10.0, -0.2],   # optical (10, 0, 5): u = 132, outside the image
    [np.nan, 1.0, 1.0],   # invalid return
])
EXPECTED_DEPTH = {(29, 42): 5.0, (19, 22): 2.5}


def stereo_lidar_bag(path: Path, storage: str) -> tuple[Path, list, list, list[int]]:
    """8 left frames (Image rgb8) at 10 Hz; right (CompressedImage png) 2 ms later except frame 3; a lidar cloud
    10 ms after each frame; log times deliberately out of step with header stamps. Returns the bag, the left and
    right frames and the stamps of the frames expected in the output."""
    left = bf.textured_frames(8, W, H, seed=1)
    right = bf.textured_frames(8, W, H, seed=2)
    msgs = [bf.tf_static(0, TF)]
    for i in range(8):
        stamp = T0 + i * DT
        msgs += [bf.image("/stereo/left/image_raw", left[i], stamp, log_ns=stamp + 40_000_000),
                 bf.camera_info("/stereo/left/camera_info", stamp, W, H, K, log_ns=stamp + 20_000_000),
                 bf.camera_info("/stereo/right/camera_info", stamp + 2_000_000, W, H, K, P=P_RIGHT,
                                frame_id="right_optical_frame", log_ns=stamp + 20_000_000),
                 bf.pointcloud("/lidar/points", LIDAR_POINTS, stamp + 10_000_000, frame_id="lidar",
                               log_ns=stamp + 60_000_000)]
        if i != 3:
            msgs.append(bf.compressed("/stereo/right/image_raw/compressed", right[i], stamp + 2_000_000,
                                      frame_id="right_optical_frame", log_ns=stamp + 5_000_000))
    bag = bf.write_bag(path, msgs, storage)
    return bag, left, right, [T0 + i * DT for i in range(8) if i != 3]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_stereo_lidar_bag_converts_exactly(tmp_path, storage):
    bag, left, right, stamps = stereo_lidar_bag(tmp_path / f"drive_{storage}", storage)
    out = tmp_path / "out"
    options = ConvertOptions(image_topic="/stereo/left/image_raw", right_topic="/stereo/right/image_raw/compressed",
                             lidar_topic="/lidar/points")
    summary = convert_bag(bag, out, options)
    assert summary.error is None
    assert summary.sequences_written == [f"drive_{storage}_000"]
    assert summary.frames_read == 8 and summary.frames_written == 7
    assert summary.dropped == {"no stereo partner within tolerance": 1}
    assert summary.frames_with_depth == 7
    seq = validate_sequence(out / f"drive_{storage}_000")
    assert seq.stamps_ns.tolist() == stamps  # header stamps, not log times
    np.testing.assert_array_equal(seq.camera.K, K)
    assert seq.camera.baseline == pytest.approx(BASELINE, abs=1e-12)
    assert seq.camera.frame_id == "camera_optical_frame" and seq.camera.right_frame_id == "right_optical_frame"
    assert seq.has_right and seq.has_depth
    source = [i for i in range(8) if i != 3]
    for k, i in enumerate(source):
        np.testing.assert_array_equal(seq.load_left(k), left[i])
        np.testing.assert_array_equal(seq.load_right(k), right[i])
        depth = seq.load_depth(k)
        expected = np.zeros((H, W), np.float32)
        for (v, u), z in EXPECTED_DEPTH.items():
            expected[v, u] = z
        np.testing.assert_array_equal(depth, expected)
    assert seq.meta["source"]["topics"]["lidar"] == "/lidar/points"


def test_ros1_bag_bgr8_converts_exactly(tmp_path):
    frames = bf.textured_frames(5, W, H, seed=3)
    msgs = []
    for i, frame in enumerate(frames):
        msgs += [bf.image("/cam/image_raw", frame, T0 + i * DT, encoding="bgr8"),
                 bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K)]
    bag = bf.write_bag(tmp_path / "old.bag", msgs, "ros1")
    summary = convert_bag(bag, tmp_path / "out")
    assert summary.sequences_written == ["old_000"]
    seq = validate_sequence(tmp_path / "out" / "old_000")
    np.testing.assert_array_equal(seq.camera.K, K)  # ROS 1 CameraInfo has upper-case K/D/R/P fields
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(seq.load_left(i), frame)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_split_bag_reads_as_one_recording(tmp_path, storage):
    frames = bf.textured_frames(8, W, H, seed=5)

    def part(indices):
        return [m for i in indices for m in (bf.image("/cam/image_raw", frames[i], T0 + i * DT),
                                             bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K))]

    bag = bf.write_split_bag(tmp_path / "split", [part(range(0, 3)), part(range(3, 8))], storage)
    assert len([p for p in bag.iterdir() if p.name != "metadata.yaml"]) == 2
    summary = convert_bag(bag, tmp_path / "out")
    assert summary.sequences_written == ["split_000"] and summary.frames_written == 8
    seq = validate_sequence(tmp_path / "out" / "split_000")
    assert seq.stamps_ns.tolist() == [T0 + i * DT for i in range(8)]
    for i in range(8):
        np.testing.assert_array_equal(seq.load_left(i), frames[i])


def test_resize_scales_intrinsics_and_projects_depth_at_output_size(tmp_path):
    bag, left, _, _ = stereo_lidar_bag(tmp_path / "drive", "sqlite3")
    options = ConvertOptions(image_topic="/stereo/left/image_raw", lidar_topic="/lidar/points", width=32)
    convert_bag(bag, tmp_path / "out", options)
    seq = Sequence(tmp_path / "out" / "drive_000")
    assert (seq.camera.width, seq.camera.height) == (32, 24)  # height kept in aspect
    np.testing.assert_allclose(seq.camera.K, [[25, 0, 16], [0, 25, 12], [0, 0, 1]])
    np.testing.assert_array_equal(seq.load_left(0), cv2.resize(left[0], (32, 24), interpolation=cv2.INTER_AREA))
    depth = seq.load_depth(0)
    # u = 25 x/z + 16: (1, 0.5, 5) -> (21, 14.5 -> 15); (-0.5, -0.25, 2.5) -> (11, 9.5 -> 10)
    assert depth[15, 21] == 5.0 and depth[10, 11] == 2.5
    assert np.count_nonzero(depth) == 2


def _distort(x: np.ndarray, y: np.ndarray, k1: float, k2: float) -> tuple[np.ndarray, np.ndarray]:
    r2 = x * x + y * y
    factor = 1 + k1 * r2 + k2 * r2 * r2
    return x * factor, y * factor


def test_raw_images_are_rectified_with_K_D_R_P(tmp_path):
    width, height = 96, 72
    K_raw = np.array([[60.0, 0, 48], [0, 60, 36], [0, 0, 1]])
    D = [-0.25, 0.08, 0.0, 0.0, 0.0]
    P = np.array([[55.0, 0, 46, 0], [0, 55, 35, 0], [0, 0, 1, 0]])
    rays = np.array([[0.3, 0.2], [-0.35, -0.25], [0.0, 0.0], [0.4, -0.3]])  # X/Z, Y/Z of scene points
    xd, yd = _distort(rays[:, 0], rays[:, 1], D[0], D[1])
    raw_uv = np.stack([60 * xd + 48, 60 * yd + 36], 1)
    vv, uu = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width), np.float64)
    for u, v in raw_uv:  # Gaussian dots at sub-pixel raw positions
        image += 250 * np.exp(-((uu - u) ** 2 + (vv - v) ** 2) / (2 * 1.2**2))
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    frames = [np.roll(rgb, 0, 1)] * 3
    msgs = []
    for i, frame in enumerate(frames):
        msgs += [bf.image("/cam/image_raw", frame, T0 + i * DT),
                 bf.camera_info("/cam/camera_info", T0 + i * DT, width, height, K_raw, D=D, P=P)]
    bag = bf.write_bag(tmp_path / "lens", msgs, "sqlite3")
    convert_bag(bag, tmp_path / "out", ConvertOptions(min_motion=0))
    seq = Sequence(tmp_path / "out" / "lens_000")
    np.testing.assert_array_equal(seq.camera.K, P[:, :3])
    assert seq.camera.rectified and seq.camera.distortion == []
    rect = seq.load_left(0)[..., 0].astype(np.float64)
    for x, y in rays:  # each dot now sits at the pinhole projection with P
        u, v = 55 * x + 46, 55 * y + 35
        u0, v0 = int(round(u)), int(round(v))
        win = rect[v0 - 3:v0 + 4, u0 - 3:u0 + 4]
        wv, wu = np.mgrid[v0 - 3:v0 + 4, u0 - 3:u0 + 4]
        assert win.sum() > 1000, f"no dot near ({u:.1f}, {v:.1f})"
        assert (wu * win).sum() / win.sum() == pytest.approx(u, abs=0.3)
        assert (wv * win).sum() / win.sum() == pytest.approx(v, abs=0.3)


def test_camera_info_policy_nearest_or_latest(tmp_path):
    frames = bf.textured_frames(4, W, H, seed=4)
    msgs = [bf.image("/cam/image_raw", f, T0 + i * DT) for i, f in enumerate(frames)]
    msgs.append(bf.camera_info("/cam/camera_info", T0 + 50_000_000, W, H, K))  # once, after the first frame
    bag = bf.write_bag(tmp_path / "late_info", msgs, "mcap")
    nearest = convert_bag(bag, tmp_path / "a", ConvertOptions(min_frames=1))
    latest = convert_bag(bag, tmp_path / "b", ConvertOptions(min_frames=1, camera_info_policy="latest"))
    assert nearest.frames_written == 4 and not nearest.dropped
    assert latest.frames_written == 3 and latest.dropped == {"no camera_info yet (latest policy)": 1}
    assert Sequence(tmp_path / "b" / "late_info_000").stamps_ns[0] == T0 + DT


def test_resume_skips_complete_sequences_and_force_rewrites(tmp_path):
    bag, _, _, _ = stereo_lidar_bag(tmp_path / "drive", "sqlite3")
    out = tmp_path / "out"
    options = ConvertOptions(image_topic="/stereo/left/image_raw")
    first = convert_bag(bag, out, options)
    meta = out / "drive_000" / "meta.yaml"
    before = meta.stat().st_mtime_ns
    again = convert_bag(bag, out, options)
    assert again.sequences_skipped == ["drive_000"] and again.sequences_written == []
    assert again.frames_skipped_existing == first.frames_read
    assert meta.stat().st_mtime_ns == before
    with pytest.raises(bag_converter.OutputExistsError, match="drive_000.*--force"):
        convert_bag(bag, out, ConvertOptions(image_topic="/stereo/left/image_raw", min_motion=50))
    forced = convert_bag(bag, out, ConvertOptions(image_topic="/stereo/left/image_raw", min_motion=0, force=True))
    assert forced.sequences_written == ["drive_000"]
    assert Sequence(out / "drive_000").meta["source"]["settings"]["min_motion"] == 0


def test_cli_converts_several_bags_in_parallel(tmp_path, capsys):
    bags = []
    for name in ("one", "two"):
        frames = bf.textured_frames(4, W, H, seed=len(name))
        msgs = [bf.image("/cam/image_raw", f, T0 + i * DT) for i, f in enumerate(frames)]
        msgs += [bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K) for i in range(4)]
        bags.append(str(bf.write_bag(tmp_path / name, msgs, "mcap")))
    summary_json = tmp_path / "summary.json"
    code = bag_converter.main([*bags, "--out", str(tmp_path / "out"), "--jobs", "2", "--quiet",
                               "--summary-json", str(summary_json)])
    assert code == 0
    assert "one_000" in " ".join(json.loads(summary_json.read_text())[0]["sequences_written"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one_000", "splits", "two_000"]
    # default splits: the last of two sequences is held out
    assert (tmp_path / "out" / "splits" / "train.txt").read_text() == "one_000\n"
    assert (tmp_path / "out" / "splits" / "val.txt").read_text() == "two_000\n"
    assert "4 read, 4 kept" in capsys.readouterr().out


def test_pointcloud_parsing_handles_row_padding_and_byte_order():
    class Field:
        def __init__(self, name, offset, datatype):
            self.name, self.offset, self.datatype, self.count = name, offset, datatype, 1

    class Cloud:
        pass

    xyz = np.arange(12, dtype=np.float64).reshape(2, 2, 3) + 0.5
    rows = np.zeros((2, 40), np.uint8)  # 2 points of 16 bytes per row + 8 bytes row padding
    for r in range(2):
        for c in range(2):
            rows[r, c * 16 + 4:c * 16 + 16] = np.frombuffer(xyz[r, c].astype(">f4").tobytes(), np.uint8)
    cloud = Cloud()
    cloud.height, cloud.width, cloud.point_step, cloud.row_step, cloud.is_bigendian = 2, 2, 16, 40, True
    cloud.fields = [Field("t", 0, 6), Field("x", 4, 7), Field("y", 8, 7), Field("z", 12, 7)]
    cloud.data = rows.reshape(-1)
    np.testing.assert_array_equal(cloud_to_xyz(cloud), xyz.reshape(-1, 3))


def test_rectified_topic_is_not_remapped_and_takes_K_from_P(tmp_path):
    """image_rect + the raw camera's camera_info (as image_proc setups record them): images pass unchanged."""
    frames = bf.textured_frames(3, W, H, seed=6)
    P = np.array([[48.0, 0, 31, 0], [0, 48, 23, 0], [0, 0, 1, 0]])
    msgs = []
    for i, frame in enumerate(frames):
        msgs += [bf.image("/cam/image_rect", frame, T0 + i * DT),
                 bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K, D=[-0.3, 0.1, 0, 0, 0], P=P)]
    bag = bf.write_bag(tmp_path / "rect", msgs, "mcap")
    convert_bag(bag, tmp_path / "out")
    seq = Sequence(tmp_path / "out" / "rect_000")
    np.testing.assert_array_equal(seq.camera.K, P[:, :3])
    np.testing.assert_array_equal(seq.load_left(1), frames[1])


def test_lidar_projection_through_lens_distortion():
    from kd_depth_ros.lidar import project_to_depth

    K_raw = np.array([[60.0, 0, 48], [0, 60, 36], [0, 0, 1]])
    # normalised (0.3, 0.2), k1 = -0.25: r^2 = 0.13, factor 0.9675 -> u = 65.415 -> 65, v = 47.61 -> 48
    depth = project_to_depth(np.array([[1.2, 0.8, 4.0]]), K_raw, 96, 72, distortion=np.array([-0.25, 0, 0, 0, 0]))
    assert depth[48, 65] == 4.0 and np.count_nonzero(depth) == 1


def test_decode_handles_row_padding_and_drops_corrupt_frames(tmp_path):
    gray = (np.arange(H * W) % 251).astype(np.uint8).reshape(H, W)
    padded = np.zeros((H, W + 4), np.uint8)
    padded[:, :W] = gray
    msg = bf.TS2.types[bf.IMAGE](header=bf._header(bf.TS2, T0, "cam"), height=H, width=W, encoding="mono8",
                                 is_bigendian=0, step=W + 4, data=padded.reshape(-1))
    np.testing.assert_array_equal(bag_converter.decode_image(msg, bf.IMAGE, "test"), np.dstack([gray] * 3))
    frames = bf.textured_frames(5, W, H)
    msgs = [bf.compressed("/cam/image_raw/compressed", f, T0 + i * DT) for i, f in enumerate(frames)]
    msgs[2].fields["data"] = msgs[2].fields["data"][:40]  # a truncated PNG
    msgs += [bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K) for i in range(5)]
    summary = convert_bag(bf.write_bag(tmp_path / "glitch", msgs, "sqlite3"), tmp_path / "out")
    assert summary.frames_written == 4 and summary.dropped == {"undecodable image data": 1}
    assert "stamp 1200000000 ns" in summary.warnings[0]


@pytest.mark.parametrize("fmt,ext", [("jpeg", "jpg"), ("png", "png")])
def test_compressed_frames_are_stored_as_recorded(tmp_path, fmt, ext):
    """image_format auto: a jpeg/png camera's own bytes are the sequence's files (no second compression);
    png output re-encodes the same decoded pixels; a resize decodes and re-encodes in the camera's format."""
    frames = bf.textured_frames(4, W, H)
    msgs = [bf.compressed("/cam/image_raw/compressed", f, T0 + i * DT, fmt=fmt) for i, f in enumerate(frames)]
    msgs += [bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K) for i in range(4)]
    bag = bf.write_bag(tmp_path / "cam", msgs, "mcap")
    convert_bag(bag, tmp_path / "auto")
    seq = Sequence(tmp_path / "auto" / "cam_000")
    assert seq.meta["image_format"] == ext and validate_sequence(seq.path)
    for i, msg in enumerate(msgs[:4]):
        recorded = bytes(msg.fields["data"])
        assert (seq.path / "left" / f"{i:06d}.{ext}").read_bytes() == recorded
        expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(recorded, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(seq.load_left(i), expected)
    convert_bag(bag, tmp_path / "png", ConvertOptions(image_format="png"))
    as_png = Sequence(tmp_path / "png" / "cam_000")
    assert as_png.meta["image_format"] == "png"
    np.testing.assert_array_equal(as_png.load_left(2), seq.load_left(2))
    convert_bag(bag, tmp_path / "half", ConvertOptions(width=W // 2))
    half = Sequence(tmp_path / "half" / "cam_000")
    assert half.meta["image_format"] == ext and half.camera.width == W // 2 and half.load_left(0).shape == (H // 2, W // 2, 3)


def test_stored_as_recorded_still_checks_size_against_camera_info(tmp_path):
    frames = bf.textured_frames(3, W, H)
    msgs = [bf.compressed("/cam/image_raw/compressed", f, T0 + i * DT, fmt="jpeg") for i, f in enumerate(frames)]
    msgs += [bf.camera_info("/cam/camera_info", T0 + i * DT, 2 * W, 2 * H, K) for i in range(3)]
    with pytest.raises(bag_converter.CameraInfoError, match=f"camera_info says {2 * W}x{2 * H}"):
        convert_bag(bf.write_bag(tmp_path / "cam", msgs, "mcap"), tmp_path / "out")
    assert not (tmp_path / "out" / "cam_000").exists()


def test_compressed_stereo_pair_is_stored_as_recorded(tmp_path):
    left, right = bf.textured_frames(4, W, H, seed=1), bf.textured_frames(4, W, H, seed=2)
    msgs = []
    for i in range(4):
        stamp = T0 + i * DT
        msgs += [bf.compressed("/stereo/left/image_rect/compressed", left[i], stamp, fmt="jpeg"),
                 bf.compressed("/stereo/right/image_rect/compressed", right[i], stamp + 1_000_000, fmt="jpeg"),
                 bf.camera_info("/stereo/left/camera_info", stamp, W, H, K),
                 bf.camera_info("/stereo/right/camera_info", stamp, W, H, K, P=P_RIGHT)]
    options = ConvertOptions(image_topic="/stereo/left/image_rect/compressed",
                             right_topic="/stereo/right/image_rect/compressed")
    convert_bag(bf.write_bag(tmp_path / "pair", msgs, "mcap"), tmp_path / "out", options)
    seq = validate_sequence(tmp_path / "out" / "pair_000")
    assert seq.meta["image_format"] == "jpg" and seq.has_right and seq.camera.baseline == pytest.approx(BASELINE)
    assert (seq.path / "right" / "000003.jpg").read_bytes() == bytes(msgs[13].fields["data"])
    assert (seq.path / "left" / "000003.jpg").read_bytes() == bytes(msgs[12].fields["data"])


@pytest.mark.parametrize("encoding", sorted(__import__("kd_depth_ros.image_decode").image_decode.ENCODINGS))
def test_every_decoder_encoding_round_trips_bag_to_sequence(tmp_path, encoding):
    """Each encoding of the shared decoder's table converts, and the stored frame is exactly what the decoder
    (the node's and the recorder's too) makes of the message: the camera trains on what it runs."""
    from kd_depth_ros import image_decode

    dtype, channels, _ = image_decode.ENCODINGS[encoding]
    rows = H * 3 // 2 if encoding in ("nv12", "nv21") else H
    rng = np.random.default_rng(len(encoding))
    msgs = []
    for i in range(3):
        high = 65536 if dtype == np.uint16 else 256
        pixels = rng.integers(0, high, (rows, W * channels)).astype(dtype)  # rows of wire elements
        msgs.append(bf.image("/cam/image_raw", pixels, T0 + i * DT, encoding=encoding))
        msgs[-1].fields.update(height=H, width=W)
        msgs.append(bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K))
    summary = convert_bag(bf.write_bag(tmp_path / "enc", msgs, "mcap"), tmp_path / "out", ConvertOptions(min_motion=0))
    assert summary.frames_written == 3, summary.line()
    seq = validate_sequence(tmp_path / "out" / "enc_000")
    for i in range(3):
        expected = image_decode.decode_rgb8(bf._build(bf.TS2, msgs[2 * i]))
        np.testing.assert_array_equal(seq.load_left(i), expected)
