"""One camera-image decoder for the bag converter, the live recorder and the depth nodes.

``decode_rgb8(msg)`` turns a ``sensor_msgs/Image`` or ``CompressedImage`` into RGB ``uint8`` (H, W, 3),
so a camera that can be trained on (bag or recorder) also runs in the node, with the same pixels.
It needs no ROS: it reads rclpy messages and rosbags' deserialised messages alike (``data`` as
``array.array``, ``bytes`` or a numpy array).

Raw encodings (:data:`ENCODINGS`), converted the way cv_bridge does:

* ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped); ``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``;
* ``mono8`` / ``8UC1``, ``mono16`` / ``16UC1`` (grey replicated to R = G = B; ``16UC1`` is read as a
  16-bit grey camera such as a thermal or IR one, not as depth);
* Bayer ``bayer_rggb8``, ``bayer_bggr8``, ``bayer_gbrg8``, ``bayer_grbg8`` and their ``16`` versions
  (OpenCV bilinear demosaicing; ROS ``rggb`` is OpenCV's ``BayerBG``, as in cv_bridge);
* YUV 4:2:2 ``uyvy`` / ``yuv422`` (U Y0 V Y1) and ``yuyv`` / ``yuv422_yuy2`` (Y0 U Y1 V), YUV 4:2:0
  ``nv12`` / ``nv21`` (full-size Y plane, then interleaved half-size chroma); BT.601 video range.

Compressed: jpeg and png (8- or 16-bit, grey, colour or with alpha); ``compressedDepth`` is refused.

**16 -> 8 bit rule** (one place, :func:`to_8bit`): ``v8 = round(v16 * 255 / 65535)`` (0 -> 0, 128 -> 0,
129 -> 1, 65535 -> 255), cv_bridge's ``convertTo`` scaling. Demosaicing runs at 16 bits first.

Row padding (``step`` > width * pixel bytes) and big-endian 16-bit data are handled. Errors are
``ValueError`` subclasses whose message starts with the field: ``encoding: ...`` / ``format: ...``
(:class:`UnsupportedEncodingError`), ``height/width``, ``step`` or ``data: ...`` (:class:`BadImageDataError`).
"""
from __future__ import annotations

import cv2
import numpy as np

from kd_depth_core.utils.quiet_codecs import call_quietly

