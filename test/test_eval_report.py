"""Reports (JSON round trip, tables), figures, and the `evaluate` / `compare` commands."""
from __future__ import annotations

import argparse
import json
import math

import cv2
import numpy as np
import pytest

from kd_depth_core.data.benchmarks import Sample
from kd_depth_core.data.sequence import CameraModel, SequenceWriter, write_splits
from kd_depth_core.eval import compare_cli, evaluate_cli, plots
from kd_depth_core.eval.evaluate import evaluate
from kd_depth_core.eval.protocols import get_protocol
from kd_depth_core.eval.report import (
    comparison_report,
    console_report,
    format_table,
    load_result,
    markdown_report,
    read_json,
    write_json,
    write_results,
)


def _result(label: str = "student", scale: float = 0.5, with_sigma: bool = True) -> dict:
    rng = np.random.default_rng(3)
    samples = []
    for i in range(3):
        depth = rng.uniform(2.0, 20.0, (12, 16)).astype(np.float32)
        samples.append(Sample(np.full((12, 16, 3), i, np.uint8), depth, f"img_{i}", {}))
    by_value = {i: s.depth for i, s in enumerate(samples)}

    def predict(image):
        gt = by_value[int(image[0, 0, 0])]
        pred = scale * gt * rng.uniform(0.9, 1.1, gt.shape)
        return pred, (np.abs(pred - scale * gt) + 0.01 if with_sigma else None)

    return evaluate(predict, samples, get_protocol("sequence"), label=label, progress=False, num_visuals=2)


def test_results_round_trip_through_json_with_nan_as_null(tmp_path):
    data = _result().to_dict()
    data["mean"]["silog"] = float("nan")
    paths = write_results(tmp_path, data)
    loaded = read_json(paths["json"])
    assert loaded["mean"]["silog"] is None
    assert loaded["mean"]["abs_rel"] == pytest.approx(data["mean"]["abs_rel"])
    assert loaded["per_image"][1]["name"] == "img_1" and loaded["num_images"] == 3
    assert loaded["protocol"]["name"] == "sequence" and loaded["uncertainty"]["ause"]["abs_rel"] >= 0
    assert json.loads(paths["json"].read_text()) == loaded  # strict JSON (no NaN tokens)
    assert "| student |" in paths["markdown"].read_text()
    assert load_result(paths["json"])["label"] == "student"
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="other.json: not a kd-depth results file"):
        load_result(tmp_path / "other.json")


def test_tables_format_values_and_mark_the_best():
    rows = [("a", {"abs_rel": 0.1234, "a1": 0.8}), ("b", {"abs_rel": 0.1, "a1": 0.9, "rmse": math.nan})]
    console = format_table(rows, ["abs_rel", "rmse", "a1"])
    lines = console.splitlines()
    assert lines[0].split() == ["model", "AbsRel↓", "RMSE↓", "δ<1.25↑"]
    assert lines[2].split() == ["a", "0.123", "—", "0.800"]
    assert lines[3].split() == ["b", "0.100*", "—", "0.900*"]
    markdown = format_table(rows, ["abs_rel", "a1"], style="markdown")
    assert markdown.splitlines()[3] == "| b | **0.100** | **0.900** |"
    with pytest.raises(ValueError, match="unknown"):
        format_table(rows, ["accuracy"])


def test_console_and_markdown_reports_contain_the_protocol_table_and_extras():
    data = _result().to_dict()
    text = console_report(data)
    assert "student on sequence: 3 images" in text and "SILog" in text
    assert "Median scaling ratios: median 2.0" in text and "AUSE:" in text
    page = markdown_report(data)
    assert page.startswith("# student — sequence") and "## Worst 3 images by AbsRel" in page
    both = comparison_report([data, _result("teacher", with_sigma=False).to_dict()])
    assert "Comparison on sequence (3 images)" in both and "teacher" in both


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(path)) is not None


def test_figures_are_written_as_png(tmp_path):
    result = _result()
    panel = plots.save_depth_panel(result.visuals[0], tmp_path / "panel.png", title="t")
    assert _is_png(panel)
    summaries = {"student": result.uncertainty}
    assert _is_png(plots.save_figure(plots.sparsification_figure(summaries, ["rmse"]), tmp_path / "sp.png"))
    assert _is_png(plots.save_figure(plots.calibration_figure(summaries), tmp_path / "cal.png"))
    rows = [{"student": result.visuals[0], "copy": result.visuals[0]}]
    assert _is_png(plots.save_figure(plots.comparison_figure(rows), tmp_path / "cmp.png"))
    masked = plots.display_map(np.where(np.arange(100).reshape(10, 10) == 55, 3.0, 0.0))
    assert masked.count() == 25 and masked[4, 4] == 3.0  # one LiDAR point grown to 5x5 for display


