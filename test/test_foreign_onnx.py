"""Foreign ONNX depth models: the model card, the ONNX Runtime backend, DepthPredictor, predict and evaluate."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from foreign_fixtures import card_data, pixel_disparity_onnx, student_disparity_onnx, write_card  # noqa: E402

from kd_depth_core.inference.foreign import (  # noqa: E402
    ForeignOnnxBackend,
    ModelCardError,
    card_from_dict,
    load_card,
    raw_to_depth,
)
from kd_depth_core.inference.predictor import DepthPredictor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    base = tmp_path_factory.mktemp("foreign")
    path, module = student_disparity_onnx(base / "student.onnx")
    return {"onnx": path, "card": write_card(base / "card.yaml"), "module": module, "base": base}


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_backend_prepares_the_image_as_the_card_says_and_reads_names_from_the_file(student):
    card = load_card(student["card"], student["onnx"])
    backend = ForeignOnnxBackend(student["onnx"], card, device="cpu", input_size=(80, 110), max_batch=2)
    assert backend.input_name == "pixel_values" and backend.output_name == "predicted_depth"  # from the file
    assert backend.input_size == (84, 112)  # nearest multiples of 14
    rgb = np.stack([_rgb(84, 112, s) for s in range(3)]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    raw, uncertainty = backend.run(rgb)
    assert uncertainty is None and raw.shape == (3, 1, 84, 112) and backend.calls == 2  # batches of 2
    np.testing.assert_allclose(raw, student["module"].reference(rgb), rtol=1e-4, atol=1e-5)
    # the output depends on the pixels, so a wrong normalisation would show
    assert np.abs(raw[0] - raw[1]).max() > 1e-3


@pytest.mark.parametrize("changes, field", [
    ({"input.name": "image"}, "input.name"),                       # the file's input is 'pixel_values'
    ({"output.name": "depth"}, "output.name"),
    ({"input.size": [64, 96]}, "input.size"),                      # not multiples of 14
    ({"input.default_size": [70, 100]}, "input.default_size"),
    ({"kind": "disparity"}, "kind"),                               # unknown output kind
    ({"input.mean": ...}, "input.mean"),                           # missing field
    ({"input.channel_order": ...}, "input.channel_order"),
    ({"input.std": [0.2, 0.0, 0.2]}, "input.std"),                 # impossible value
    ({"input.value_range": [1.0, 0.0]}, "input.value_range"),
    ({"input.layout": "CHW"}, "input.layout"),
    ({"input.scale": 1.0}, "input.scale"),                         # unknown key
])
def test_bad_cards_are_refused_naming_the_field(student, tmp_path, changes, field):
    path = write_card(tmp_path / "bad.yaml", **changes)
    with pytest.raises(ModelCardError) as error:
        ForeignOnnxBackend(student["onnx"], load_card(path, student["onnx"]), device="cpu")
    assert field in str(error.value) and str(path) in str(error.value)


def test_a_dynamic_model_without_a_size_rule_is_refused(student, tmp_path):
    path = write_card(tmp_path / "nosize.yaml", **{"input.size_multiple": ..., "input.default_size": ...})
    with pytest.raises(ModelCardError, match="input.size_multiple"):
        ForeignOnnxBackend(student["onnx"], load_card(path, student["onnx"]), device="cpu")


def test_relative_model_needs_a_usable_scale_mode(student):
    for mode in ("auto", "none", "focal"):
        with pytest.raises(ValueError, match="scale_mode") as error:
            DepthPredictor(str(student["onnx"]), model_card=str(student["card"]), scale_mode=mode, device="cpu")
        assert "ground_plane" in str(error.value) and "fixed" in str(error.value)


def test_predictor_inverts_relative_disparity_and_applies_the_fixed_scale(student):
    predictor = DepthPredictor(str(student["onnx"]), model_card=str(student["card"]), scale_mode="fixed",
                               scale_factor=2.0, output="model", device="cpu")
    meta = predictor.metadata
    assert (meta.input_height, meta.input_width) == (70, 98) and meta.has_uncertainty is False
    assert meta.scale_kind == "relative" and "card" in predictor.describe()
    image = _rgb(70, 98, 5)
    prediction = predictor.predict(image)
    raw = student["module"].reference(image.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 0]
    np.testing.assert_allclose(prediction.depth, 2.0 / raw, rtol=1e-4)  # depth = factor / disparity
    assert prediction.uncertainty is None and prediction.scale_info.mode == "fixed"
    batch = predictor.predict_batch([image, _rgb(100, 150, 6)])
    np.testing.assert_allclose(batch[0].depth, prediction.depth, rtol=1e-5)


def test_card_beside_the_file_is_picked_up_and_its_absence_explained(student, tmp_path):
    onnx = shutil.copy(student["onnx"], tmp_path / "da.onnx")
    with pytest.raises(ModelCardError, match="model card"):
        DepthPredictor(str(onnx), scale_mode="fixed", scale_factor=1.0, device="cpu")
    shutil.copy(student["card"], tmp_path / "da.card.yaml")
    predictor = DepthPredictor(str(onnx), scale_mode="fixed", scale_factor=1.0, device="cpu")
    assert predictor.card.source == str(tmp_path / "da.card.yaml")


def test_ground_plane_scale_recovers_metres_from_relative_disparity(tmp_path):
    """Disparity = 10 x red: an image whose red channel is proportional to a flat floor's true inverse depth."""
    onnx = pixel_disparity_onnx(tmp_path / "pixel.onnx")
    card = write_card(tmp_path / "pixel.card.yaml", **{"input.default_size": [84, 112]})
    height, width, f, cy, camera_height = 84, 112, 60.0, 84 * 0.4, 1.5
    rows = np.arange(height, dtype=np.float64)
    inverse_depth = np.where(rows > cy + 1, (rows - cy) / (f * camera_height), 0.0)  # floor below the horizon
    red = inverse_depth / inverse_depth.max() * 0.9  # arbitrary scale: relative disparity
    image = np.zeros((height, width, 3), np.uint16)
    image[..., 0] = np.round(red * 65535)[:, None]
    K = np.array([[f, 0, (width - 1) / 2], [0, f, cy], [0, 0, 1]])
    predictor = DepthPredictor(str(onnx), scale_mode="ground_plane", camera_height=camera_height, device="cpu")
    assert predictor.card.source == str(card)
    prediction = predictor.predict(image, K=K)
    assert prediction.scale_info.valid, prediction.scale_info.detail
    floor = rows > height * 0.6
    truth = 1.0 / inverse_depth[floor]
    np.testing.assert_allclose(prediction.depth[floor, :], np.repeat(truth[:, None], width, 1), rtol=2e-3)


