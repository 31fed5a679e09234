"""DepthPredictor (inference/predictor.py) and `kd-depth predict`.

Most tests use a tiny network whose output is known by hand: disparity (sigmoid space) =
0.2 + 0.6 · (0.5 R + 0.3 G + 0.2 B) of the normalised image, so a uniform grey image of value g
in [0, 1] gives depth 1 / (1/max + (1/min - 1/max) · (0.2 + 0.6 g)) metres everywhere, and pure
red / blue give g = 0.5 / 0.2 (channel order matters).
"""
from __future__ import annotations

import argparse
import threading

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from kd_depth_core.inference import DepthPredictor, predict_cli
from kd_depth_core.models.io import ModelMetadata

MIN_DEPTH, MAX_DEPTH = 0.1, 100.0


def expected_depth(grey: float) -> float:
    disp = 0.2 + 0.6 * grey
    return 1.0 / (1.0 / MAX_DEPTH + (1.0 / MIN_DEPTH - 1.0 / MAX_DEPTH) * disp)


class BrightnessNet(nn.Module):
    """disp = 0.2 + 0.6 · (0.5 R + 0.3 G + 0.2 B); log_sigma = log(0.05) (std 5 cm)."""

    input_names = ("image",)

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.6))
        self.register_buffer("weights", torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> dict:
        disp = 0.2 + self.gain * (image * self.weights).sum(1, keepdim=True)
        scales = [disp] + [nn.functional.avg_pool2d(disp, 2 ** s) for s in range(1, 4)]
        return {"disp": scales, "log_sigma": torch.full_like(disp, float(np.log(0.05)))}


class StereoBrightnessNet(BrightnessNet):
    """BrightnessNet of (left + right) / 2."""

    input_names = ("left", "right")

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict:
        return super().forward((left + right) / 2)


def metadata(**overrides) -> ModelMetadata:
    fields = dict(model_name="brightness", model_kwargs={}, input_height=32, input_width=64, mean=(0, 0, 0),
                  std=(1, 1, 1), size_multiple=32, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH, scale_kind="metric",
                  focal_length_px=100.0, stereo=False, has_uncertainty=True, training_config={}, created_by="test")
    fields.update(overrides)
    return ModelMetadata.from_dict(fields)


@pytest.fixture(scope="module")
def predictor():
    return DepthPredictor((BrightnessNet(), metadata()), device="cpu")


def grey(value: int, height: int = 37, width: int = 53, dtype=np.uint8) -> np.ndarray:
    return np.full((height, width), value, dtype)


@pytest.mark.parametrize("image", [
    grey(255),                                                     # H×W uint8
    grey(255)[:, :, None],                                         # H×W×1
    np.repeat(grey(255)[:, :, None], 3, axis=2),                   # RGB
    np.dstack([np.repeat(grey(255)[:, :, None], 3, axis=2), grey(7)]),  # RGBA: alpha ignored
    grey(65535, dtype=np.uint16),                                  # uint16 / 65535
    np.ones((37, 53, 3), np.float32),                              # float in [0, 1]
], ids=["grey", "grey1", "rgb", "rgba", "uint16", "float"])
def test_every_input_kind_gives_the_hand_computed_depth_at_input_size(predictor, image):
    pred = predictor.predict(image)
    assert pred.depth.shape == (37, 53) and pred.depth.dtype == np.float32
    np.testing.assert_allclose(pred.depth, expected_depth(1.0), rtol=1e-5)
    np.testing.assert_allclose(pred.uncertainty, 0.05, rtol=1e-5)
    assert pred.scale_info.mode == "none"


def test_bgr_flag_and_channel_order(predictor):
    first_channel = np.zeros((31, 45, 3), np.uint8)
    first_channel[..., 0] = 255
    as_red = predictor.predict(first_channel, bgr=False).depth  # channel 0 read as red
    as_blue = predictor.predict(first_channel, bgr=True).depth  # channel 0 read as blue (OpenCV order)
    np.testing.assert_allclose(as_red, expected_depth(0.5), rtol=1e-5)
    np.testing.assert_allclose(as_blue, expected_depth(0.2), rtol=1e-5)
    bgra = np.dstack([first_channel, np.full((31, 45), 9, np.uint8)])
    np.testing.assert_allclose(predictor.predict(bgra, bgr=True).depth, as_blue, rtol=1e-6)
    bgr_default = DepthPredictor((BrightnessNet(), metadata()), device="cpu", bgr=True)
    np.testing.assert_allclose(bgr_default.predict(first_channel).depth, as_blue, rtol=1e-6)


def test_model_resolution_output_and_odd_sizes(predictor):
    model_res = DepthPredictor((BrightnessNet(), metadata()), device="cpu", output="model")
    assert model_res.predict(grey(128, 97, 301)).depth.shape == (32, 64)
    for height, width in [(1, 1), (7, 3), (480, 641)]:
        assert predictor.predict(grey(0, height, width)).depth.shape == (height, width)


def test_predict_batch_matches_single_predictions(predictor):
    images = [grey(0, 20, 30), grey(255, 41, 17), grey(128, 64, 64)]
    batch = predictor.predict_batch(images)
    assert [p.depth.shape for p in batch] == [(20, 30), (41, 17), (64, 64)]
    for image, pred in zip(images, batch):
        np.testing.assert_allclose(pred.depth, predictor.predict(image).depth, rtol=1e-6)
    assert batch[0].depth[0, 0] == pytest.approx(expected_depth(0.0), rel=1e-5)


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_traced_and_onnx_backends_give_the_hand_computed_depth(backend):
    other = DepthPredictor((BrightnessNet(), metadata()), device="cpu", backend=backend)
    assert other.backend == backend
    pred = other.predict(np.full((21, 33, 3), 0.75, np.float32), K=np.diag([150.0, 150.0, 1.0]))
    # 0.75 reaches the network (networks normalise in their encoder); K: 150 px at 33 wide -> 290.9 px at
    # 64 wide -> × 2.909.
    factor = 150.0 * 64 / 33 / 100.0
    assert pred.scale_info.factor == pytest.approx(factor)
    np.testing.assert_allclose(pred.depth, factor * expected_depth(0.75), rtol=1e-5)
    np.testing.assert_allclose(pred.uncertainty, factor * 0.05, rtol=1e-5)


def test_metadata_that_asks_for_a_second_normalisation_is_refused():
    # one normalisation site: the network's encoder; metadata mean/std other than identity would be ignored
    with pytest.raises(ValueError, match="normalise inside their encoder"):
        DepthPredictor((BrightnessNet(), metadata(mean=(0.5,) * 3, std=(0.5,) * 3)), device="cpu")


@pytest.mark.parametrize("image, error, match", [
    (np.zeros((4, 4, 3, 1), np.uint8), ValueError, r"expected H×W, H×W×1.*got shape \(4, 4, 3, 1\)"),
    (np.zeros(16, np.uint8), ValueError, r"got shape \(16,\)"),
    (np.zeros((4, 4, 2), np.uint8), ValueError, r"got shape \(4, 4, 2\)"),
    (np.zeros((0, 4, 3), np.uint8), ValueError, "empty image"),
    (np.zeros((4, 4, 3), np.int32), TypeError, "expected dtype uint8, uint16 or float, got int32"),
    (np.zeros((4, 4), bool), TypeError, "got bool"),
    (np.full((4, 4), 2.0, np.float32), ValueError, r"values in \[0, 1\], got range \[2.0, 2.0\]"),
    ([[0, 1], [1, 0]], TypeError, "expected a numpy array"),
])
def test_bad_images_raise_clear_errors(predictor, image, error, match):
    with pytest.raises(error, match=match):
        predictor.predict(image)


def test_focal_rescaling_through_the_predictor():
    pred_fx = DepthPredictor((BrightnessNet(), metadata(focal_length_px=100.0)), device="cpu")
    # Image 128 wide with fx 300 -> fx at the 64-wide network input = 150 -> factor 150 / 100.
    K = np.array([[300.0, 0, 63.5], [0, 300.0, 31.5], [0, 0, 1]])
    pred = pred_fx.predict(grey(255, 64, 128), K=K)
    assert pred.scale_info.mode == "focal" and pred.scale_info.factor == pytest.approx(1.5)
    np.testing.assert_allclose(pred.depth, 1.5 * expected_depth(1.0), rtol=1e-5)
    np.testing.assert_allclose(pred.uncertainty, 1.5 * 0.05, rtol=1e-5)
    with pytest.raises(ValueError, match="K: expected 3×3 intrinsics"):
        pred_fx.predict(grey(255), K=np.eye(2))


def test_relative_model_with_fixed_and_ground_plane_modes():
    fixed = DepthPredictor((BrightnessNet(), metadata(scale_kind="relative")), device="cpu",
                           scale_mode="fixed", scale_factor=3.0)
    pred = fixed.predict(grey(0))
    assert (pred.scale_info.mode, pred.scale_info.factor) == ("fixed", 3.0)
    np.testing.assert_allclose(pred.depth, 3 * expected_depth(0.0), rtol=1e-5)
    ground = DepthPredictor((BrightnessNet(), metadata(scale_kind="relative")), device="cpu",
                            scale_mode="ground_plane", camera_height=1.5)
    info = ground.predict(grey(0), K=np.array([[50.0, 0, 26], [0, 50.0, 18], [0, 0, 1]])).scale_info
    assert info.mode == "ground_plane" and not info.valid  # a uniform depth map is a wall, not a floor


def test_stereo_predictor():
    stereo = DepthPredictor((StereoBrightnessNet(), metadata(stereo=True)), device="cpu")
    pred = stereo.predict_stereo(grey(255), grey(0))
    np.testing.assert_allclose(pred.depth, expected_depth(0.5), rtol=1e-4)
    with pytest.raises(ValueError, match="stereo model: call predict_stereo"):
        stereo.predict(grey(0))
    with pytest.raises(ValueError, match="same size"):
        stereo.predict_stereo(grey(0, 10, 10), grey(0, 10, 12))


def test_stereo_metric_scale_follows_the_rig_baseline():
    """Training rig fx 100 px at the 64-px input, baseline 0.1 m: a rig with the same fx and 0.2 m gives 2× the depth
    for the same images (the network sees the same disparity); without the rig's or the training baseline, focal only."""
    meta = metadata(stereo=True, baseline_m=0.1)
    stereo = DepthPredictor((StereoBrightnessNet(), meta), device="cpu")
    left, right = grey(255, 32, 64), grey(0, 32, 64)
    K = np.array([[100.0, 0, 32], [0, 100.0, 16], [0, 0, 1]])  # image = network size: fx_run = fx_train
    same = stereo.predict_stereo(left, right, K=K, baseline=0.1)
    wide = stereo.predict_stereo(left, right, K=K, baseline=0.2)
    np.testing.assert_allclose(same.depth, expected_depth(0.5), rtol=1e-4)
    np.testing.assert_array_equal(wide.depth, 2 * same.depth)
    assert wide.scale_info.factor == 2.0 and wide.scale_info.extras["baseline_train"] == 0.1
    wide_default = DepthPredictor((StereoBrightnessNet(), meta), device="cpu", K=K, baseline=0.2)
    np.testing.assert_array_equal(wide_default.predict_stereo(left, right).depth, wide.depth)
    assert stereo.predict_stereo(left, right, K=K).scale_info.factor == 1.0  # rig baseline unknown
    older = DepthPredictor((StereoBrightnessNet(), metadata(stereo=True)), device="cpu")  # no training baseline
    assert older.predict_stereo(left, right, K=K, baseline=0.2).scale_info.factor == 1.0
    with pytest.raises(ValueError, match="baseline: expected a positive"):
        stereo.predict_stereo(left, right, K=K, baseline=0.0)


def test_concurrent_predictions_are_independent(predictor):
    values = [0, 64, 128, 192, 255] * 4
    results: dict[int, float] = {}

    def work(i: int) -> None:
        results[i] = float(predictor.predict(grey(values[i], 30 + i, 40)).depth.mean())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(values))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, value in enumerate(values):
        assert results[i] == pytest.approx(expected_depth(value / 255), rel=1e-5)