def test_training_curves_from_tensorboard_logs(tmp_path):
    # TensorBoard's own event writer (the one torch's SummaryWriter wraps), without importing torch
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(tmp_path / "tb"))
    for step in range(5):
        for tag, value in (("loss/total", 1.0 / (step + 1)), ("val/abs_rel", 0.2 - 0.01 * step)):
            writer.add_event(Event(step=step, wall_time=1.0 + step,
                                   summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)])))
    writer.close()
    series = plots.read_tensorboard_scalars(tmp_path / "tb")
    assert sorted(series) == ["loss/total", "val/abs_rel"]
    assert series["loss/total"][0] == [0, 1, 2, 3, 4]
    assert series["loss/total"][1][3] == pytest.approx(0.25)
    assert _is_png(plots.save_figure(plots.training_curves_figure(series), tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="no scalar tag"):
        plots.read_tensorboard_scalars(tmp_path / "tb", ["lr"])


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_compare_command_combines_saved_results(tmp_path, capsys):
    write_json(tmp_path / "a" / "results.json", _result("student").to_dict())
    write_json(tmp_path / "b" / "results.json", _result("teacher", scale=1.0).to_dict())
    args = _parse(compare_cli, ["--results", str(tmp_path / "a" / "results.json"),
                                "--results", str(tmp_path / "b" / "results.json"), "--out", str(tmp_path / "cmp")])
    assert compare_cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "student" in printed and "teacher" in printed
    assert [r["label"] for r in read_json(tmp_path / "cmp" / "compare.json")["results"]] == ["student", "teacher"]
    assert _is_png(tmp_path / "cmp" / "compare_metrics.png")
    assert "| teacher |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_evaluate_command_reports_a_missing_model_or_split(tmp_path, capsys):
    args = _parse(evaluate_cli, ["--model", str(tmp_path / "none.safetensors"), "--data", str(tmp_path),
                                 "--protocol", "kitti_eigen"])
    assert evaluate_cli.run(args) == 2
    assert "splits/eigen/test_files.txt" in capsys.readouterr().err  # no split list is shipped


def test_evaluate_command_on_sequences_writes_table_results_and_panels(tmp_path, capsys, monkeypatch):
    camera = CameraModel(16, 12, np.array([[8.0, 0, 8], [0, 8.0, 6], [0, 0, 1]]))
    with SequenceWriter(tmp_path / "data" / "seq", camera, has_depth=True) as writer:
        for i in range(3):
            writer.add_frame(i + 1, np.full((12, 16, 3), 40 * i, np.uint8), depth=np.full((12, 16), 4.0 + i, np.float32))
    write_splits(tmp_path / "data", {"test": ["seq"]})
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    # The DepthPredictor (inference engine) is not part of this test: a constant-depth predictor stands in.
    seen_K = []

    def predict(image, K=None):
        seen_K.append(K)
        return np.full(image.shape[:2], 2.0), None

    monkeypatch.setattr(evaluate_cli, "load_predict_fn", lambda path, args: (predict, False))
    args = _parse(evaluate_cli, ["--model", str(model), "--data", str(tmp_path / "data"), "--protocol", "sequence",
                                 "--no-median-scaling", "--out", str(tmp_path / "out"), "--panels", "2", "--no-progress"])
    assert evaluate_cli.run(args) == 0
    assert "model on sequence: 3 images (no median scaling)" in capsys.readouterr().out
    results = read_json(tmp_path / "out" / "results.json")
    # gt 4, 5, 6 m vs 2 m: AbsRel 1/2, 3/5, 2/3
    assert results["mean"]["abs_rel"] == pytest.approx((0.5 + 0.6 + 2 / 3) / 3)
    assert results["protocol"]["median_scaling"] is False and results["scale_ratio"] is None
    panels = sorted((tmp_path / "out" / "panels").iterdir())
    assert [p.name for p in panels] == ["000_seq_000000.png", "001_seq_000002.png"] and all(map(_is_png, panels))
    assert len(seen_K) == 3 and seen_K[0] == pytest.approx(camera.K)  # the sequence's intrinsics reach the model



def test_evaluate_command_runs_the_real_predictor_at_model_resolution(tmp_path, capsys, monkeypatch):
    """No stubs: a released model file -> `kd-depth evaluate` -> DepthPredictor -> evaluate(). The network
    (test_eval_resize.TwoPlaneNet, 8x16) sees a 5 m | 50 m two-plane scene imaged at 32x64; the command
    must hand evaluate() the network-resolution depth so the protocol resizes it in disparity."""
    import sys
    from pathlib import Path

    from kd_depth_core.models import registry
    from kd_depth_core.models.io import save_model

    sys.path.insert(0, str(Path(__file__).parent))
    import test_eval_resize as scene

    monkeypatch.setitem(registry._MODELS, scene.MODEL_NAME, registry.ModelEntry(
        scene.MODEL_NAME, "depth", "two-plane test network", lambda: scene.TwoPlaneNet()))
    net = registry.create_model(scene.MODEL_NAME)
    model = save_model(tmp_path / "two_plane.safetensors", net, scene.two_plane_metadata())
    image, gt = scene.two_plane_scene()
    camera = CameraModel(scene.IMG_W, scene.IMG_H, np.array([[30.0, 0, 32], [0, 30.0, 16], [0, 0, 1]]))
    with SequenceWriter(tmp_path / "data" / "seq", camera, has_depth=True) as writer:
        for i in range(2):
            writer.add_frame(i + 1, image, depth=gt)
    write_splits(tmp_path / "data", {"test": ["seq"]})
    args = _parse(evaluate_cli, ["--model", str(model), "--data", str(tmp_path / "data"), "--protocol", "sequence",
                                 "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    predict_fn, metric = evaluate_cli.load_predict_fn(model, args)
    assert metric and predict_fn(image).depth.shape == (scene.NET_H, scene.NET_W)  # the network's resolution
    assert evaluate_cli.run(args) == 0
    assert "(no median scaling)" in capsys.readouterr().out  # a metric model
    results = read_json(tmp_path / "out" / "results.json")
    by_disparity, by_depth = scene.reference_scores(get_protocol("sequence", median_scaling=False))
    for name in ("abs_rel", "sq_rel", "rmse", "a1"):
        assert results["mean"][name] == pytest.approx(by_disparity[name], rel=1e-4, abs=1e-6), name
    assert results["mean"]["abs_rel"] != pytest.approx(by_depth["abs_rel"], rel=0.05)
    assert results["num_images"] == 2


def test_evaluate_command_with_a_real_student_and_the_real_predictor(tmp_path, capsys):
    """A real student_lcnet (random weights, so its depth depends on the pixels), released, then `kd-depth
    evaluate` -> DepthPredictor -> evaluate(), nothing stubbed. Ground truth is the model's own depth on
    camera A (fx 100 px at 192 px, the training focal): AbsRel 0. Camera B has twice the focal length, so
    the metric model's depth doubles (fx / fx_train) and AbsRel is |2g - g| / g = 1 exactly."""
    import torch

    from kd_depth_core.inference.predictor import DepthPredictor
    from kd_depth_core.models import create_model
    from kd_depth_core.models.io import ModelMetadata, save_model

    torch.manual_seed(0)
    net = create_model("student_lcnet", backbone="lcnet_050").eval()
    meta = ModelMetadata.from_model(net, input_height=64, input_width=96, min_depth=1.0, max_depth=10.0,
                                    scale_kind="metric", focal_length_px=50.0)  # fx at the 96 px input width
    model = save_model(tmp_path / "student.safetensors", net, meta)
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8), (192, 128), interpolation=cv2.INTER_CUBIC)
    K_a = np.array([[100.0, 0, 96], [0, 100.0, 64], [0, 0, 1]])
    gt = DepthPredictor(model, device="cpu").predict(image, K=K_a).depth.astype(np.float32)
    assert gt.shape == (128, 192) and float(gt.std()) > 1e-3 * float(gt.mean())  # pixel-dependent output
    scores = {}
    for name, fx in (("a", 100.0), ("b", 200.0)):
        camera = CameraModel(192, 128, np.array([[fx, 0, 96], [0, fx, 64], [0, 0, 1]]))
        with SequenceWriter(tmp_path / name / "seq", camera, has_depth=True) as writer:
            writer.add_frame(1, image, depth=gt)
        write_splits(tmp_path / name, {"test": ["seq"]})
        args = _parse(evaluate_cli, ["--model", str(model), "--data", str(tmp_path / name), "--protocol", "sequence",
                                     "--out", str(tmp_path / f"out_{name}"), "--no-progress", "--device", "cpu"])
        assert evaluate_cli.run(args) == 0
        scores[name] = read_json(tmp_path / f"out_{name}" / "results.json")["mean"]
    capsys.readouterr()
    assert scores["a"]["abs_rel"] < 1e-3 and scores["a"]["a1"] == 1.0
    assert scores["b"]["abs_rel"] == pytest.approx(1.0, abs=1e-3) and scores["b"]["a1"] == 0.0
