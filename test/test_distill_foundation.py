"""Task 'distill_foundation' (a foreign ONNX teacher) and the stand-in teacher's path ('supervised_depth' +
export_foreign), end to end on a tiny synthetic world."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from foreign_fixtures import student_disparity_onnx, write_card  # noqa: E402

from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict  # noqa: E402
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset  # noqa: E402
from kd_depth_core.distill import foundation  # noqa: E402  (registers 'distill_foundation')
from kd_depth_core.models.io import load_model, read_metadata  # noqa: E402
from kd_depth_core.train import supervised  # noqa: E402, F401  (registers 'supervised_depth')
from kd_depth_core.train.tasks import create_task  # noqa: E402
from kd_depth_core.train.train_cli import build_datasets  # noqa: E402
from kd_depth_core.train.trainer import Trainer  # noqa: E402

SIZE = (64, 96)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """4 stereo sequences x 6 frames (train: 2 sequences = 12 frames) and a foreign ONNX teacher with its card."""
    base = tmp_path_factory.mktemp("foundation")
    generate_dataset(base / "street", SynthSpec(sequences=4, frames=6, width=SIZE[1], height=SIZE[0], seed=3),
                     workers=1, progress=False)
    onnx, _ = student_disparity_onnx(base / "teacher.onnx", seed=1)
    write_card(base / "teacher.card.yaml")
    return {"base": base, "root": base / "street", "teacher": onnx}


def make_cfg(world, name: str, task: dict | None = None, stereo: bool = True, **train) -> TrainConfig:
    data = {
        "data": {"root": str(world["root"]), "size": list(SIZE), "offsets": [-1, 1], "batch_size": 2,
                 "num_workers": 0, "augment": False, "val_split": "", "stereo": stereo},
        "model": {"name": "student_lcnet", "kwargs": {"backbone": "lcnet_050"}},
        "task": {"name": "distill_foundation", "kwargs": {
            "teacher_path": str(world["teacher"]), "teacher_batch": 4, "teacher_device": "cpu",
            "cache_dir": str(world["base"] / f"cache_{name}"), "min_depth": 2.0,
            "pose_kwargs": {"backbone": "lcnet_050"}, **(task or {})}},
        "optim": {"name": "adamw", "lr": 1e-3, "scheduler": "none"},
        "train": {"max_steps": 8, "log_every": 2, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": str(world["base"] / name), "progress": False, "seed": 0, **train},
    }
    return config_from_dict(TrainConfig, data, f"{name}.yaml")


def fit(cfg: TrainConfig, task=None):
    task = task if task is not None else create_task(cfg.task.name, cfg)
    train, val = build_datasets(cfg, task)
    return task, Trainer(cfg, task, train, val).fit()


def test_stereo_distillation_fills_the_cache_once_and_releases_a_metric_student(world):
    cfg = make_cfg(world, "stereo", task={"ssi_weight": 5.0, "photometric_weight": 0.1})
    task, result = fit(cfg)
    assert task.mode == "mono_stereo" and task.scale_kind == "metric"
    history = result.history
    assert len(history) == 4 and all(np.isfinite(row["loss"]) for row in history)
    assert history[-1]["ssi"] < history[0]["ssi"], [row["ssi"] for row in history]
    assert {"photometric", "smoothness", "ssi_data", "ssi_gradient"} <= set(history[0])
    # the teacher ran once over the 12 training frames, in batches of 4, before the first step ...
    assert task.prefilled == 12 and len(task.cache) == 12
    assert history[0]["teacher_calls"] == 3 and history[0]["cache_hit_rate"] == 1.0
    # ... and the second epoch (steps 5-8; 8 samples in batches of 2) ran no ONNX session
    assert history[-1]["teacher_calls"] == 3 == task.teacher.calls
    meta = read_metadata(result.model_path)
    assert meta.scale_kind == "metric" and meta.has_uncertainty is False
    assert meta.training_config["task"]["name"] == "distill_foundation"
    student, _ = load_model(result.model_path)
    assert set(student.state_dict()) == set(task.student.state_dict())  # the student alone

    # a second run on the same cache: every label is a hit, the ONNX session never runs
    cfg2 = make_cfg(world, "stereo", task={"ssi_weight": 5.0, "photometric_weight": 0.1}, max_steps=2)
    again = create_task(cfg2.task.name, cfg2)
    _, second = fit(cfg2, again)
    assert again.prefilled == 0 and again.teacher.calls == 0 and second.history[-1]["cache_hit_rate"] == 1.0


def test_cached_labels_are_the_teacher_disparity_resized_and_median_normalised(world):
    cfg = make_cfg(world, "labels", stereo=False, task={"photometric_weight": 0.0, "prefill": False})
    task = create_task(cfg.task.name, cfg)
    assert task.scale_kind == "relative" and task.dataset_options() == {"offsets": ()}
    from kd_depth_core.data.sequence import Sequence
    from kd_depth_core.inference.preprocess import Preprocessor

    seq = Sequence(world["root"] / "street_000")
    image = seq.load_left(2)
    label = task.teacher_labels([image])[0, 0]
    assert task.teacher.input_size == (70, 98)  # data.size 64 x 96 rounded to the card's multiple of 14
    raw, _ = task.teacher.run(Preprocessor(70, 98)(image)[None])
    expected = foundation.resize_disparity(raw[0, 0], *SIZE)
    np.testing.assert_allclose(label, expected / np.median(expected), rtol=1e-5)
    assert np.median(label) == pytest.approx(1.0)


def test_relative_distillation_without_stereo_releases_a_relative_student(world):
    cfg = make_cfg(world, "mono", stereo=False, task={"photometric_weight": 0.1}, max_steps=2)
    task, result = fit(cfg)
    assert task.mode == "mono" and task.scale_kind == "relative"
    assert read_metadata(result.model_path).scale_kind == "relative"


def test_metric_teacher_card_uses_the_metric_kd_loss(world, tmp_path):
    onnx = shutil.copy(world["teacher"], tmp_path / "metric.onnx")
    card = write_card(tmp_path / "metric.card.yaml", kind="metric_depth", **{"output.valid_range": [0.5, 80.0]})
    cfg = make_cfg(world, "metric", stereo=False, max_steps=2,
                   task={"teacher_path": str(onnx), "photometric_weight": 0.0, "min_depth": None})
    task, result = fit(cfg)
    assert task.card.source == str(card) and task.scale_kind == "metric"
    assert (task.min_depth, task.max_depth) == (0.5, 80.0)  # the card's valid range
    assert "distill" in result.history[-1] and "ssi" not in result.history[-1]
    assert read_metadata(result.model_path).scale_kind == "metric"


@pytest.mark.parametrize("task, model, field", [
    ({"teacher_path": "teacher.safetensors"}, {}, "teacher_path"),
    ({"teacher_card": "missing.yaml"}, {}, "teacher_card"),
    ({"trim": 1.0}, {}, "trim"),
    ({}, {"uncertainty": True}, "model.kwargs.uncertainty"),
])
def test_configuration_errors_name_the_field(world, task, model, field):
    cfg = make_cfg(world, "bad", stereo=False, task={"photometric_weight": 0.0, **task})
    if model:
        cfg.model.kwargs.update(model)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        create_task(cfg.task.name, cfg)


def test_a_card_contradicting_the_file_is_refused_at_configure(world, tmp_path):
    card = write_card(tmp_path / "wrong.yaml", **{"input.name": "image"})
    cfg = make_cfg(world, "wrongcard", stereo=False, task={"teacher_card": str(card), "photometric_weight": 0.0})
    with pytest.raises(ConfigError, match="input.name"):
        create_task(cfg.task.name, cfg)


def test_resize_disparity_leaves_invalid_pixels_out():
    disparity = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], np.float32)
    assert foundation.resize_disparity(disparity, 1, 2).tolist() == [[1.0, 0.0]]
    disparity[:, 2:] = 3.0
    disparity[0, 3] = 0.0  # one invalid pixel among four: the area mean of the three valid ones
    assert foundation.resize_disparity(disparity, 1, 2).tolist() == [[1.0, 3.0]]


def test_stand_in_teacher_trains_on_ground_truth_and_exports_as_a_foreign_teacher(world):
    from kd_depth_core.inference.export_foreign import export_foreign
    from kd_depth_core.inference.predictor import DepthPredictor

    cfg = config_from_dict(TrainConfig, {
        "data": {"root": str(world["root"]), "size": list(SIZE), "offsets": [], "batch_size": 2, "num_workers": 0,
                 "augment": False, "val_split": ""},
        "model": {"name": "student_lcnet", "kwargs": {"backbone": "lcnet_050"}},
        "task": {"name": "supervised_depth", "kwargs": {"min_depth": 0.5, "max_depth": 100.0}},
        "optim": {"name": "adamw", "lr": 2e-3, "scheduler": "none"},
        "train": {"max_steps": 24, "log_every": 6, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": str(world["base"] / "supervised"), "progress": False, "seed": 0}}, "teacher.yaml")
    task, result = fit(cfg)
    assert task.dataset_options() == {"offsets": (), "load_depth": True}
    history = result.history
    assert history[-1]["silog"] < 0.8 * history[0]["silog"], [row["silog"] for row in history]
    assert history[0]["gradient"] > 0
    meta = read_metadata(result.model_path)
    assert meta.scale_kind == "metric"

    model, meta = load_model(result.model_path)
    onnx, card = export_foreign(model, meta, world["base"] / "standin.onnx")
    predictor = DepthPredictor(str(onnx), scale_mode="fixed", scale_factor=1.0, output="model", device="cpu")
    reference = DepthPredictor((model, meta), scale_mode="none", output="model", device="cpu")
    from kd_depth_core.data.sequence import Sequence

    image = Sequence(world["root"] / "street_000").load_left(1)
    np.testing.assert_allclose(predictor.predict(image).depth, reference.predict(image).depth, rtol=2e-3)
    assert predictor.card.source == str(card) and predictor.card.kind == "relative_disparity"
    distill = make_cfg(world, "standin", stereo=False, max_steps=1,
                       task={"teacher_path": str(onnx), "photometric_weight": 0.0})
    task, _ = fit(distill)
    assert task.prefilled == 12


def test_relative_labels_are_made_metric_on_the_sgbm_proxy_with_outliers_trimmed(world):
    cfg = make_cfg(world, "align", task={"align_to_proxy": True, "photometric_weight": 0.0, "prefill": False})
    task = create_task(cfg.task.name, cfg)
    assert task.scale_kind == "metric" and "proxy" in task.dataset_options()
    generator = np.random.default_rng(0)
    labels = torch.from_numpy(generator.uniform(0.5, 2.0, (2, 1, *SIZE)).astype(np.float32))  # relative disparity
    fx_baseline = 30.0  # px·m
    inverse_depth = 0.2 * labels + 0.05  # the truth the proxy sees, 1/m: s = 0.2, t = 0.05
    proxy = inverse_depth * fx_baseline
    proxy[:, :, :, :8] = 0.0  # SGBM found nothing in the left band
    outliers = torch.from_numpy(generator.random((2, 1, *SIZE)) < 0.1)
    proxy[outliers] *= 3.0  # 10 % wrong matches
    batch = {"K": torch.tensor([[[10.0, 0, 48], [0, 10.0, 32], [0, 0, 1]]]).repeat(2, 1, 1),
             "baseline": torch.tensor([3.0, 3.0]), "proxy_disparity": proxy}
    metric, aligned = task.metric_labels(labels, labels > 0, batch)
    assert aligned.tolist() == [True, True]
    # everywhere (the band without a proxy too) the label becomes 0.2·label + 0.05; the outliers were trimmed
    torch.testing.assert_close(metric, inverse_depth, rtol=1e-4, atol=1e-5)
    # an image with too few confident proxy pixels is not aligned (it falls back to the SSI term)
    batch["proxy_disparity"] = torch.where(torch.arange(2).view(2, 1, 1, 1) == 1, torch.zeros_like(proxy), proxy)
    metric, aligned = task.metric_labels(labels, labels > 0, batch)
    assert aligned.tolist() == [True, False] and float(metric[1].abs().max()) == 0.0


def test_aligned_distillation_trains_a_metric_student_with_the_metric_kd_loss(world):
    cfg = make_cfg(world, "aligned", task={"align_to_proxy": True, "photometric_weight": 0.0,
                                           "variance_focus": 0.0}, max_steps=6)
    task, result = fit(cfg)
    history = result.history
    assert {"distill", "aligned_fraction"} <= set(history[0]) and history[0]["aligned_fraction"] == 1.0
    assert "ssi" not in history[0]  # every image was aligned: no SSI fallback
    assert history[-1]["distill"] < history[0]["distill"], [row["distill"] for row in history]
    assert read_metadata(result.model_path).scale_kind == "metric"


@pytest.mark.parametrize("stereo, task, message", [
    (False, {"align_to_proxy": True}, r"align_to_proxy: aligning the teacher to the SGBM proxy needs the right "
                                      r"images; set data\.stereo: true"),
    (True, {"align_to_proxy": True, "align_min_fraction": 0.0}, r"align_min_fraction: expected a fraction"),
])
def test_alignment_errors_name_the_field(world, stereo, task, message):
    cfg = make_cfg(world, "bad_align", stereo=stereo, task={"photometric_weight": 0.0, **task})
    with pytest.raises(ConfigError, match=message):
        create_task(cfg.task.name, cfg)


def test_the_shipped_config_aligns_to_the_proxy_with_stereo_and_says_how_to_go_without(world):
    from kd_depth_core.config import load_train_config

    shipped = Path(__file__).resolve().parents[1] / "config" / "train" / "distill_foundation.yaml"
    common = [f"data.root={world['root']}", f"data.size=[{SIZE[0]},{SIZE[1]}]", f"task.kwargs.teacher_path={world['teacher']}",
              f"train.out_dir={world['base'] / 'shipped'}", "task.kwargs.pose_kwargs={backbone: lcnet_050}"]
    task = create_task("distill_foundation", load_train_config(shipped, common))
    assert task.alignment is not None and task.scale_kind == "metric" and "proxy" in task.dataset_options()
    assert task.alignment.settings.upsample == 2 and task.options.variance_focus == 0.0
    with pytest.raises(ConfigError, match=r"align_to_proxy: false \(a relative student\)"):
        create_task("distill_foundation", load_train_config(shipped, [*common, "data.stereo=false"]))
    mono = create_task("distill_foundation", load_train_config(
        shipped, [*common, "data.stereo=false", "task.kwargs.align_to_proxy=false"]))
    assert mono.scale_kind == "relative" and mono.alignment is None
