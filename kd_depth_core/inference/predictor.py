"""``DepthPredictor``: numpy image in, metric depth (and its uncertainty) in metres out.

    predictor = DepthPredictor("model.safetensors", device="auto")
    pred = predictor.predict(image_rgb_uint8, K=K)         # K: 3×3 intrinsics of *this* image
    pred = predictor.predict_stereo(left, right, K=K, baseline=0.12)  # stereo models; baseline in metres
    pred.depth        # (H, W) float32 metres (size of the input image, or the network's with output='model')
    pred.uncertainty  # (H, W) float32 std of depth in metres, or None
    pred.scale_info   # how depth was scaled (inference/scale.py)
    DepthPredictor("depth_anything_v2_vits.onnx", model_card="config/models/depth_anything_v2_small.yaml",
                   scale_mode="ground_plane", camera_height=0.4)   # a foreign ONNX model (inference/foreign.py)

The preprocessing (resize to the network input, scale to [0, 1]) comes from the model's
metadata and is built once; normalisation and disparity -> depth run inside the backend's
graph (``inference/export.py``). With ``output='input'`` depth is resized to the image in
disparity: 1/depth is interpolated bilinearly and inverted (as the evaluation protocols do), so a
near/far edge is not smeared into depths neither surface has; the uncertainty map is resized
bilinearly. Evaluation asks for ``output='model'`` and resizes as its protocol says. Threading: ``predict`` keeps no per-call state on the
predictor, and the backend call is serialised by a lock, so one thread may predict while
another prepares the next frame.

**Backend 'auto'**: exports run with their runtime (``.onnx`` ONNX Runtime, ``.torchscript`` TorchScript); a
PyTorch model (``.safetensors`` or a module) runs with PyTorch, except that ``cpu_backend='onnxruntime'`` (what
the ROS nodes pass) serves it on a CPU through ONNX Runtime: exported to ONNX in memory, run once against eager
PyTorch on a deterministic random input, kept when every output agrees within ``onnx_tolerance`` (relative, 1 mm
floor), else served with PyTorch; :attr:`DepthPredictor.backend_note` says which and why. On CUDA, and for fp16 /
bf16, 'auto' stays PyTorch.

**torch only where needed**: this module imports neither torch nor the model zoo at module level. An ``.onnx``
export (kd-depth or foreign) is served by ONNX Runtime without importing torch; ``.safetensors`` models,
TorchScript and modules import it when they are loaded.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from kd_depth_core.geometry import scale_intrinsics
from kd_depth_core.inference.backends import BACKENDS, Backend, create_backend, open_export, resolve_device
from kd_depth_core.inference.foreign import (
    ForeignOnnxBackend,
    foreign_metadata,
    is_foreign_onnx,
    load_card,
    raw_to_depth,
)
from kd_depth_core.inference.formats import TORCHSCRIPT_SUFFIX, metadata_at_size
from kd_depth_core.inference.preprocess import Preprocessor, resize_map, round_to_multiple
from kd_depth_core.inference.scale import ScaleInfo, ScaleStrategy, make_scale
from kd_depth_core.model_metadata import ModelMetadata

if TYPE_CHECKING:
    from torch import nn

OUTPUT_RESOLUTIONS = ("input", "model")
CPU_BACKENDS = ("torch", "onnxruntime")
"""What ``backend='auto'`` may run a PyTorch model with on a CPU (``cpu_backend``)."""
ONNX_TOLERANCE = 1e-3
"""Default ``onnx_tolerance``: largest relative difference (1 mm floor) between an in-memory ONNX export and
PyTorch on the check input (float32 kernels of the two runtimes differ by ~1e-6)."""


@dataclass(frozen=True)
class Prediction:
    """One frame's result. ``depth`` (H, W) float32 metres; ``uncertainty`` (H, W) float32 std in metres or None."""

    depth: np.ndarray
    uncertainty: np.ndarray | None
    scale_info: ScaleInfo


def _check_K(K: np.ndarray | None, name: str = "K") -> np.ndarray | None:
    if K is None:
        return None
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name}: expected 3×3 intrinsics in pixels with fx, fy > 0, got {K.tolist()}")
    return K


def _check_baseline(baseline: float | None) -> float | None:
    if baseline is None:
        return None
    if isinstance(baseline, bool) or not (float(baseline) > 0 and np.isfinite(float(baseline))):
        raise ValueError(f"baseline: expected a positive stereo baseline in metres, got {baseline!r}")
    return float(baseline)