# encoding -> (element dtype, channels per element row, cv2 conversion to RGB or None)
_U8, _U16 = np.dtype(np.uint8), np.dtype(np.uint16)
ENCODINGS: dict[str, tuple[np.dtype, int, int | None]] = {
    "rgb8": (_U8, 3, None),
    "bgr8": (_U8, 3, cv2.COLOR_BGR2RGB),
    "rgba8": (_U8, 4, cv2.COLOR_RGBA2RGB),
    "bgra8": (_U8, 4, cv2.COLOR_BGRA2RGB),
    "rgb16": (_U16, 3, None),
    "bgr16": (_U16, 3, cv2.COLOR_BGR2RGB),
    "rgba16": (_U16, 4, cv2.COLOR_RGBA2RGB),
    "bgra16": (_U16, 4, cv2.COLOR_BGRA2RGB),
    "mono8": (_U8, 1, cv2.COLOR_GRAY2RGB),
    "8UC1": (_U8, 1, cv2.COLOR_GRAY2RGB),
    "mono16": (_U16, 1, cv2.COLOR_GRAY2RGB),
    "16UC1": (_U16, 1, cv2.COLOR_GRAY2RGB),
    "bayer_rggb8": (_U8, 1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (_U8, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (_U8, 1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (_U8, 1, cv2.COLOR_BayerGB2RGB),
    "bayer_rggb16": (_U16, 1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr16": (_U16, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg16": (_U16, 1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg16": (_U16, 1, cv2.COLOR_BayerGB2RGB),
    "uyvy": (_U8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": (_U8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": (_U8, 2, cv2.COLOR_YUV2RGB_YUYV),
    "yuv422_yuy2": (_U8, 2, cv2.COLOR_YUV2RGB_YUYV),
    "nv12": (_U8, 1, cv2.COLOR_YUV2RGB_NV12),
    "nv21": (_U8, 1, cv2.COLOR_YUV2RGB_NV21),
}
"""Raw ``sensor_msgs/Image`` encodings :func:`decode_rgb8` turns into RGB uint8."""

CAMERA_ENCODINGS: tuple[str, ...] = tuple(ENCODINGS)
COMPRESSED_FORMATS = ("jpeg", "png")
_PLANAR_420 = ("nv12", "nv21")
_NOT_CAMERA = {"32FC1": "float depth", "64FC1": "float data", "16SC1": "signed data", "32SC1": "signed data"}


class ImageDecodeError(ValueError):
    """An image message that does not become an RGB camera image; the message starts with the field."""


class UnsupportedEncodingError(ImageDecodeError):
    """An encoding / compressed format that is not a camera image this decoder knows (``encoding:``/``format:``)."""


class BadImageDataError(ImageDecodeError):
    """Size, ``step`` or ``data`` that do not match the encoding, or compressed bytes that do not decode."""


def to_8bit(image: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by ``round(v * 255 / 65535)`` (exact integer arithmetic); uint8 is returned as is."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise ImageDecodeError(f"data: expected 8- or 16-bit pixels, got {image.dtype}")
    return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _buffer(data) -> np.ndarray:
    return data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)


def raw_pixels(msg) -> np.ndarray:
    """The pixel array of a raw Image in its own encoding (no colour conversion): (rows, W) or (rows, W, C),
    native byte order; a view over ``msg.data`` when possible. ``rows`` is 1.5 * H for nv12 / nv21."""
    encoding = str(msg.encoding)
    if encoding not in ENCODINGS:
        what = f"'{encoding}' is not a camera image ({_NOT_CAMERA[encoding]})" if encoding in _NOT_CAMERA \
            else f"unsupported {encoding!r}"
        raise UnsupportedEncodingError(f"encoding: {what}; expected one of {', '.join(CAMERA_ENCODINGS)}")
    dtype, channels, _ = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise BadImageDataError(f"height/width: expected a non-empty image, got {width}x{height}")
    if encoding in _PLANAR_420 or encoding.startswith(("uyvy", "yuv422", "yuyv")):
        if width % 2 or (encoding in _PLANAR_420 and height % 2):
            raise BadImageDataError(f"height/width: {encoding} needs an even width"
                                    f"{' and height' if encoding in _PLANAR_420 else ''}, got {width}x{height}")
    rows = height * 3 // 2 if encoding in _PLANAR_420 else height
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise BadImageDataError(f"step: {step} bytes is less than width*channels*bytes = {row_bytes} for "
                                f"{encoding} {width}x{height}")
    if step % dtype.itemsize:
        raise BadImageDataError(f"step: {step} is not a multiple of the {dtype.itemsize}-byte {encoding} element")
    buffer = _buffer(msg.data)
    if buffer.size != step * rows:
        raise BadImageDataError(f"data: expected step*height = {step}*{rows} = {step * rows} bytes, got {buffer.size}")
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    shape = (rows, width, channels) if channels > 1 else (rows, width)
    strides = (step, channels * dtype.itemsize, dtype.itemsize) if channels > 1 else (step, dtype.itemsize)
    image = np.ndarray(shape, dtype=wire, buffer=buffer, strides=strides)
    return image.astype(dtype) if wire != dtype else image


def decode_raw(msg) -> np.ndarray:
    """``sensor_msgs/Image`` -> RGB uint8 (H, W, 3); see the module docstring for encodings and the 16-bit rule."""
    encoding = str(msg.encoding)
    image = raw_pixels(msg)
    _, _, code = ENCODINGS[encoding]
    if code is None:
        rgb = image
    else:
        if image.dtype == np.uint16 and not encoding.startswith("bayer"):
            image = to_8bit(image)  # colour conversion in 8 bits; Bayer is demosaiced at 16 bits first
        rgb = cv2.cvtColor(np.ascontiguousarray(image), code)
    return np.ascontiguousarray(to_8bit(rgb))


def decode_compressed(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg / png as image_transport writes them) -> RGB uint8 (H, W, 3)."""
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise UnsupportedEncodingError(f"format: {msg.format!r} (compressedDepth) holds depth, not a camera image; "
                                       "expected jpeg or png")
    if fmt and not any(name in fmt for name in (*COMPRESSED_FORMATS, "jpg")):
        raise UnsupportedEncodingError(f"format: unsupported {msg.format!r}; expected jpeg or png")
    buffer = _buffer(msg.data)
    if buffer.size == 0:
        raise BadImageDataError("data: empty CompressedImage")
    # ANYDEPTH keeps 16-bit PNGs for the one 16 -> 8 rule; ANYCOLOR keeps grey as grey (alpha may remain)
    image, said = call_quietly(cv2.imdecode, buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise BadImageDataError(f"data: {buffer.size} bytes could not be decoded as {msg.format or 'jpeg/png'}"
                                + (f" ({said})" if said else ""))
    image = to_8bit(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    return cv2.cvtColor(image, {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[channels])


def is_compressed(msg) -> bool:
    """True for a CompressedImage (it has ``format``, a raw Image has ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def decode_rgb8(msg) -> np.ndarray:
    """Any camera message (raw Image or CompressedImage) -> RGB uint8 (H, W, 3)."""
    return decode_compressed(msg) if is_compressed(msg) else decode_raw(msg)
