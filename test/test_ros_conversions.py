"""kd_depth_ros.conversions: every encoding both ways, padded rows, errors naming the field, clouds by hand."""
from __future__ import annotations

import array
import struct

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointField
from std_msgs.msg import Header

from kd_depth_ros import conversions

H, W = 3, 4


def sample(encoding: str) -> np.ndarray:
    dtype, channels = conversions.ENCODINGS[encoding]
    shape = (H, W, channels) if channels > 1 else (H, W)
    values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    if dtype == np.uint16:
        values = values * 1000 + 7  # uses both bytes
    if dtype == np.float32:
        values = values / 4
    return values.astype(dtype)


def raw_image(encoding: str, height: int, width: int, step: int, data: bytes, bigendian: bool = False) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = array.array("B", data)
    return msg


@pytest.mark.parametrize("encoding", list(conversions.ENCODINGS))
def test_every_encoding_round_trips(encoding):
    image = sample(encoding)
    head = Header(frame_id="cam_optical_frame")
    head.stamp.sec, head.stamp.nanosec = 12, 345
    msg = conversions.numpy_to_image(image, encoding, head)
    dtype, channels = conversions.ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding) == (H, W, encoding)
    assert msg.step == W * channels * dtype.itemsize and msg.is_bigendian == 0
    assert isinstance(msg.data, array.array) and len(msg.data) == msg.step * H  # built from the buffer
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("cam_optical_frame", 12, 345)
    back = conversions.image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == image.shape
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "mono16", "32FC1", "bgra8"])
def test_padded_rows_are_skipped(encoding):
    image = sample(encoding)
    row = image.reshape(H, -1).view(np.uint8).reshape(H, -1) if image.ndim == 3 else image.view(np.uint8)
    row_bytes = row.shape[1]
    pad = 8
    data = b"".join(bytes(row[r]) + b"\xee" * pad for r in range(H))
    msg = raw_image(encoding, H, W, row_bytes + pad, data)
    np.testing.assert_array_equal(conversions.image_to_numpy(msg), image)


def test_big_endian_mono16():
    values = np.array([[1, 258], [65535, 4096]], dtype=np.uint16)
    msg = raw_image("mono16", 2, 2, 4, values.astype(">u2").tobytes(), bigendian=True)
    np.testing.assert_array_equal(conversions.image_to_numpy(msg), values)


def test_colour_orders_become_rgb():
    pixel = np.array([10, 20, 30, 255], dtype=np.uint8)
    for encoding, expected in (("bgr8", [30, 20, 10]), ("rgb8", [10, 20, 30]),
                               ("bgra8", [30, 20, 10]), ("rgba8", [10, 20, 30])):
        channels = conversions.ENCODINGS[encoding][1]
        image = np.broadcast_to(pixel[:channels], (2, 2, channels)).copy()
        rgb = conversions.image_msg_to_rgb(conversions.numpy_to_image(image, encoding))
        assert rgb.shape == (2, 2, 3)
        assert rgb[1, 1].tolist() == expected
    mono = conversions.image_msg_to_rgb(conversions.numpy_to_image(np.full((2, 2), 9, np.uint8), "mono8"))
    assert mono.shape == (2, 2, 3) and mono.dtype == np.uint8 and (mono == 9).all()
    mono16 = conversions.image_msg_to_rgb(conversions.numpy_to_image(np.array([[128, 129]], np.uint16), "mono16"))
    assert mono16[0].tolist() == [[0, 0, 0], [1, 1, 1]]  # the shared 16 -> 8 rule, as the converter trains on