def resize_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float32 depth map (metres) to ``height``×``width`` in disparity: bilinear on 1/depth, inverted.

    Non-positive depths are treated as 1e-6 m; NaN stays NaN where it touches the interpolation.
    """
    if depth.shape == (height, width):
        return depth
    disparity = 1.0 / np.maximum(depth.astype(np.float32, copy=False), np.float32(1e-6))
    return 1.0 / cv2.resize(disparity, (width, height), interpolation=cv2.INTER_LINEAR)


class DepthPredictor:
    """Depth from numpy images with a released model (``.safetensors``), an export, or ``(model, metadata)``.

    Args:
        model: path to a ``.safetensors`` released model, an ``.onnx`` or ``.torchscript`` export,
            or ``(nn.Module, ModelMetadata)`` (the module is copied, never changed).
        device: 'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.
        precision: 'fp32', 'fp16' (CUDA only) or 'bf16' (torch and torchscript backends).
        backend: 'auto' (by file type; torch for modules), 'torch', 'torchscript' or 'onnxruntime'.
        output: 'input' — depth at the input image's size; 'model' — at the network resolution.
        scale_mode: 'auto', 'none', 'focal', 'fixed' or 'ground_plane' (``inference/scale.py``);
            or a ready strategy object.
        K: default 3×3 intrinsics (pixels) of the images to come; ``predict(K=...)`` overrides.
        baseline: default stereo baseline (metres) of the rig to come; ``predict_stereo(baseline=...)``
            overrides. With the model's training baseline (``ModelMetadata.baseline_m``) it makes the
            metric scale (fx · B) / (fx_train · B_train) (``inference/scale.py``).
        scale_factor: for 'fixed'. camera_height: metres, for 'ground_plane'.
        input_size: (height, width) to run the network at instead of the metadata's (rounded
            to the size multiple; torch backends only — exports have a fixed size).
        bgr: default channel order of 3/4-channel images (True for OpenCV images).
        ground_options: extra keyword arguments of :class:`~kd_depth_core.inference.scale.GroundPlaneScale`.
        model_card: a foreign ONNX depth model's card (``inference/foreign.py``), a path; None or "" = the card
            beside the file when the ``.onnx`` carries no kd-depth metadata. A foreign model runs through
            ONNX Runtime (fp32), gets a synthetic ``metadata`` (``has_uncertainty`` False, ``scale_kind``
            relative unless the card's kind is metric_depth) and may run at ``input_size`` when the file
            has dynamic sizes. Relative outputs need ``scale_mode`` 'ground_plane' or 'fixed'; relative
            disparity is inverted to depth up to scale (its unknown shift taken as 0) before that scale is
            applied. Metric outputs use 'focal' with the card's ``output.focal_length_px`` ('auto' = focal
            when the card gives it and K is known).
        cpu_threads: ONNX Runtime intra-op threads (0 = its default) for foreign models and PyTorch models served
            through ONNX Runtime.
        cpu_backend: what ``backend='auto'`` runs a PyTorch model with when the device is the CPU: 'torch'
            (default) or 'onnxruntime' (exported in memory and checked against PyTorch, PyTorch when the export
            or the check fails; see the module docstring). The ROS nodes pass 'onnxruntime'.
        onnx_tolerance: largest relative difference (1 mm floor) the check of an in-memory ONNX export accepts;
            an explicit ``backend='onnxruntime'`` whose export exceeds it is an error.
    """

    def __init__(self, model: str | os.PathLike | tuple[nn.Module, ModelMetadata], device: str = "auto",
                 precision: str = "fp32", backend: str = "auto", output: str = "input",
                 scale_mode: str | ScaleStrategy = "auto", K: np.ndarray | None = None,
                 scale_factor: float | None = None, camera_height: float | None = None,
                 input_size: tuple[int, int] | None = None, bgr: bool = False,
                 ground_options: dict | None = None, baseline: float | None = None,
                 model_card: str | os.PathLike | None = None, cpu_threads: int = 0, cpu_backend: str = "torch",
                 onnx_tolerance: float = ONNX_TOLERANCE) -> None:
        if output not in OUTPUT_RESOLUTIONS:
            raise ValueError(f"output: expected one of {', '.join(OUTPUT_RESOLUTIONS)}, got {output!r}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {', '.join(BACKENDS)}, got {backend!r}")
        if cpu_backend not in CPU_BACKENDS:
            raise ValueError(f"cpu_backend: expected one of {', '.join(CPU_BACKENDS)}, got {cpu_backend!r}")
        if isinstance(onnx_tolerance, bool) or not isinstance(onnx_tolerance, int | float) \
                or not 0 <= onnx_tolerance < float("inf"):
            raise ValueError(f"onnx_tolerance: expected a finite number >= 0, got {onnx_tolerance!r}")
        self._cpu_backend, self._onnx_tolerance, self._cpu_threads = cpu_backend, float(onnx_tolerance), cpu_threads
        self.backend_note = ""
        """How the backend was chosen when 'auto' had a choice, or why an ONNX export was not used (one line)."""
        self.backend_fallback = False
        """True when 'auto' meant ONNX Runtime but the export or its check failed (``backend_note`` says why)."""
        self.source = "(model, metadata)"
        self.num_parameters: int | None = None
        self.card = None
        model_card = model_card or None  # "" (an unset ROS parameter) = none given
        if model_card is not None and (isinstance(model, tuple) or Path(model).suffix != ".onnx"):
            raise ValueError(f"model_card: only foreign '.onnx' depth models take a card, got model {model!r}")
        if not isinstance(model, tuple) and Path(model).suffix == ".onnx" and (
                model_card is not None or is_foreign_onnx(model)):
            path = Path(model)
            self.source = str(path)
            if backend not in ("auto", "onnxruntime"):
                raise ValueError(f"{path}: a foreign ONNX model runs with backend 'onnxruntime', not {backend!r}")
            if precision != "fp32":
                raise ValueError(f"{path}: foreign ONNX models run in fp32, not {precision}")
            self.card = load_card(model_card, path)
            self._backend = ForeignOnnxBackend(path, self.card, device=device, cpu_threads=cpu_threads,
                                               input_size=input_size)
            self.metadata = foreign_metadata(path, self.card, self._backend.input_size)
            scale_mode = self._foreign_scale_mode(scale_mode)
        elif isinstance(model, tuple):
            from torch import nn

            network, metadata = model
            if not isinstance(network, nn.Module) or not isinstance(metadata, ModelMetadata):
                raise TypeError("model: expected a path or a (nn.Module, ModelMetadata) tuple")
            self._backend, self.metadata = self._build(network, metadata, backend, device, precision, input_size)
        else:
            path = Path(model)
            self.source = str(path)
            if path.suffix in (".onnx", TORCHSCRIPT_SUFFIX):
                expected = "onnxruntime" if path.suffix == ".onnx" else "torchscript"
                if backend not in ("auto", expected):
                    raise ValueError(f"{path}: a '{path.suffix}' export runs with backend '{expected}', "
                                     f"not {backend!r} (use the .safetensors model for other backends)")
                if precision != "fp32":
                    raise ValueError(f"{path}: exports run in fp32; use the .safetensors model for {precision}")
                if input_size is not None:
                    raise ValueError(f"{path}: exports have a fixed input size; re-export with --height/--width")
                self._backend, self.metadata = open_export(path, device=device)
            else:
                from kd_depth_core.models.io import load_model

                network, metadata = load_model(path, device="cpu")
                self._backend, self.metadata = self._build(network, metadata, backend, device, precision, input_size)
        meta = self.metadata
        self.output = output
        self.bgr = bool(bgr)
        self.K = _check_K(K)
        self.baseline = _check_baseline(baseline)
        self.preprocess = Preprocessor(meta.input_height, meta.input_width)
        if isinstance(scale_mode, str):
            self.scale: ScaleStrategy = make_scale(scale_mode, meta.scale_kind, meta.focal_length_px,
                                                   factor=scale_factor, camera_height=camera_height,
                                                   training_baseline=meta.baseline_m, stereo=meta.stereo,
                                                   **(ground_options or {}))
        else:
            self.scale = scale_mode
        self._lock = threading.Lock()

    def _foreign_scale_mode(self, scale_mode: str | ScaleStrategy) -> str | ScaleStrategy:
        """Check ``scale_mode`` for a foreign model (see the class docstring); 'auto' resolves for metric ones."""
        card, mode = self.card, scale_mode if isinstance(scale_mode, str) else getattr(scale_mode, "mode", "?")
        if card.relative:
            if mode not in ("ground_plane", "fixed"):
                raise ValueError(f"scale_mode: {self.source} is a foreign {card.kind} model (depth up to scale); use "
                                 f"scale_mode 'ground_plane' (with camera_height) or 'fixed' (with scale_factor), "
                                 f"got {mode!r}")
            return scale_mode
        if mode == "focal" and card.focal_length_px is None:
            raise ValueError(f"scale_mode: 'focal' needs the focal length the model assumes: set "
                             f"output.focal_length_px in {card.source} (or use scale_mode 'none')")
        return scale_mode

    def _build(self, network: nn.Module, metadata: ModelMetadata, backend: str, device: str, precision: str,
               input_size: tuple[int, int] | None) -> tuple[Backend, ModelMetadata]:
        if input_size is not None:
            height, width = (round_to_multiple(int(v), metadata.size_multiple) for v in input_size)
            metadata = metadata_at_size(metadata, height, width)
        self.num_parameters = sum(p.numel() for p in network.parameters())
        if backend == "onnxruntime":
            return self._checked_onnx(network, metadata, device, precision, required=True), metadata
        if backend == "auto" and self._cpu_backend == "onnxruntime":
            if precision != "fp32":
                self.backend_note = f"backend 'auto': precision {precision} runs with PyTorch"
            elif resolve_device(device).type != "cpu":
                self.backend_note = "backend 'auto': PyTorch on CUDA"
            elif not getattr(network, "onnx_exportable", True):
                self.backend_note = (f"backend 'auto': {metadata.model_name} runs parts outside a graph "
                                     "(e.g. OpenCV SGBM) and is served with PyTorch")
            else:
                onnx = self._checked_onnx(network, metadata, "cpu", precision, required=False)
                if onnx is not None:
                    return onnx, metadata
        kind = "torch" if backend == "auto" else backend
        return create_backend(kind, network, metadata, device, precision), metadata

    def _checked_onnx(self, network: nn.Module, metadata: ModelMetadata, device: str, precision: str,
                      required: bool) -> Backend | None:
        """``network`` exported to ONNX in memory and checked once against eager PyTorch. ``required`` (an explicit
        backend 'onnxruntime'): a failure raises; else it is None with the reason in :attr:`backend_note`."""
        from kd_depth_core.inference.export import check_backend

        try:
            onnx = create_backend("onnxruntime", network, metadata, device, precision, cpu_threads=self._cpu_threads)
            check = check_backend(onnx, network, metadata, batch=1, where="the in-memory ONNX export")
        except Exception as exc:  # any exporter / checker / runtime failure: PyTorch serves the model instead
            if required:
                raise
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            self.backend_note = (f"backend 'auto': the ONNX export failed ({type(exc).__name__}: {reason}); "
                                 "serving the model with PyTorch")
            self.backend_fallback = True
            return None
        measured = f"max relative error {check.max_rel_error:.2g}, tolerance {self._onnx_tolerance:g}"
        if check.passed(self._onnx_tolerance):
            self.backend_note = (f"backend 'auto': ONNX Runtime on the CPU (exported in memory; matches PyTorch, "
                                 f"{measured})")
            return onnx
        if required:
            raise ValueError(f"backend: the in-memory ONNX export of {metadata.model_name} differs from PyTorch "
                             f"({measured}, max abs {check.max_abs_error:.3g} m); use backend 'torch'")
        self.backend_note = (f"backend 'auto': the in-memory ONNX export differs from PyTorch ({measured}, max abs "
                             f"{check.max_abs_error:.3g} m); serving the model with PyTorch")
        self.backend_fallback = True
        return None

    # ------------------------------------------------------------------ info
    @property
    def device(self) -> str:
        """Where the network runs: 'cpu', 'cuda', 'cuda:0', ..."""
        return self._backend.device

    @property
    def backend(self) -> str:
        return self._backend.name

    def describe(self) -> str:
        """One line: model, input size, depth kind, backend, device, precision, scale mode."""
        params = f", {self.num_parameters / 1e6:.2f} M params" if self.num_parameters is not None else ""
        return (f"DepthPredictor({self.metadata.describe()}{params}; backend {self._backend.describe()}; "
                f"output at {self.output} resolution; scale {self.scale.mode}; from {self.source})")

    # ------------------------------------------------------------------ running
    def warmup(self, iterations: int = 2, batch: int = 1) -> None:
        """Run the network on blank inputs (first-call allocation, cuDNN autotuning, ORT graph init)."""
        height, width = self._backend.input_size
        blank = np.zeros((batch, 3, height, width), dtype=np.float32)
        inputs = (blank, blank) if self.metadata.stereo else (blank,)
        for _ in range(iterations):
            with self._lock:
                self._backend.run(*inputs)

    def predict(self, image: np.ndarray, K: np.ndarray | None = None, bgr: bool | None = None) -> Prediction:
        """One image (see ``inference/preprocess.py`` for accepted shapes/dtypes) -> Prediction."""
        return self.predict_batch([image], K=K, bgr=bgr)[0]

    def predict_batch(self, images: Sequence[np.ndarray], K: np.ndarray | Sequence[np.ndarray] | None = None,
                      bgr: bool | None = None) -> list[Prediction]:
        """Several images (any sizes) in one network call; ``K`` is one 3×3 for all or one per image."""
        if self.metadata.stereo:
            raise ValueError("this is a stereo model: call predict_stereo(left, right)")
        images = list(images)
        batch = self.preprocess.batch(images, self.bgr if bgr is None else bgr)
        return self._finish(self._run(batch), images, self._per_image_K(K, len(images)))

    def predict_stereo(self, left: np.ndarray, right: np.ndarray, K: np.ndarray | None = None,
                       bgr: bool | None = None, baseline: float | None = None) -> Prediction:
        """A rectified stereo pair (same size) -> Prediction for the left view.

        ``baseline``: the rig's baseline in metres (default: the constructor's); with K and the
        model's training baseline it enters the metric scale (``inference/scale.py``).
        """
        if not self.metadata.stereo:
            raise ValueError("this is a monocular model: call predict(image)")
        if np.shape(left)[:2] != np.shape(right)[:2]:
            raise ValueError(f"left/right: expected images of the same size, got {np.shape(left)} and "
                             f"{np.shape(right)}")
        order = self.bgr if bgr is None else bgr
        inputs = (self.preprocess(left, order, "left")[None], self.preprocess(right, order, "right")[None])
        rig_baseline = self.baseline if baseline is None else _check_baseline(baseline)
        return self._finish(self._run(*inputs), [left], self._per_image_K(K, 1), rig_baseline)[0]

    def _run(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with self._lock:
            outputs = self._backend.run(*inputs)
        if self.card is not None:  # a foreign model's raw output -> depth (metres or up to scale)
            return raw_to_depth(outputs[0], self.card), None
        return outputs

    def _per_image_K(self, K, count: int) -> list[np.ndarray | None]:
        if K is None:
            return [self.K] * count
        if np.ndim(K) == 2:
            return [_check_K(K)] * count
        Ks = list(K)
        if len(Ks) != count:
            raise ValueError(f"K: expected one 3×3 matrix or {count} of them, got {len(Ks)}")
        return [_check_K(k, f"K[{i}]") for i, k in enumerate(Ks)]

    def _finish(self, outputs: tuple[np.ndarray, np.ndarray | None], images: list[np.ndarray],
                Ks: list[np.ndarray | None], baseline: float | None = None) -> list[Prediction]:
        depth_batch, uncertainty_batch = outputs
        net_h, net_w = depth_batch.shape[-2:]
        results = []
        for i, (image, K) in enumerate(zip(images, Ks)):
            img_h, img_w = image.shape[:2]
            K_net = None if K is None else scale_intrinsics(K, net_w / img_w, net_h / img_h)
            depth = depth_batch[i, 0]
            info = self.scale(depth, K_net) if baseline is None else self.scale(depth, K_net, baseline=baseline)
            uncertainty = None if uncertainty_batch is None else uncertainty_batch[i, 0]
            if info.factor != 1.0:
                depth = depth * np.float32(info.factor)
                uncertainty = None if uncertainty is None else uncertainty * np.float32(info.factor)
            if self.output == "input":
                depth = resize_depth(depth, img_h, img_w)
                uncertainty = None if uncertainty is None else resize_map(uncertainty, img_h, img_w)
            results.append(Prediction(np.ascontiguousarray(depth, dtype=np.float32),
                                      None if uncertainty is None else np.ascontiguousarray(uncertainty, np.float32),
                                      info))
        return results
