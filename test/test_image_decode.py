"""kd_depth_ros.image_decode: every encoding family with hand-made pixels, the one 16 -> 8 bit rule, padding,
byte order, errors naming the field, and agreement with rosbags-image (an independent implementation)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.image import image_to_cvimage
from rosbags.typesys import Stores, get_typestore

from kd_depth_ros import image_decode as dec

TS = get_typestore(Stores.ROS2_JAZZY)
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]


def raw(encoding: str, pixels: np.ndarray, width: int | None = None, height: int | None = None,
        pad: int = 0, bigendian: bool = False) -> Image:
    """A rosbags Image holding ``pixels`` (rows, W[, C]) as the wire bytes of ``encoding``, ``pad`` bytes per row."""
    pixels = np.ascontiguousarray(pixels)
    rows = pixels.reshape(pixels.shape[0], -1)
    if bigendian:
        rows = rows.astype(rows.dtype.newbyteorder(">"))
    rows = rows.view(np.uint8)
    if pad:
        rows = np.hstack([rows, np.full((rows.shape[0], pad), 0xEE, np.uint8)])
    return Image(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"),
                 height=height or pixels.shape[0], width=width or pixels.shape[1], encoding=encoding,
                 is_bigendian=int(bigendian), step=rows.shape[1], data=rows.reshape(-1).copy())


def test_the_16_to_8_bit_rule_by_hand():
    values = np.array([0, 128, 129, 257, 32767, 32768, 65279, 65535], np.uint16)
    # round(v * 255 / 65535) = round(v / 257): 128.5 / 257 < 0.5 -> 0, 129 / 257 > 0.5 -> 1
    np.testing.assert_array_equal(dec.to_8bit(values), [0, 0, 1, 1, 127, 128, 254, 255])


@pytest.mark.parametrize("encoding,order", [("rgb8", (0, 1, 2)), ("bgr8", (2, 1, 0)), ("rgba8", (0, 1, 2, 3)),
                                            ("bgra8", (2, 1, 0, 3))])
def test_colour_orders(encoding, order):
    rgba = np.array([10, 20, 30, 99], np.uint8)
    pixel = rgba[list(order)]
    out = dec.decode_rgb8(raw(encoding, np.broadcast_to(pixel, (2, 3, len(order)))))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[1, 2].tolist() == [10, 20, 30]


def test_sixteen_bit_colour_and_grey_use_the_rule_and_both_byte_orders():
    bgr16 = np.array([[[257, 65535, 129]]], np.uint16)  # B, G, R
    for bigendian in (False, True):
        assert dec.decode_rgb8(raw("bgr16", bgr16, bigendian=bigendian))[0, 0].tolist() == [1, 255, 1]
        grey = dec.decode_rgb8(raw("mono16", np.array([[128, 32768]], np.uint16), bigendian=bigendian))
        assert grey[0].tolist() == [[0, 0, 0], [128, 128, 128]]
    # 16UC1 is read as a 16-bit grey camera, like mono16
    assert dec.decode_rgb8(raw("16UC1", np.array([[65535]], np.uint16)))[0, 0].tolist() == [255, 255, 255]
    assert dec.decode_rgb8(raw("8UC1", np.array([[7]], np.uint8)))[0, 0].tolist() == [7, 7, 7]


@pytest.mark.parametrize("encoding,tile", [
    ("bayer_rggb8", [[200, 100], [100, 50]]),  # R G / G B
    ("bayer_bggr8", [[50, 100], [100, 200]]),  # B G / G R
    ("bayer_gbrg8", [[100, 50], [200, 100]]),  # G B / R G
    ("bayer_grbg8", [[100, 200], [50, 100]]),  # G R / B G
])
def test_bayer_tiles_demosaic_to_the_colour_they_sample(encoding, tile):
    """A 2x2 tile of a flat (R, G, B) = (200, 100, 50) scene, repeated: every pixel demosaics to that colour."""
    mosaic = np.tile(np.array(tile, np.uint8), (3, 4))
    out = dec.decode_rgb8(raw(encoding, mosaic))
    assert out.shape == (6, 8, 3)
    assert (out.reshape(-1, 3) == [200, 100, 50]).all()


def test_bayer16_is_demosaiced_then_reduced_by_the_rule():
    tile = np.array([[51400, 25700], [25700, 12850]], np.uint16)  # 200, 100, 50 times 257
    out = dec.decode_rgb8(raw("bayer_rggb16", np.tile(tile, (2, 2))))
    assert (out.reshape(-1, 3) == [200, 100, 50]).all()


def test_yuv422_pairs_by_hand():
    """BT.601 video range: R = 1.164 (Y-16) + 1.596 (V-128), G = 1.164 (Y-16) - 0.813 (V-128) - 0.391 (U-128),
    B = 1.164 (Y-16) + 2.018 (U-128)."""
    uyvy = np.array([[[128, 16], [128, 235]]], np.uint8)  # U Y0 V Y1: black and white, no chroma
    assert dec.decode_rgb8(raw("uyvy", uyvy))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert dec.decode_rgb8(raw("yuv422", uyvy))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    reddish = np.array([[[128, 100], [200, 100]]], np.uint8)  # Y 100, V 200: R 97.8 + 114.9, G 97.8 - 58.5
    assert dec.decode_rgb8(raw("yuv422", reddish))[0].tolist() == [[213, 39, 98]] * 2
    yuyv = np.array([[[16, 128], [235, 128]]], np.uint8)  # Y0 U Y1 V
    assert dec.decode_rgb8(raw("yuyv", yuyv))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert dec.decode_rgb8(raw("yuv422_yuy2", yuyv))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_nv12_reads_the_chroma_plane_after_the_luma_plane():
    y = np.array([[16, 235], [235, 16]], np.uint8)
    planes = np.vstack([y, np.array([[128, 200]], np.uint8)])  # 2x2 luma, one U V pair
    out = dec.decode_rgb8(raw("nv12", planes, width=2, height=2))
    # U 128, V 200 (BT.601 as above): Y 16 -> (114.9, -58.5, 0) clipped, Y 235 -> (255, 196.4, 254.9)
    assert out.shape == (2, 2, 3)
    assert np.abs(out[0].astype(int) - [[115, 0, 0], [255, 196, 255]]).max() <= 1
    swapped = dec.decode_rgb8(raw("nv21", planes, width=2, height=2))  # V U order: U 200, V 128
    # Y 16 -> (0, -28.2, 145.3), Y 235 -> (254.9, 226.7, 255)
    assert np.abs(swapped[0].astype(int) - [[0, 0, 145], [255, 227, 255]]).max() <= 1


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "bayer_rggb8", "bayer_bggr8",
                                      "bayer_gbrg8", "bayer_grbg8", "uyvy", "yuv422", "yuyv", "yuv422_yuy2"])
def test_eight_bit_encodings_agree_with_rosbags_image(encoding):
    rng = np.random.default_rng(1)
    channels = dec.ENCODINGS[encoding][1]
    pixels = rng.integers(0, 256, (6, 8, channels) if channels > 1 else (6, 8), dtype=np.uint8)
    msg = raw(encoding, pixels)
    expected = image_to_cvimage(msg, "rgb8")
    expected = cv2.cvtColor(expected, cv2.COLOR_GRAY2RGB) if expected.ndim == 2 else expected
    np.testing.assert_array_equal(dec.decode_rgb8(msg), expected)
    np.testing.assert_array_equal(dec.decode_rgb8(raw(encoding, pixels, pad=6)), expected)  # row padding skipped


def test_compressed_jpeg_png_grey_16bit_and_alpha():
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    png = CompressedImage(header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""), format="png",
                          data=cv2.imencode(".png", rgb[..., ::-1])[1].reshape(-1))
    np.testing.assert_array_equal(dec.decode_rgb8(png), rgb)
    grey16 = np.array([[128, 129, 65535]], np.uint16)
    png.data = cv2.imencode(".png", grey16)[1].reshape(-1)
    assert dec.decode_rgb8(png)[0, :, 0].tolist() == [0, 1, 255]  # the same rule as raw mono16
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[...] = (30, 20, 10, 5)
    png.data = cv2.imencode(".png", bgra)[1].reshape(-1)
    assert dec.decode_rgb8(png)[0, 0].tolist() == [10, 20, 30]
    flat = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    jpeg = CompressedImage(header=png.header, format="rgb8; jpeg compressed bgr8",
                           data=cv2.imencode(".jpg", flat[..., ::-1])[1].reshape(-1))
    assert np.abs(dec.decode_rgb8(jpeg).astype(int) - flat).max() <= 3


def test_errors_name_the_field():
    good = raw("rgb8", np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(dec.UnsupportedEncodingError, match=r"^encoding: '32FC1' is not a camera image"):
        dec.decode_rgb8(raw("32FC1", np.zeros((2, 2), np.float32)))
    with pytest.raises(dec.UnsupportedEncodingError, match=r"^encoding: unsupported '8UC5'; expected one of rgb8"):
        dec.decode_rgb8(raw("8UC5", np.zeros((2, 10), np.uint8), width=2))
    good.step = 5
    with pytest.raises(dec.BadImageDataError, match=r"^step: 5 bytes is less than"):
        dec.decode_rgb8(good)
    good.step, good.data = 12, good.data[:35]
    with pytest.raises(dec.BadImageDataError, match=r"^data: expected step\*height = 12\*3 = 36 bytes, got 35"):
        dec.decode_rgb8(good)
    with pytest.raises(dec.BadImageDataError, match=r"^height/width: yuv422 needs an even width"):
        dec.decode_rgb8(raw("yuv422", np.zeros((1, 3, 2), np.uint8)))
    compressed = CompressedImage(header=good.header, format="16UC1; compressedDepth png", data=np.zeros(4, np.uint8))
    with pytest.raises(dec.UnsupportedEncodingError, match=r"^format: .*compressedDepth"):
        dec.decode_rgb8(compressed)
    compressed.format = "png"
    with pytest.raises(dec.BadImageDataError, match=r"^data: 4 bytes could not be decoded"):
        dec.decode_rgb8(compressed)
    assert issubclass(dec.ImageDecodeError, ValueError)  # the nodes catch ValueError per frame


def test_a_damaged_compressed_frame_is_named_and_the_codec_prints_nothing(capfd):
    """What libpng / OpenCV print about a damaged frame goes into the error (one log line per frame in the
    nodes, one detail in convert-bag), not onto the terminal; 32FC1 is never offered as a camera encoding."""
    rgb = np.random.default_rng(3).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    encoded = cv2.imencode(".png", rgb)[1].reshape(-1)
    header = Header(stamp=Time(sec=0, nanosec=0), frame_id="")
    cut = CompressedImage(header=header, format="png", data=encoded[:encoded.size // 2].copy())
    with pytest.raises(dec.BadImageDataError, match=r"^data: \d+ bytes could not be decoded as png \(.*PNG"):
        dec.decode_rgb8(cut)
    damaged = encoded.copy()
    damaged[encoded.size // 2:encoded.size // 2 + 16] = 0
    with pytest.raises(dec.BadImageDataError, match=r"could not be decoded as png \(libpng error: "):
        dec.decode_rgb8(CompressedImage(header=header, format="png", data=damaged))
    out, err = capfd.readouterr()
    assert err == "" and out == "", err
    with pytest.raises(dec.UnsupportedEncodingError) as info:
        dec.decode_rgb8(raw("32FC1", np.zeros((2, 2), np.float32)))
    assert "32FC1" not in str(info.value).split("expected one of", 1)[1]
    assert "32FC1" not in dec.CAMERA_ENCODINGS


def test_quiet_codec_calls_pass_other_output_on():
    """Text that is not a codec's, written to fd 2 during the call (another thread's log), still reaches stderr."""
    import os
    import subprocess
    import sys

    script = ("import os\nfrom kd_depth_core.utils.quiet_codecs import call_quietly\n"
              "def codec():\n    os.write(2, b'libpng error: bad adaptive filter value\\n')\n"
              "    os.write(2, b'[node] a log line of another thread\\n')\n"
              "    pid = os.fork()  # a process forked meanwhile (a DataLoader worker) gets the real stderr back\n"
              "    if pid == 0:\n        call_quietly(int)\n        os.write(2, b'child\\n')\n        os._exit(0)\n"
              "    os.waitpid(pid, 0)\n    return 7\n"
              "print(call_quietly(codec))\nos.write(2, b'after\\n')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(7, 'libpng error: bad adaptive filter value')"
    assert done.stderr == "child\n[node] a log line of another thread\nafter\n"
