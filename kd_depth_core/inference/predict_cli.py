"""`kd-depth predict INPUT... --model M --out DIR`: depth for images, folders of images and video files.

Per frame, in DIR (``--formats``, default ``png16,color``):
- ``<name>_depth.png``  16-bit PNG, depth in millimetres (0 = invalid; saturates at 65.535 m)
- ``<name>_depth.npy``  float32 depth in metres (+ ``<name>_uncertainty.npy`` for models with uncertainty)
- ``<name>_color.png``  colourised inverse depth (for viewing)
- ``<name>.ply``        coloured point cloud (binary PLY, metres, camera frame x right, y down, z forward)

A single image ``a/img.png`` gives ``DIR/img_*``; a folder ``frames/`` gives
``DIR/frames/<image name>_*``; a video ``clip.mp4`` gives ``DIR/clip/<frame index>_*``.
Point clouds and focal/ground-plane scaling need intrinsics: ``--fx`` (``--fy``, ``--cx``,
``--cy`` default to fx and the image centre), in pixels of the input images. Without them
the PLY uses the training camera's focal length scaled to the image width (an approximation).
"""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kd_depth_core.utils.atomic import write_bytes_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
FORMATS = ("png16", "npy", "color", "ply")


@dataclass(frozen=True)
class Source:
    """One input: an image file, or a video, with the output name prefix (relative to --out)."""

    path: Path
    kind: str  # 'image' | 'video'
    prefix: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, video files")
    parser.add_argument("--model", required=True, help="released model (.safetensors) or export (.onnx, .torchscript), "
                                                       "or a foreign ONNX depth model with its card")
    parser.add_argument("--model-card", default=None,
                        help="model card (YAML) of a foreign ONNX model (default: <stem>.card.yaml or <stem>.yaml "
                             "beside it; see config/models/); relative models need --scale ground_plane or fixed")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="run the network at this size (rounded to its size multiple; released models and "
                             "dynamic-size foreign ONNX models)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--formats", default="png16,color",
                        help=f"comma-separated outputs among {', '.join(FORMATS)} (default: png16,color)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="compute precision; fp16/bf16 are faster on a GPU, fall back to fp32 where the "
                             "backend or device lacks them; default fp32")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "torchscript", "onnxruntime"),
                        help="runtime: auto chooses by the model file (.safetensors: PyTorch, .torchscript: "
                             "TorchScript, .onnx: ONNX Runtime); default auto")
    parser.add_argument("--resolution", default="input", choices=("input", "model"),
                        help="save depth at the input image size (default) or the network's")
    parser.add_argument("--fx", type=float, help="focal length of the input images, pixels")
    parser.add_argument("--fy", type=float, help="default: fx")
    parser.add_argument("--cx", type=float, help="principal point, pixels (default: image centre)")
    parser.add_argument("--cy", type=float, help="principal point, pixels (default: image centre)")
    parser.add_argument("--scale", default="auto", choices=("auto", "none", "focal", "fixed", "ground_plane"),
                        help="metric scale mode (kd_depth_core/inference/scale.py; default auto)")
    parser.add_argument("--scale-factor", type=float, help="factor for --scale fixed")
    parser.add_argument("--camera-height", type=float, help="metres above the ground, for --scale ground_plane")
    parser.add_argument("--color-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="fixed depth range (m) of the colour map (default: per-frame percentiles)")
    parser.add_argument("--colormap", default="magma", help="OpenCV colour map name (default magma)")
    parser.add_argument("--ply-stride", type=int, default=2, help="keep every N-th pixel in point clouds")
    parser.add_argument("--every", type=int, default=1, help="videos: keep every N-th frame")
    parser.add_argument("--max-frames", type=int, default=0, help="videos: stop after N kept frames (0 = all)")


# --------------------------------------------------------------------------- inputs
def collect_sources(inputs: list[str]) -> list[Source]:
    """Expand files/folders into sources with unique output prefixes; errors name the offending input."""
    sources: list[Source] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ValueError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            sources += [Source(p, "image", f"{path.name}/{p.stem}") for p in images]
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                sources.append(Source(path, "image", path.stem))
            elif suffix in VIDEO_SUFFIXES:
                sources.append(Source(path, "video", f"{path.stem}/"))
            else:
                raise ValueError(f"{path}: unsupported file type {suffix!r}; images: {', '.join(IMAGE_SUFFIXES)}; "
                                 f"videos: {', '.join(VIDEO_SUFFIXES)}")
        else:
            raise FileNotFoundError(f"input not found: {path}")
    seen: dict[str, Path] = {}
    for source in sources:
        if source.prefix in seen:
            raise ValueError(f"{source.path} and {seen[source.prefix]} would write the same outputs "
                             f"({source.prefix!r}); rename one or run them separately")
        seen[source.prefix] = source.path
    return sources


def read_image(path: Path) -> np.ndarray:
    """An image file as OpenCV reads it, checked here so that every error names the file: a damaged file (with
    what its codec said), a shape or type the network cannot take, a float image outside [0, 1]."""
    from kd_depth_core.inference.preprocess import to_rgb
    from kd_depth_core.utils.quiet_codecs import call_quietly

    image, said = call_quietly(cv2.imread, str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: not a readable image{f' ({said})' if said else ''}; the file is damaged or not "
                         f"in a format OpenCV reads")
    try:
        to_rgb(image, bgr=True, name=str(path))
    except TypeError as error:  # e.g. a signed-integer TIFF
        raise ValueError(f"{error}; save the image as 8- or 16-bit") from None
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(np.min(image)), float(np.max(image))
        if not (low >= 0.0 and high <= 1.0):  # also catches NaN
            raise ValueError(f"{path}: a {image.dtype} image must hold values in [0, 1], this one holds [{low:g}, "
                             f"{high:g}]; scale it to [0, 1] or save it as 8- or 16-bit")
    return image


def _video_frame_count(path: Path, every: int, max_frames: int) -> int:
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    kept = -(-count // every) if count > 0 else 0
    return min(kept, max_frames) if max_frames else kept


def iter_frames(sources: list[Source], every: int = 1, max_frames: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(output name, image as read by OpenCV: BGR/BGRA/grey, uint8 or uint16) for every frame."""
    for source in sources:
        if source.kind == "image":
            yield source.prefix, read_image(source.path)
            continue
        capture = cv2.VideoCapture(str(source.path))
        if not capture.isOpened():
            raise ValueError(f"{source.path}: OpenCV cannot open this video")
        index = kept = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % every == 0:
                    yield f"{source.prefix}{index:06d}", frame
                    kept += 1
                    if max_frames and kept >= max_frames:
                        break
                index += 1
        finally:
            capture.release()
        if index == 0 and kept == 0:
            raise ValueError(f"{source.path}: no frames could be decoded")


# --------------------------------------------------------------------------- outputs
def depth_to_png16(depth: np.ndarray) -> np.ndarray:
    """Depth (H, W) metres -> uint16 millimetres; invalid (<= 0, NaN) -> 0, beyond 65.535 m saturates."""
    millimetres = np.nan_to_num(depth * 1000.0, nan=0.0, posinf=65535.0, neginf=0.0)
    return np.clip(np.rint(millimetres), 0, 65535).astype(np.uint16)


def ply_bytes(points: np.ndarray, colors: np.ndarray) -> bytes:
    """Binary little-endian PLY of finite points (N,3) float32 metres with RGB colours (N,3) uint8."""
    keep = np.isfinite(points).all(1)
    vertices = np.empty(int(keep.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, name in enumerate("xyz"):
        vertices[name] = points[keep, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertices[name] = colors[keep, i]
    header = ("ply\nformat binary_little_endian 1.0\ncomment kd-depth point cloud, metres, camera optical frame\n"
              f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    return header.encode("ascii") + vertices.tobytes()


def _encode_png(image: np.ndarray, where: Path) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{where}: PNG encoding failed")
    return buffer.tobytes()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def intrinsics_for(args: argparse.Namespace, height: int, width: int, training_fx: float | None,
                   input_width: int) -> tuple[np.ndarray | None, bool]:
    """(K for an image of this size, whether it came from the user). Falls back to the training focal length."""
    if args.fx is not None:
        fx = args.fx
        fy = args.fy if args.fy is not None else fx
        user = True
    elif training_fx is not None:
        fx = fy = training_fx * width / input_width
        user = False
    else:
        return None, False
    cx = args.cx if args.cx is not None else (width - 1) / 2.0
    cy = args.cy if args.cy is not None else (height - 1) / 2.0
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), user


def write_outputs(out_dir: Path, name: str, image_bgr: np.ndarray, depth: np.ndarray,
                  uncertainty: np.ndarray | None, formats: set[str], K: np.ndarray | None,
                  args: argparse.Namespace) -> None:
    """Write the chosen outputs of one frame (each file atomically)."""
    from kd_depth_core.geometry import depth_to_points, scale_intrinsics
    from kd_depth_core.inference.preprocess import to_rgb
    from kd_depth_core.utils.colorize import colorize_depth

    base = out_dir / name
    if "png16" in formats:
        write_bytes_atomic(f"{base}_depth.png", _encode_png(depth_to_png16(depth), base))
    if "npy" in formats:
        write_bytes_atomic(f"{base}_depth.npy", _npy_bytes(depth))
        if uncertainty is not None:
            write_bytes_atomic(f"{base}_uncertainty.npy", _npy_bytes(uncertainty))
    if "color" in formats:
        low, high = args.color_range if args.color_range else (None, None)
        colored = colorize_depth(depth, low, high, colormap=args.colormap, bgr=True)
        write_bytes_atomic(f"{base}_color.png", _encode_png(colored, base))
    if "ply" in formats:
        rgb = to_rgb(image_bgr, bgr=True)
        if rgb.dtype != np.uint8:
            rgb = (rgb.astype(np.float32) * (255.0 / 65535.0 if rgb.dtype == np.uint16 else 255.0)).clip(0, 255)
            rgb = rgb.astype(np.uint8)
        height, width = depth.shape
        if rgb.shape[:2] != depth.shape:
            K = scale_intrinsics(K, width / rgb.shape[1], height / rgb.shape[0])
            rgb = cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=cv2.INTER_AREA)
        points = depth_to_points(depth, K, stride=args.ply_stride).reshape(-1, 3)
        colors = np.ascontiguousarray(rgb[::args.ply_stride, ::args.ply_stride]).reshape(-1, 3)
        write_bytes_atomic(f"{base}.ply", ply_bytes(points, colors))


# --------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kd_depth_core.inference.predictor import DepthPredictor

    formats = {item.strip() for item in args.formats.split(",") if item.strip()}
    unknown = formats - set(FORMATS)
    if unknown or not formats:
        print(f"kd-depth predict: --formats: unknown {', '.join(sorted(unknown)) or '(none given)'}; "
              f"choose from {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if args.every < 1 or args.ply_stride < 1:
        print("kd-depth predict: --every and --ply-stride must be >= 1", file=sys.stderr)
        return 2
    try:
        sources = collect_sources(args.inputs)
        predictor = DepthPredictor(args.model, device=args.device, precision=args.precision, backend=args.backend,
                                   output=args.resolution, scale_mode=args.scale, scale_factor=args.scale_factor,
                                   camera_height=args.camera_height, bgr=True, model_card=args.model_card,
                                   input_size=tuple(args.input_size) if args.input_size else None)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"kd-depth predict: {error}", file=sys.stderr)
        return 2
    meta = predictor.metadata
    if "ply" in formats and args.fx is None:
        if meta.focal_length_px is None:
            print("kd-depth predict: point clouds need intrinsics: pass --fx (and --fy/--cx/--cy)", file=sys.stderr)
            return 2
        print("kd-depth predict: no --fx given; point clouds use the training focal length scaled to the image "
              "width (approximate)", file=sys.stderr)
    print(predictor.describe())
    out_dir = Path(args.out)
    total = sum(1 if s.kind == "image" else _video_frame_count(s.path, args.every, args.max_frames) for s in sources)
    pending: list[Future] = []
    count = 0
    failure: Exception | None = None
    with ThreadPoolExecutor(max_workers=2) as writer, tqdm(total=total or None, unit="frame",
                                                            desc="predict") as bar:
        try:
            for name, image in iter_frames(sources, args.every, args.max_frames):
                height, width = image.shape[:2]
                K, from_user = intrinsics_for(args, height, width, meta.focal_length_px, meta.input_width)
                use_K = K if (from_user or args.scale == "ground_plane") else None
                prediction = predictor.predict(image, K=use_K)
                pending.append(writer.submit(write_outputs, out_dir, name, image, prediction.depth,
                                             prediction.uncertainty, formats, K, args))
                while len(pending) > 8:  # bounded queue: results are written in the background
                    pending.pop(0).result()
                count += 1
                bar.update(1)
            for future in pending:
                future.result()
        except (ValueError, FileNotFoundError) as error:
            failure = error
    if failure is not None:  # printed after the progress bar closed, on a line of its own
        print(f"kd-depth predict: {failure}", file=sys.stderr)
        return 2
    print(f"wrote {count} frame(s) to {out_dir} ({', '.join(sorted(formats))})")
    return 0