def test_node_decoder_takes_every_encoding_the_converter_trains_on():
    """rclpy messages in Bayer / YUV / 16-bit encodings decode in the node exactly as the shared decoder does."""
    from kd_depth_ros import image_decode

    tile = np.tile(np.array([[200, 100], [100, 50]], np.uint8), (2, 2))
    cases = {"bayer_rggb8": (tile, 4), "yuv422": (np.array([[128, 100, 200, 100]], np.uint8), 4),
             "bayer_grbg16": (tile.astype(np.uint16) * 257, 8)}
    for encoding, (data, step) in cases.items():
        height, width = data.shape[0], step // (data.itemsize * (2 if encoding == "yuv422" else 1))
        msg = raw_image(encoding, height, width, step, data.astype(data.dtype.newbyteorder("<")).tobytes())
        rgb = conversions.image_msg_to_rgb(msg)
        assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(rgb, image_decode.decode_rgb8(msg))
    assert (conversions.image_msg_to_rgb(raw_image("bayer_rggb8", 4, 4, 4, tile.tobytes())) == [200, 100, 50]).all()
    assert set(conversions.IMAGE_ENCODINGS) >= {"yuv422", "uyvy", "yuyv", "bayer_bggr16", "mono16", "nv12"}


def test_errors_name_the_field():
    good = conversions.numpy_to_image(sample("rgb8"), "rgb8")
    bad_encoding = raw_image("yuv422", H, W, W * 2, bytes(H * W * 2))
    with pytest.raises(ValueError, match="^encoding: unsupported 'yuv422'"):
        conversions.image_to_numpy(bad_encoding)
    with pytest.raises(ValueError, match="^step: 5 bytes is less than"):
        conversions.image_to_numpy(raw_image("rgb8", H, W, 5, bytes(good.data)))
    with pytest.raises(ValueError, match=r"^data: expected step\*height = 12\*3 = 36 bytes, got 0"):
        conversions.image_to_numpy(raw_image("rgb8", H, W, 12, b""))
    with pytest.raises(ValueError, match="^data: .* got 35"):
        conversions.image_to_numpy(raw_image("rgb8", H, W, 12, bytes(35)))
    with pytest.raises(ValueError, match="^step: 7 is not a multiple"):
        conversions.image_to_numpy(raw_image("mono16", 1, 3, 7, bytes(7)))
    with pytest.raises(ValueError, match="^encoding: '32FC1' is not a camera image"):
        conversions.image_msg_to_rgb(conversions.numpy_to_image(sample("32FC1"), "32FC1"))
    with pytest.raises(ValueError, match=r"^image: rgb8 needs shape \(H, W, 3\)"):
        conversions.numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="^image: mono16 needs dtype uint16"):
        conversions.numpy_to_image(np.zeros((2, 2), np.uint8), "mono16")