def test_raw_to_depth_kinds():
    disparity = np.array([[[[2.0, 4.0, 0.0]]]], np.float32)
    card = card_from_dict(card_data())
    depth = raw_to_depth(disparity, card)[0, 0, 0]
    assert depth[:2].tolist() == [0.5, 0.25] and depth[2] == pytest.approx(1 / (1e-3 * 3.0))  # floor: 1e-3 x median
    metric = card_from_dict(card_data(kind="metric_depth", **{"output.valid_range": [0.5, 3.0]}))
    assert raw_to_depth(disparity, metric)[0, 0, 0].tolist() == [2.0, 3.0, 0.5]


def _run_cli(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_predict_command_runs_a_foreign_model(student, tmp_path, capsys):
    import cv2

    from kd_depth_core.inference import predict_cli

    image = _rgb(70, 98, 9)
    cv2.imwrite(str(tmp_path / "frame.png"), image[:, :, ::-1])
    common = [str(tmp_path / "frame.png"), "--model", str(student["onnx"]), "--model-card", str(student["card"]),
              "--out", str(tmp_path / "out"), "--formats", "npy", "--device", "cpu"]
    assert _run_cli(predict_cli, common) == 2
    assert "scale_mode" in capsys.readouterr().err
    assert _run_cli(predict_cli, common + ["--scale", "fixed", "--scale-factor", "3"]) == 0
    depth = np.load(tmp_path / "out" / "frame_depth.npy")
    raw = student["module"].reference(image.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 0]
    np.testing.assert_allclose(depth, 3.0 / raw, rtol=1e-4)


def test_evaluate_command_median_scales_a_relative_foreign_model(tmp_path, capsys):
    from kd_depth_core.data.sequence import CameraModel, SequenceWriter, write_splits
    from kd_depth_core.eval import evaluate_cli
    from kd_depth_core.eval.report import read_json

    onnx = pixel_disparity_onnx(tmp_path / "pixel.onnx")
    write_card(tmp_path / "pixel.card.yaml")  # default size 70 x 98 = the images
    camera = CameraModel(98, 70, np.array([[50.0, 0, 49], [0, 50.0, 35], [0, 0, 1]]))
    red = np.array([50, 100, 200], np.uint8)[np.arange(98) % 3]  # disparity 10 * red / 255
    with SequenceWriter(tmp_path / "data" / "seq", camera, has_depth=True) as writer:
        for i in range(2):
            image = np.zeros((70, 98, 3), np.uint8)
            image[..., 0] = red[None, :]
            gt = np.repeat((200.0 / red)[None, :] * (1 + i), 70, 0).astype(np.float32)  # 1, 2, 4 m (x2)
            writer.add_frame(i + 1, image, depth=gt)
    write_splits(tmp_path / "data", {"test": ["seq"]})
    argv = ["--model", str(onnx), "--data", str(tmp_path / "data"), "--protocol", "sequence", "--device", "cpu",
            "--no-progress", "--out", str(tmp_path / "out"), "--panels", "0"]
    assert _run_cli(evaluate_cli, argv) == 0
    assert "median scaling" in capsys.readouterr().out
    results = read_json(tmp_path / "out" / "results.json")
    assert results["mean"]["abs_rel"] == pytest.approx(0.0, abs=2e-3)  # depth ∝ 1 / disparity, exactly
    assert results["scale_ratio"] is not None
    assert _run_cli(evaluate_cli, argv + ["--no-median-scaling"]) == 2
