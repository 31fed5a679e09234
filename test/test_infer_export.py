"""ONNX / TorchScript export (inference/export.py), their runtime backends, `kd-depth export` and `kd-depth bench`.

Tolerance: an export must match eager PyTorch within 1e-4 relative on depth and uncertainty
(fp32; observed ~1e-7 for ONNX Runtime, ~1e-6 for the frozen TorchScript trace).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kd_depth_core.inference import DepthPredictor, bench_cli, export_cli
from kd_depth_core.inference.backends import open_export
from kd_depth_core.inference.export import (
    ONNX_OPSET,
    export_onnx,
    export_torchscript,
    metadata_at_size,
    verify_export,
)
from kd_depth_core.models import create_model
from kd_depth_core.models.io import ModelFileError, ModelMetadata, save_model

REL_TOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("student_lcnet", backbone="lcnet_050", uncertainty=True).eval()
    meta = ModelMetadata.from_model(model, input_height=64, input_width=96, min_depth=0.1, max_depth=80.0,
                                    scale_kind="metric", focal_length_px=80.0)
    return model, meta


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    model, meta = tiny
    released = save_model(folder / "tiny.safetensors", model, meta)
    return {"released": released, "onnx": export_onnx(model, meta, folder / "tiny.onnx"),
            "torchscript": export_torchscript(model, meta, folder / "tiny.torchscript")}


def test_onnx_graph_io_opset_and_metadata(exports, tiny):
    _, meta = tiny
    proto = onnx.load(str(exports["onnx"]))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["depth", "uncertainty"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 64, 96]
    stored = {p.key: p.value for p in proto.metadata_props}["kd_depth"]
    assert ModelMetadata.from_json(stored) == meta


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_eager(exports, tiny, fmt):
    check = verify_export(exports[fmt], *tiny, batch=3)
    assert check.batch == 3 and check.max_rel_error <= REL_TOL, check


def test_backends_agree_through_the_predictor(exports, tiny):
    image = np.random.default_rng(0).integers(0, 255, (71, 103, 3), dtype=np.uint8)
    K = np.array([[90.0, 0, 51.0], [0, 90.0, 35.0], [0, 0, 1]])
    eager = DepthPredictor(exports["released"], device="cpu").predict(image, K=K)
    for path in (exports["onnx"], exports["torchscript"]):
        other = DepthPredictor(path, device="cpu")
        assert other.backend == ("onnxruntime" if path.suffix == ".onnx" else "torchscript")
        pred = other.predict(image, K=K)
        assert pred.scale_info == eager.scale_info and pred.scale_info.mode == "focal"
        np.testing.assert_allclose(pred.depth, eager.depth, rtol=REL_TOL)
        np.testing.assert_allclose(pred.uncertainty, eager.uncertainty, rtol=REL_TOL)


def test_exports_run_other_batch_sizes(exports):
    session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    depth, std = session.run(None, {"image": np.random.default_rng(1).random((4, 3, 64, 96), dtype=np.float32)})
    assert depth.shape == std.shape == (4, 1, 64, 96)
    assert depth.min() >= 0.1 - 1e-6 and depth.max() <= 80.0 + 1e-4 and (std > 0).all()


def test_export_size_override_rescales_training_focal(tiny):
    _, meta = tiny
    resized = metadata_at_size(meta, 128, 192)
    assert (resized.input_height, resized.input_width, resized.focal_length_px) == (128, 192, 160.0)
    with pytest.raises(ValueError, match="multiple of the model's size_multiple"):
        metadata_at_size(meta, 100, 192)


class MeanStereoNet(torch.nn.Module):
    """A stereo network in miniature: disp = sigmoid(conv(left) - conv(right)) at 4 scales."""

    input_names = ("left", "right")

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict:
        disp = torch.sigmoid(self.conv(left) - self.conv(right))
        return {"disp": [torch.nn.functional.avg_pool2d(disp, 2 ** s) if s else disp for s in range(4)]}


def test_stereo_export_has_left_and_right_inputs(tmp_path):
    meta = ModelMetadata.from_dict(dict(
        model_name="mean_stereo", model_kwargs={}, input_height=32, input_width=64, mean=(0.0,) * 3, std=(1.0,) * 3,
        size_multiple=32, min_depth=0.5, max_depth=50.0, scale_kind="metric", focal_length_px=None, stereo=True,
        has_uncertainty=False, training_config={}, created_by="test"))
    net = MeanStereoNet().eval()
    path = export_onnx(net, meta, tmp_path / "stereo.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["left", "right"]
    assert [o.name for o in session.get_outputs()] == ["depth"]
    assert verify_export(path, net, meta).max_rel_error <= REL_TOL


def test_export_refuses_metadata_asking_for_outside_normalisation(tmp_path):
    """The encoder is the one normalisation site: an export graph never normalises, so it refuses to pretend."""
    meta = ModelMetadata.from_dict(dict(
        model_name="mean_stereo", model_kwargs={}, input_height=32, input_width=64, mean=(0.4,) * 3, std=(0.2,) * 3,
        size_multiple=32, min_depth=0.5, max_depth=50.0, scale_kind="metric", focal_length_px=None, stereo=True,
        has_uncertainty=False, training_config={}, created_by="test"))
    with pytest.raises(ValueError, match=r"mean \(0\.4, 0\.4, 0\.4\).*normalise inside their encoder"):
        export_onnx(MeanStereoNet().eval(), meta, tmp_path / "stereo.onnx")
    assert not (tmp_path / "stereo.onnx").exists()


def test_bad_export_files_are_refused(tmp_path, exports, tiny):
    with pytest.raises(ValueError, match=r"name TorchScript exports '\*\.torchscript'"):
        export_torchscript(*tiny, tmp_path / "model.pt")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(ModelFileError, match="garbage.onnx: not a readable ONNX model"):
        DepthPredictor(garbage)
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(exports["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(ModelFileError, match="bare.onnx: ONNX model without kd-depth metadata"):
        open_export(bare, device="cpu")  # the kd-depth export reader
    # the predictor takes an ONNX file without kd-depth metadata as a foreign model, which needs a model card
    with pytest.raises(ValueError, match="bare.onnx: a foreign ONNX depth model needs a model card"):
        DepthPredictor(bare)
    with pytest.raises(ValueError, match="runs with backend 'onnxruntime', not 'torch'"):
        DepthPredictor(exports["onnx"], backend="torch")


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_export_cli_writes_and_verifies(exports, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert _run(export_cli, ["--model", str(exports["released"]), "--format", "onnx", "--out", str(out),
                             "--height", "64", "--width", "64"]) == 0
    text = capsys.readouterr().out
    assert "max rel error" in text and "OK" in text
    assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[2:] == [64, 64]
    assert _run(export_cli, ["--model", str(exports["released"]), "--format", "onnx", "--out",
                             str(tmp_path / "x.torchscript")]) == 2
    assert _run(export_cli, ["--model", str(exports["released"]), "--format", "onnx", "--out",
                             str(tmp_path / "tiny.onnx"), "--height", "48"]) == 2
    assert "export failed at 48x96 (HxW): height 48: expected a positive multiple" in capsys.readouterr().err


def test_bench_cli_writes_table_json_and_plot(tmp_path, capsys):
    code = _run(bench_cli, ["--models", "student_lcnet", "--backends", "torch", "--sizes", "64x96,64x64",
                            "--iters", "2", "--warmup", "0", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["model"], r["backend"], r["height"], r["width"]) for r in rows] == [
        ("student_lcnet", "torch", 64, 96), ("student_lcnet", "torch", 64, 64)]
    assert all(r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and r["params_m"] > 0 for r in rows)
    assert "| student_lcnet | torch | cpu | fp32 | 64x64 | 1 |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