def test_describe_device_and_option_errors(predictor):
    assert predictor.device == "cpu"
    text = predictor.describe()
    assert "brightness" in text and "torch on cpu (fp32)" in text and "uncertainty" in text
    predictor.warmup(iterations=1)
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device"):
        DepthPredictor((BrightnessNet(), metadata()), device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="output: expected one of input, model"):
        DepthPredictor((BrightnessNet(), metadata()), output="full")
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of torch, torchscript, onnxruntime"):
        DepthPredictor((BrightnessNet(), metadata()), backend="tensorrt")
    bf16 = DepthPredictor((BrightnessNet(), metadata()), device="cpu", precision="bf16")
    np.testing.assert_allclose(bf16.predict(grey(255)).depth, expected_depth(1.0), rtol=2e-2)


def test_input_size_override_is_rounded_and_rescales_training_focal():
    resized = DepthPredictor((BrightnessNet(), metadata()), device="cpu", output="model", input_size=(60, 100))
    assert (resized.metadata.input_height, resized.metadata.input_width) == (64, 96)
    assert resized.metadata.focal_length_px == pytest.approx(150.0)  # 100 px at 64 wide -> 150 px at 96 wide
    pred = resized.predict(grey(255, 64, 96), K=np.diag([150.0, 150.0, 1.0]))
    assert pred.depth.shape == (64, 96) and pred.scale_info.factor == pytest.approx(1.0)
    with pytest.raises(ValueError, match="runs the fp32 ONNX graph"):
        DepthPredictor((BrightnessNet(), metadata()), device="cpu", backend="onnxruntime", precision="bf16")