def test_compressed_png_is_exact_and_jpeg_close():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    msg = conversions.numpy_to_compressed(rgb, "png")
    assert msg.format == "png"
    np.testing.assert_array_equal(conversions.image_msg_to_rgb(msg), rgb)  # channel order survives OpenCV's BGR
    mono16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    gray = conversions.image_msg_to_rgb(conversions.numpy_to_compressed(mono16, "png"))
    expected = ((mono16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # the one 16 -> 8 bit rule
    np.testing.assert_array_equal(gray, np.repeat(expected[..., None], 3, axis=2))
    flat = np.zeros((16, 16, 3), np.uint8)
    flat[...] = (200, 100, 50)
    jpeg = conversions.numpy_to_compressed(flat, "jpeg")
    jpeg.format = "rgb8; jpeg compressed bgr8"  # what image_transport writes
    rgb_back = conversions.image_msg_to_rgb(jpeg)
    assert np.abs(rgb_back.astype(int) - flat).max() <= 3
    assert not hasattr(conversions, "compressed_to_numpy")  # one camera decoder (image_decode), not two


def test_compressed_errors_name_the_field():
    with pytest.raises(ValueError, match="^data: empty"):
        conversions.image_msg_to_rgb(CompressedImage(format="jpeg"))
    garbage = CompressedImage(format="png")
    garbage.data = array.array("B", b"not a png at all")
    with pytest.raises(ValueError, match="^data: 16 bytes could not be decoded"):
        conversions.image_msg_to_rgb(garbage)
    with pytest.raises(ValueError, match="^format: .*compressedDepth"):
        conversions.image_msg_to_rgb(CompressedImage(format="16UC1; compressedDepth png"))
    with pytest.raises(ValueError, match="^format: unsupported 'theora'"):
        conversions.image_msg_to_rgb(CompressedImage(format="theora"))


def test_depth_millimetres_and_metres():
    mm = np.array([[0, 1500], [65535, 1]], dtype=np.uint16)
    metres = conversions.image_to_depth(conversions.numpy_to_image(mm, "16UC1"))
    np.testing.assert_allclose(metres, [[np.nan, 1.5], [65.535, 0.001]], rtol=1e-6)
    depth = np.array([[np.nan, 1.5004], [70.0, -1.0]], dtype=np.float32)
    msg = conversions.depth_to_image(depth, encoding="16UC1")
    assert msg.encoding == "16UC1"
    np.testing.assert_array_equal(conversions.image_to_numpy(msg), [[0, 1500], [0, 0]])  # >65.535 m: invalid
    msg = conversions.depth_to_image(depth)  # 32FC1 keeps metres; NaN stays NaN
    assert msg.encoding == "32FC1"
    back = conversions.image_to_depth(msg)
    assert np.isnan(back[0, 0]) and back[0, 1] == np.float32(1.5004) and np.isnan(back[1, 1])
    with pytest.raises(ValueError, match="^encoding: depth must be one of 32FC1, 16UC1, got 'mono8'"):
        conversions.depth_to_image(depth, encoding="mono8")


def test_camera_info_scaling_by_hand():
    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob")
    info.header.frame_id = "left_optical"
    info.d = [0.1, 0.0, 0.0, 0.0, 0.0]
    info.k = [500.0, 0.0, 320.0, 0.0, 400.0, 240.0, 0.0, 0.0, 1.0]
    info.p = [500.0, 0.0, 320.0, -60.0, 0.0, 400.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.roi.x_offset, info.roi.width = 100, 200
    scaled = conversions.scale_camera_info(info, 320, 120)  # x by 1/2, y by 1/4
    assert (scaled.width, scaled.height) == (320, 120)
    np.testing.assert_allclose(scaled.k, [250.0, 0.0, 160.0, 0.0, 100.0, 60.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(scaled.p, [250.0, 0.0, 160.0, -30.0, 0.0, 100.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert list(scaled.d) == [0.1, 0.0, 0.0, 0.0, 0.0] and scaled.header.frame_id == "left_optical"
    assert (scaled.roi.x_offset, scaled.roi.width) == (50, 100)
    assert conversions.stereo_baseline(info) == pytest.approx(0.12)  # T = -P[3]/P[0] = 60/500
    assert conversions.stereo_baseline(scaled) == pytest.approx(0.12)  # baseline does not depend on the size
    with pytest.raises(ValueError, match="^p: right camera_info has P\\[3\\] = 0.0"):
        conversions.stereo_baseline(CameraInfo(p=[500.0] + [0.0] * 11))
    with pytest.raises(ValueError, match="^k: fx = 0: expected fx > 0 and fy > 0"):
        conversions.camera_matrix(CameraInfo())


def _info(width=640, height=480, k=(500.0, 0.0, 320.0, 0.0, 400.0, 240.0, 0.0, 0.0, 1.0), **fields) -> CameraInfo:
    info = CameraInfo(width=width, height=height, **fields)
    info.k = list(k)
    info.p = [k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def _with_k(**entries) -> tuple[float, ...]:
    k = list(_info().k)
    for index, value in entries.items():
        k[int(index[1:])] = value
    return tuple(k)


@pytest.mark.parametrize("k, message", [
    (_with_k(k0=float("nan")), r"^k: fx \(k\[0\]\) = nan: expected finite intrinsics$"),
    ((float("nan"),) * 9, r"^k: fx \(k\[0\]\) = nan"),
    (_with_k(k5=float("inf")), r"^k: cy \(k\[5\]\) = inf: expected finite"),
    (_with_k(k1=float("-inf")), r"^k: skew \(k\[1\]\) = -inf"),
    (_with_k(k8=float("nan")), r"^k: K\[8\] \(k\[8\]\) = nan"),
    ((0.0,) * 9, r"^k: fx = 0: expected fx > 0 and fy > 0 \(a calibrated camera\)$"),
    (_with_k(k4=-400.0), r"^k: fy = -400: expected fx > 0"),
    (_with_k(k8=0.0), r"^k: last row = \[0.0, 0.0, 0.0\]: expected \[0, 0, 1\]$"),
    (_with_k(k2=700.0), r"^k: principal point \(cx, cy\) = \(700, 240\): expected inside the 640x480 image$"),
    (_with_k(k5=-1.0), r"^k: principal point \(cx, cy\) = \(320, -1\)"),
])
def test_camera_info_validation_names_the_entry(k, message):
    with pytest.raises(ValueError, match=message):
        conversions.camera_matrix(_info(k=k))
    with pytest.raises(ValueError, match=message):
        conversions.camera_info_for_image(_info(k=k), 640, 480)


def test_camera_info_size_must_match_the_image_or_its_declared_binning():
    info, K = conversions.camera_info_for_image(_info(), 640, 480)
    np.testing.assert_array_equal(K, np.reshape(_info().k, (3, 3)))
    assert (info.width, info.height) == (640, 480)
    with pytest.raises(ValueError, match="^width/height: 640x480 differs from the image 320x240$"):
        conversions.camera_info_for_image(_info(), 320, 240)
    # binning 2x2: the 640x480 calibration describes a 320x240 image, K scaled by 1/2
    info, K = conversions.camera_info_for_image(_info(binning_x=2, binning_y=2), 320, 240)
    np.testing.assert_allclose(K, [[250.0, 0.0, 160.0], [0.0, 200.0, 120.0], [0.0, 0.0, 1.0]])
    assert (info.width, info.height, info.binning_x, info.binning_y) == (320, 240, 0, 0)
    with pytest.raises(ValueError, match="^width/height: 640x480 / binning 2x1 = 320x480 differs from the image "
                                         "320x240$"):
        conversions.camera_info_for_image(_info(binning_x=2, binning_y=1), 320, 240)
    info, K = conversions.camera_info_for_image(_info(width=0, height=0), 640, 480)  # size left empty
    assert (info.width, info.height) == (640, 480) and K[0, 0] == 500.0
    with pytest.raises(ValueError, match=r"^k: principal point \(cx, cy\) = \(320, 240\): expected inside the "
                                         "100x100 image"):
        conversions.camera_info_for_image(_info(width=0, height=0), 100, 100)  # size taken from the image


def _field(msg, name):
    return next(f for f in msg.fields if f.name == name)


def test_point_cloud_values_by_hand():
    K = np.array([[2.0, 0.0, 1.0], [0.0, 4.0, 0.5], [0.0, 0.0, 1.0]])
    depth = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 0.0]], dtype=np.float32)
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[1, 0] = (10, 20, 30)
    head = Header(frame_id="cam_optical")
    msg = conversions.PointCloudBuilder(stride=1, organized=True).build(depth, K, head, rgb)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (2, 3, 16, 48)
    assert msg.is_dense is False and msg.header.frame_id == "cam_optical" and msg.is_bigendian is False
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1)]
    points = conversions.cloud_to_numpy(msg)
    # (u=2, v=0, Z=3): X = (2-1)*3/2 = 1.5, Y = (0-0.5)*3/4 = -0.375
    np.testing.assert_allclose(points[0, 2], [1.5, -0.375, 3.0])
    # (u=0, v=1, Z=4): X = (0-1)*4/2 = -2, Y = (1-0.5)*4/4 = 0.5
    np.testing.assert_allclose(points[1, 0], [-2.0, 0.5, 4.0])
    assert np.isnan(points[1, 1]).all() and np.isnan(points[1, 2]).all()  # NaN and 0 depth -> NaN point
    raw = bytes(msg.data)
    (packed,) = struct.unpack_from("<I", raw, 1 * msg.row_step + 0 * msg.point_step + 12)
    assert packed == (10 << 16) | (20 << 8) | 30  # 0x00RRGGBB

    dense = conversions.PointCloudBuilder(stride=1, organized=False).build(depth, K, head)
    assert (dense.height, dense.width, dense.point_step, dense.is_dense) == (1, 4, 12, True)
    np.testing.assert_allclose(conversions.cloud_to_numpy(dense)[0, 3], [-2.0, 0.5, 4.0])

    strided = conversions.PointCloudBuilder(stride=2).build(depth, K, head)
    assert (strided.height, strided.width) == (1, 2)  # pixels (0,0) and (2,0): X = (0-1)*1/2, Y = (0-0.5)*1/4
    np.testing.assert_allclose(conversions.cloud_to_numpy(strided)[0], [[-0.5, -0.125, 1.0], [1.5, -0.375, 3.0]])


def test_point_cloud_reused_buffer_matches_fresh_buffer():
    K = np.array([[2.0, 0.0, 1.0], [0.0, 4.0, 0.5], [0.0, 0.0, 1.0]])
    depth = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 0.0]], dtype=np.float32)
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    fresh = conversions.PointCloudBuilder().build(depth, K, Header(), rgb)
    builder = conversions.PointCloudBuilder(reuse_buffer=True)
    first = builder.build(depth, K, Header(), rgb)
    assert bytes(first.data) == bytes(fresh.data)
    second = builder.build(2 * depth, K, Header(), rgb)  # the same buffer, rewritten (publish before rebuilding)
    np.testing.assert_allclose(conversions.cloud_to_numpy(second), 2 * conversions.cloud_to_numpy(fresh))
    assert conversions.PointCloudBuilder(organized=False, reuse_buffer=True).build(depth, K, Header()).width == 4


