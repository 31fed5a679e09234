"""Fast and lean by default (issue 19, item 8): the CPU default backend and the torch-free ONNX path.

- A node (and ``DepthPredictor``) given an ``.onnx`` export never imports torch: checked in fresh processes, the
  real node included (started as a launch file would, fed a frame, stopped with SIGINT, then asked which modules
  it had loaded). Adding ``import torch`` at the top of ``kd_depth_core/geometry.py`` (or of any module on that
  path) fails these tests.
- ``backend: auto`` serves a ``.safetensors`` model through ONNX Runtime on a CPU: exported in memory, checked
  once against PyTorch, PyTorch with the reason when the export or the check fails; on CUDA it stays PyTorch.
  Real exporters and runtimes throughout; the two "bad" networks below are real modules whose export is refused
  or differs from eager, as a model with an untraceable step would.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import (  # noqa: E402
    CONFIG,
    DDS_ENV,
    MODULES_AT_EXIT,
    REPO,
    NodeProcess,
    RosHarness,
    camera_info,
    constant_depth,
    header,
    module_probe_command,
    write_constant_model,
    write_pixel_model,
)

STARTUP_S = 180.0
MESSAGE_S = 30.0
STUDENT = REPO / "models" / "default_student.safetensors"
HEAVY = ("torch", "timm", "safetensors", "torchvision")


def run_python(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the repository on the path); its completed process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


# --------------------------------------------------------------------------- no torch on the ONNX path
@pytest.mark.parametrize("stereo", [False, True])
def test_predicting_with_an_onnx_export_never_imports_torch(tmp_path, stereo):
    model = write_pixel_model(tmp_path / "pixel.onnx", stereo=stereo, focal_length_px=12.5, baseline_m=0.1)
    call = ("p.predict_stereo(image, image, K=K, baseline=0.2)" if stereo else "p.predict(image, K=K)")
    result = run_python(f"""
        import sys
        import numpy as np
        import kd_depth_ros.mono_depth_node, kd_depth_ros.stereo_depth_node  # the node modules, rclpy included
        from kd_depth_ros.depth_outputs import DepthOutputs
        from kd_depth_core.inference import DepthPredictor
        p = DepthPredictor({str(model)!r}, device="auto", cpu_backend="onnxruntime", scale_mode="auto")
        p.warmup(1)
        image = np.full((48, 64, 3), 120, np.uint8)
        K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
        prediction = {call}
        assert prediction.depth.shape == (48, 64) and np.isfinite(prediction.depth).all(), prediction
        print("backend", p.backend, "heavy:", [m for m in {HEAVY!r} if m in sys.modules])
        """)
    assert result.returncode == 0, result.stderr
    assert "backend onnxruntime heavy: []" in result.stdout, result.stdout + result.stderr


def test_the_torch_probe_sees_torch_when_a_module_imports_it(tmp_path):
    """The probe itself: the same check reports torch once something on the path imports it."""
    model = write_pixel_model(tmp_path / "pixel.onnx")
    result = run_python(f"""
        import sys
        from kd_depth_core.inference import DepthPredictor
        DepthPredictor({str(model)!r}).warmup(1)
        import kd_depth_core.models.io  # torch, as a module-level `import torch` on the path would
        print("heavy:", [m for m in {HEAVY!r} if m in sys.modules])
        """)
    assert result.returncode == 0, result.stderr
    assert "'torch'" in result.stdout.split("heavy:")[1]


def test_a_node_serving_an_onnx_export_never_imports_torch_and_stays_small(tmp_path):
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from kd_depth_ros import conversions

    model = write_pixel_model(tmp_path / "pixel.onnx", focal_length_px=12.5)
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml",
                       params={"model_path": str(model), "device": "auto", "publish_colorized": True},
                       remaps={"image": "/lean/image", "camera_info": "/lean/camera_info", "__ns": "/lean"},
                       env=DDS_ENV, command=module_probe_command("mono_depth_node", HEAVY))
    harness = RosHarness("lean_harness")
    try:
        depth = harness.subscribe(Image, "/lean/depth")
        points = harness.subscribe(PointCloud2, "/lean/points")
        colour = harness.subscribe(Image, "/lean/depth/colorized")
        image_pub = harness.publisher(Image, "/lean/image", "best_effort")
        info_pub = harness.publisher(CameraInfo, "/lean/camera_info", "best_effort")
        assert harness.wait(lambda: image_pub.get_subscription_count() > 0
                            and harness.node.count_publishers("/lean/depth") > 0, STARTUP_S), node.log()
        stamp = 2_000_000_000
        deadline = time.monotonic() + MESSAGE_S
        while not (depth and points and colour) and time.monotonic() < deadline:  # every output built once
            info_pub.publish(camera_info(stamp, "lean_optical", 64, 48, 50.0, 50.0, 32.0, 24.0))
            harness.spin(0.05)
            image_pub.publish(conversions.numpy_to_image(np.full((48, 64, 3), 90, np.uint8), "rgb8",
                                                         header(stamp, "lean_optical")))
            harness.wait(lambda: bool(depth and points and colour), 1.0)
            stamp += 100_000_000
        assert depth and points and colour, node.log()
        rss_mb = int(next(line.split()[1] for line in Path(f"/proc/{node.process.pid}/status").read_text()
                          .splitlines() if line.startswith("VmRSS:"))) / 1024
        assert rss_mb <= 300, f"RSS {rss_mb:.0f} MB"  # issue 19's goal; torch alone costs more
    finally:
        harness.close()
        code = node.stop()
    log = node.log()
    assert code == 0 and f"{MODULES_AT_EXIT} \n" in log, log  # nothing after the colon: none of HEAVY loaded
    assert "backend onnxruntime on cpu" in log, log


# --------------------------------------------------------------------------- backend 'auto' on a CPU
def test_auto_serves_a_safetensors_model_through_a_checked_onnx_export_on_the_cpu():
    from kd_depth_core.inference import DepthPredictor

    fast = DepthPredictor(STUDENT, device="cpu", cpu_backend="onnxruntime", scale_mode="none")
    eager = DepthPredictor(STUDENT, device="cpu", scale_mode="none")  # the library's default stays PyTorch
    assert fast.backend == "onnxruntime" and not fast.backend_fallback
    assert "ONNX Runtime on the CPU (exported in memory; matches PyTorch, max relative error" in fast.backend_note
    assert eager.backend == "torch" and eager.backend_note == ""
    image = np.random.default_rng(0).integers(0, 256, (120, 400, 3), dtype=np.uint8)
    a, b = fast.predict(image), eager.predict(image)
    np.testing.assert_allclose(a.depth, b.depth, rtol=1e-3)
    np.testing.assert_allclose(a.uncertainty, b.uncertainty, rtol=1e-3)
    bf16 = DepthPredictor(STUDENT, device="cpu", precision="bf16", cpu_backend="onnxruntime")
    assert bf16.backend == "torch" and bf16.backend_note == "backend 'auto': precision bf16 runs with PyTorch"


class _Refuses:
    """Builds networks whose ONNX export is refused or whose export computes something else than eager."""

    @staticmethod
    def network(mode: str):
        import torch
        from torch import nn

        class Net(nn.Module):
            size_multiple, input_names, has_uncertainty = 8, ("image",), False

            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 1, 3, padding=1)

            def forward(self, image):
                disp = torch.sigmoid(self.conv(image))
                if torch.onnx.is_in_onnx_export():
                    if mode == "refuse":
                        raise RuntimeError("this network runs a step outside the graph and cannot be exported")
                    disp = disp * 0.5  # the traced graph differs from eager
                return {"disp": [disp]}

        from kd_depth_core.models.io import ModelMetadata

        net = Net().eval()
        meta = ModelMetadata.from_dict({
            "model_name": "probe", "model_kwargs": {}, "input_height": 16, "input_width": 24, "mean": [0, 0, 0],
            "std": [1, 1, 1], "size_multiple": 8, "min_depth": 0.1, "max_depth": 10.0, "scale_kind": "metric",
            "focal_length_px": None, "stereo": False, "has_uncertainty": False, "training_config": {},
            "created_by": "test"})
        return net, meta


def test_auto_falls_back_to_pytorch_with_the_reason_when_the_export_is_refused():
    from kd_depth_core.inference import DepthPredictor

    predictor = DepthPredictor(_Refuses.network("refuse"), device="cpu", cpu_backend="onnxruntime")
    assert predictor.backend == "torch" and predictor.backend_fallback
    assert predictor.backend_note.startswith("backend 'auto': the ONNX export failed (RuntimeError: this network "
                                             "runs a step outside the graph and cannot be exported")
    assert predictor.backend_note.endswith("; serving the model with PyTorch")
    assert predictor.predict(np.zeros((16, 24, 3), np.uint8)).depth.shape == (16, 24)
    with pytest.raises(RuntimeError, match="cannot be exported"):  # forced: the failure is the error
        DepthPredictor(_Refuses.network("refuse"), device="cpu", backend="onnxruntime")


def test_auto_falls_back_to_pytorch_when_the_export_differs_and_a_forced_onnx_refuses():
    from kd_depth_core.inference import DepthPredictor

    predictor = DepthPredictor(_Refuses.network("differ"), device="cpu", cpu_backend="onnxruntime")
    assert predictor.backend == "torch" and predictor.backend_fallback
    assert "the in-memory ONNX export differs from PyTorch (max relative error" in predictor.backend_note
    assert "tolerance 0.001" in predictor.backend_note
    with pytest.raises(ValueError, match=r"^backend: the in-memory ONNX export of probe differs from PyTorch .*"
                                         r"use backend 'torch'$"):
        DepthPredictor(_Refuses.network("differ"), device="cpu", backend="onnxruntime")
    # the tolerance is what decides: the real student's export differs from eager by float rounding only
    from kd_depth_core.inference.backends import create_backend
    from kd_depth_core.inference.export import check_backend
    from kd_depth_core.models.io import load_model

    network, meta = load_model(STUDENT)
    error = check_backend(create_backend("onnxruntime", network, meta, "cpu"), network, meta, batch=1).max_rel_error
    assert 0 < error < 1e-4
    strict = DepthPredictor(STUDENT, device="cpu", cpu_backend="onnxruntime", onnx_tolerance=error / 2)
    assert strict.backend == "torch" and strict.backend_fallback and "differs" in strict.backend_note


@pytest.mark.parametrize("kwargs, message", [
    ({"cpu_backend": "tensorrt"}, "^cpu_backend: expected one of torch, onnxruntime, got 'tensorrt'$"),
    ({"onnx_tolerance": -1.0}, r"^onnx_tolerance: expected a finite number >= 0, got -1.0$"),
    ({"onnx_tolerance": float("nan")}, "^onnx_tolerance: expected a finite number >= 0, got nan$"),
])
def test_bad_backend_options_are_one_line_errors_naming_the_option(kwargs, message):
    from kd_depth_core.inference import DepthPredictor

    with pytest.raises(ValueError, match=message):
        DepthPredictor(STUDENT, device="cpu", **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_auto_stays_pytorch_on_cuda():
    from kd_depth_core.inference import DepthPredictor

    predictor = DepthPredictor(STUDENT, device="auto", cpu_backend="onnxruntime")
    assert predictor.backend == "torch" and predictor.device.startswith("cuda")
    assert predictor.backend_note == "backend 'auto': PyTorch on CUDA" and not predictor.backend_fallback


# --------------------------------------------------------------------------- the node's backend parameter
@pytest.mark.parametrize("backend, expected", [("auto", "backend onnxruntime on cpu"), ("torch", "backend torch on cpu")])
def test_the_node_serves_a_safetensors_model_with_onnx_runtime_by_default_and_torch_when_asked(tmp_path, backend,
                                                                                               expected):
    from sensor_msgs.msg import CameraInfo, Image

    from kd_depth_ros import conversions

    model = write_constant_model(tmp_path / "zero.safetensors")
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml",
                       params={"model_path": str(model), "backend": backend, "publish_points": False},
                       remaps={"image": "/auto/image", "camera_info": "/auto/camera_info", "__ns": "/auto"},
                       env=DDS_ENV)
    harness = RosHarness("auto_backend_harness")
    try:
        depth = harness.subscribe(Image, "/auto/depth")
        image_pub = harness.publisher(Image, "/auto/image", "best_effort")
        info_pub = harness.publisher(CameraInfo, "/auto/camera_info", "best_effort")
        assert harness.wait(lambda: image_pub.get_subscription_count() > 0
                            and harness.node.count_publishers("/auto/depth") > 0, STARTUP_S), node.log()
        stamp = 3_000_000_000
        deadline = time.monotonic() + MESSAGE_S
        while not depth and time.monotonic() < deadline:
            info_pub.publish(camera_info(stamp, "auto_optical", 96, 64, 60.0, 60.0, 48.0, 32.0))
            harness.spin(0.05)
            image_pub.publish(conversions.numpy_to_image(np.full((64, 96, 3), 80, np.uint8), "rgb8",
                                                         header(stamp, "auto_optical")))
            harness.wait(lambda: bool(depth), 1.0)
            stamp += 100_000_000
        assert depth, node.log()
        np.testing.assert_allclose(conversions.image_to_depth(depth[0]), constant_depth(1.0, 3.0), rtol=1e-4)
        log = node.log()
        assert "configured: DepthPredictor(" in log and expected in log, log
        if backend == "auto":
            assert "backend 'auto': ONNX Runtime on the CPU (exported in memory; matches PyTorch" in log, log
        else:
            assert "backend 'auto'" not in log, log
    finally:
        harness.close()
        node.stop()


def test_onnx_runtime_threads_follow_the_cpus_the_process_may_use():
    """ONNX Runtime's default counts the machine's cores; a process pinned to fewer (taskset, cpuset) gets one thread
    per allowed CPU, so its threads do not fight over one core (torch already does this)."""
    result = run_python("""
        import os
        from kd_depth_core.inference.backends import onnx_session, onnx_threads, usable_cpus
        assert onnx_threads(3) == 3
        assert onnx_threads(0) == (0 if usable_cpus() == os.cpu_count() else usable_cpus())
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        assert usable_cpus() == 1 and onnx_threads(0) == (1 if os.cpu_count() > 1 else 0)
        print("ok")
        """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