def test_caller_model_is_not_modified():
    net = BrightnessNet().train()
    DepthPredictor((net, metadata()), device="cpu", precision="bf16")
    assert net.training and net.gain.dtype == torch.float32


# --------------------------------------------------------------------------- kd-depth predict
@pytest.fixture(scope="module")
def released(tmp_path_factory):
    from kd_depth_core.models import create_model
    from kd_depth_core.models.io import save_model

    model = create_model("student_lcnet", backbone="lcnet_050", uncertainty=True)
    meta = ModelMetadata.from_model(model, input_height=64, input_width=96, min_depth=0.1, max_depth=80.0,
                                    scale_kind="metric", focal_length_px=80.0)
    return save_model(tmp_path_factory.mktemp("released") / "tiny.safetensors", model, meta)


def run_predict(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    return predict_cli.run(parser.parse_args(argv))


def test_predict_cli_images_folder_and_video(released, tmp_path):
    rng = np.random.default_rng(0)
    single = tmp_path / "single.png"
    cv2.imwrite(str(single), rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 255, (40, 60), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.png"), rng.integers(0, 65535, (40, 60, 3), dtype=np.uint16))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    code = run_predict([str(single), str(folder), str(video), "--model", str(released), "--out", str(out),
                        "--device", "cpu", "--formats", "png16,npy,color,ply", "--fx", "60", "--every", "2"])
    assert code == 0
    depth = np.load(out / "single_depth.npy")
    assert depth.shape == (50, 70) and depth.dtype == np.float32
    png = cv2.imread(str(out / "single_depth.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.shape == (50, 70)
    np.testing.assert_array_equal(png, np.clip(np.rint(depth * 1000), 0, 65535).astype(np.uint16))
    assert np.load(out / "single_uncertainty.npy").shape == (50, 70)
    assert cv2.imread(str(out / "single_color.png")).shape == (50, 70, 3)
    header = (out / "single.ply").read_bytes().split(b"end_header\n")[0].decode()
    assert "element vertex 875" in header  # stride 2: 25 × 35 valid points
    assert sorted(p.name for p in (out / "frames").glob("*_depth.png")) == ["a_depth.png", "b_depth.png"]
    assert sorted(p.name for p in (out / "clip").glob("*_depth.npy")) == ["000000_depth.npy", "000002_depth.npy"]


def test_predict_cli_errors(released, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("x")
    assert run_predict([str(text), "--model", str(released), "--out", str(tmp_path / "o")]) == 2
    assert run_predict([str(tmp_path / "missing.png"), "--model", str(released), "--out", str(tmp_path)]) == 2
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((8, 8), np.uint8))
    assert run_predict([str(img), "--model", str(released), "--out", str(tmp_path), "--formats", "jpg"]) == 2
    assert run_predict([str(img), "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="would write the same outputs"):
        predict_cli.collect_sources([str(img), str(img)])


def test_png16_conversion_by_hand():
    depth = np.array([[0.0, 1.2344, np.nan, 70.0, -1.0]], np.float32)
    np.testing.assert_array_equal(predict_cli.depth_to_png16(depth), [[0, 1234, 0, 65535, 0]])


def test_colorize_depth_maps_inverse_depth_range_to_the_colormap_ends():
    from kd_depth_core.utils.colorize import COLORMAPS, colorize_depth

    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAPS["magma"])[:, 0, ::-1]  # RGB
    depth = np.array([[1.0, 10.0, 0.0, np.nan, 100.0]], np.float32)
    colors = colorize_depth(depth, min_depth=1.0, max_depth=10.0, invalid_color=(0, 255, 0))
    np.testing.assert_array_equal(colors[0, 0], lut[255])  # nearest: 1/1 m -> top of the map
    np.testing.assert_array_equal(colors[0, 1], lut[0])    # farthest: 1/10 m -> bottom
    np.testing.assert_array_equal(colors[0, 2:4], [[0, 255, 0]] * 2)  # invalid
    np.testing.assert_array_equal(colors[0, 4], lut[0])    # beyond the range: clipped
    bgr = colorize_depth(depth, 1.0, 10.0, invalid_color=(0, 255, 0), bgr=True)
    np.testing.assert_array_equal(bgr, colors[..., ::-1])


def test_resize_map_into_a_given_buffer():
    from kd_depth_core.inference.preprocess import resize_map

    values = np.array([[1.0, 3.0]], dtype=np.float32)
    out = np.full((1, 4), -1.0, np.float32)
    assert resize_map(values, 1, 4, out=out) is out
    np.testing.assert_allclose(out, [[1.0, 1.5, 2.5, 3.0]])  # bilinear, pixel centres (OpenCV)
    assert resize_map(values, 1, 2, out=out[:, :2].copy()) is not values  # same size: copied into out
    doubles = values.astype(np.float64)  # OpenCV would allocate for another dtype: still lands in out
    out[:] = 0
    assert resize_map(doubles, 1, 4, out=out) is out and out[0, 3] == 3.0
    with pytest.raises(ValueError, match=r"^out: expected shape \(1, 4\)"):
        resize_map(values, 1, 4, out=np.zeros((2, 4), np.float32))