def test_image_buffer_wraps_the_view_without_a_copy():
    buffer = conversions.ImageBuffer("32FC1")
    view = buffer.view(2, 3)
    view[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = Header(frame_id="cam")
    msg = buffer.message(header)
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.header.frame_id) == (2, 3, 12, "32FC1", "cam")
    assert bytes(msg.data) == bytes(conversions.numpy_to_image(view.copy(), "32FC1").data)
    view[0, 0] = 7.0  # the message data is the buffer itself
    assert conversions.image_to_numpy(msg)[0, 0] == 7.0
    assert buffer.view(2, 3) is view  # same size: reused
    assert buffer.view(4, 3).shape == (4, 3) and buffer.message().height == 4
    rgb = conversions.ImageBuffer("rgb8")
    assert rgb.view(2, 5).shape == (2, 5, 3) and rgb.message().step == 15
    with pytest.raises(RuntimeError, match="before view"):
        conversions.ImageBuffer("mono8").message()
    with pytest.raises(ValueError, match="^encoding: unsupported 'rgb9'"):
        conversions.ImageBuffer("rgb9")


def test_disparity_message():
    disparity = np.full((4, 5), np.nan, np.float32)
    disparity[1:3, 2:5] = 8.0
    head = Header(frame_id="left")
    msg = conversions.disparity_to_msg(disparity, head, focal_px=400.0, baseline_m=0.1, min_disparity=0.5,
                                       max_disparity=400.0)
    assert (msg.f, msg.t, msg.min_disparity, msg.max_disparity) == (400.0, pytest.approx(0.1), 0.5, 400.0)
    assert (msg.valid_window.x_offset, msg.valid_window.y_offset, msg.valid_window.width,
            msg.valid_window.height) == (2, 1, 3, 2)
    assert msg.image.encoding == "32FC1" and msg.image.header.frame_id == "left"
    np.testing.assert_array_equal(conversions.image_to_numpy(msg.image)[1, 2:], [8.0, 8.0, 8.0])
