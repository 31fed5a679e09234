"""`kd-depth evaluate` and `kd-depth compare` end to end with a real (tiny, zero-weight) released model."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest

from kd_depth_core.data.sequence import CameraModel, SequenceWriter, write_splits
from kd_depth_core.eval import compare_cli, evaluate_cli
from kd_depth_core.eval.report import read_json


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(path)) is not None


@pytest.fixture
def one_torch_thread():
    """Tiny networks run faster on one thread, above all on a busy shared machine; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_zero_model(path, min_depth: float = 1.0, max_depth: float = 3.0, stereo: bool = False):
    """A tiny released metric model with all-zero weights: depth = 1/(1/3 + (1 - 1/3)/2) = 1.5 m, σ = 1 m."""
    import torch

    from kd_depth_core.models import create_model
    from kd_depth_core.models.io import ModelMetadata, save_model

    if stereo:
        model = create_model("stereo_teacher", backbone="lcnet_050", max_disparity=16, match_channels=8,
                             aggregation_channels=16, refine_channels=8, block_matching=0)
    else:
        model = create_model("student_lcnet", backbone="lcnet_050", decoder_channels=(8, 8, 8, 8), uncertainty=True)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.zero_()
    if stereo:  # uniform matching: the mean of candidates 0..16 px = 8 px; fx·B = 12 px·m -> 1.5 m
        model.candidates.copy_(torch.arange(5) * 4.0)
        model.set_rig(fx=40.0, baseline=0.3, width=96, min_depth=min_depth, max_depth=max_depth)
    meta = ModelMetadata.from_model(model, input_height=64, input_width=96, min_depth=min_depth, max_depth=max_depth,
                                    scale_kind="metric", focal_length_px=None, has_uncertainty=True, stereo=stereo)
    return save_model(path, model, meta)


@pytest.mark.slow
def test_evaluate_and_compare_commands_with_a_real_released_model(tmp_path, capsys, one_torch_thread):
    camera = CameraModel(96, 64, np.array([[40.0, 0, 48], [0, 40.0, 32], [0, 0, 1]]))
    with SequenceWriter(tmp_path / "data" / "seq", camera, has_depth=True) as writer:
        for i in range(3):
            writer.add_frame(i + 1, np.full((64, 96, 3), 60, np.uint8), depth=np.full((64, 96), 4.0 + i, np.float32))
    write_splits(tmp_path / "data", {"test": ["seq"]})
    model = _write_zero_model(tmp_path / "zero.safetensors")
    common = ["--data", str(tmp_path / "data"), "--protocol", "sequence", "--device", "cpu", "--no-progress"]
    args = _parse(evaluate_cli, ["--model", str(model), "--out", str(tmp_path / "out"), "--panels", "1"] + common)
    assert evaluate_cli.run(args) == 0
    captured = capsys.readouterr()
    assert "metric model: median scaling off" in captured.err
    results = read_json(tmp_path / "out" / "results.json")
    # constant 1.5 m against 4, 5, 6 m
    assert results["mean"]["abs_rel"] == pytest.approx((2.5 / 4 + 3.5 / 5 + 4.5 / 6) / 3, rel=1e-4)
    assert results["scale_ratio"] is None
    calibration = results["uncertainty"]["calibration"]  # σ = 1 m: only the 2.5 m errors lie within 3σ
    assert calibration["observed"][-1] == pytest.approx(1 / 3) and calibration["ks"][-1] == 3.0
    assert _is_png(tmp_path / "out" / "calibration.png") and _is_png(tmp_path / "out" / "sparsification.png")

    args = _parse(compare_cli, ["--model", str(model), "--model", str(model), "--label", "a", "--label", "b",
                                "--median-scaling", "--out", str(tmp_path / "cmp"), "--panels", "1"] + common)
    assert compare_cli.run(args) == 0
    compared = read_json(tmp_path / "cmp" / "compare.json")["results"]
    assert [r["label"] for r in compared] == ["a", "b"]
    assert compared[0]["mean"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)  # forced median scaling
    assert _is_png(tmp_path / "cmp" / "compare.png")


def test_evaluate_a_stereo_model_on_sequences_with_right_images(tmp_path, capsys, one_torch_thread):
    camera = CameraModel(96, 64, np.array([[40.0, 0, 48], [0, 40.0, 32], [0, 0, 1]]), baseline=0.1)
    with SequenceWriter(tmp_path / "data" / "seq", camera, has_depth=True, has_right=True) as writer:
        for i in range(2):
            image = np.full((64, 96, 3), 60, np.uint8)
            writer.add_frame(i + 1, image, image, depth=np.full((64, 96), 3.0, np.float32))
    write_splits(tmp_path / "data", {"test": ["seq"]})
    model = _write_zero_model(tmp_path / "stereo.safetensors", stereo=True)
    args = _parse(evaluate_cli, ["--model", str(model), "--data", str(tmp_path / "data"), "--protocol", "sequence",
                                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")])
    assert evaluate_cli.run(args) == 0
    assert read_json(tmp_path / "out" / "results.json")["mean"]["abs_rel"] == pytest.approx(0.5, rel=1e-4)  # 1.5 vs 3

    predict_fn, _ = evaluate_cli.load_predict_fn(model, args)
    with pytest.raises(ValueError, match="is a stereo model and these samples have no right image"):
        predict_fn(np.zeros((64, 96, 3), np.uint8))
