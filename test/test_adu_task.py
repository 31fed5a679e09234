"""Task 'adu_depth' end to end on a tiny synthetic stereo world: short run, frozen teacher, exported student."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.distill import adu_depth  # noqa: F401  (registers task 'adu_depth')
from kd_depth_core.distill.adu_depth import StereoTeacher
from kd_depth_core.models import create_model
from kd_depth_core.models.io import ModelMetadata, load_model, save_model
from kd_depth_core.train import checkpoint as ckpt
from kd_depth_core.train.tasks import create_task
from kd_depth_core.train.trainer import Trainer

SIZE = (64, 96)
TEACHER_KWARGS = {"backbone": "resnet10t", "max_disparity": 16, "match_channels": 8,
                  "aggregation_channels": 16, "refine_channels": 8, "uncertainty": True}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic stereo dataset, a tiny released stereo teacher (random weights, metric) and a mono one."""
    base = tmp_path_factory.mktemp("adu_depth")
    root = base / "street"
    generate_dataset(root, SynthSpec(sequences=4, frames=6, width=SIZE[1], height=SIZE[0], seed=5), workers=1,
                     progress=False)
    torch.manual_seed(0)
    teacher = create_model("stereo_teacher", **TEACHER_KWARGS)
    teacher.set_rig(fx=0.58 * SIZE[1], baseline=0.54, width=SIZE[1], min_depth=0.5, max_depth=80.0)  # the street rig
    meta = ModelMetadata.from_model(teacher, input_height=SIZE[0], input_width=SIZE[1], min_depth=0.5,
                                    max_depth=80.0, scale_kind="metric", focal_length_px=None)
    assert meta.stereo
    save_model(base / "teacher.safetensors", teacher, meta)
    mono = create_model("student_lcnet", backbone="lcnet_050")
    save_model(base / "mono.safetensors", mono, ModelMetadata.from_model(
        mono, input_height=SIZE[0], input_width=SIZE[1], min_depth=0.5, max_depth=80.0, scale_kind="metric",
        focal_length_px=None))
    return {"base": base, "root": root, "teacher": base / "teacher.safetensors", "mono": base / "mono.safetensors"}


def make_cfg(world: dict[str, Path], name: str, task: dict | None = None, model: dict | None = None,
             data: dict | None = None, **train) -> TrainConfig:
    cfg = {
        "data": {"root": str(world["root"]), "size": list(SIZE), "offsets": [-1, 1], "stereo": True,
                 "batch_size": 2, "num_workers": 0, "augment": False, "val_split": "", **(data or {})},
        "model": {"name": "student_lcnet", "kwargs": {"backbone": "lcnet_050", "uncertainty": True, **(model or {})}},
        "task": {"name": "adu_depth", "kwargs": {"teacher_path": str(world["teacher"]), "mode": "stereo",
                                                 **(task or {})}},
        "optim": {"name": "adamw", "lr": 2e-3, "scheduler": "none"},
        "train": {"max_steps": 12, "log_every": 3, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": str(world["base"] / name), "progress": False, "seed": 0, **train},
    }
    return config_from_dict(TrainConfig, cfg, f"{name}.yaml")


def dataset(cfg: TrainConfig) -> SequenceDataset:
    return SequenceDataset(cfg.data.root, cfg.data.split, offsets=cfg.data.offsets, size=cfg.data.size,
                           stereo=cfg.data.stereo)


def first_batch(cfg: TrainConfig, size: int = 2) -> dict:
    return next(iter(torch.utils.data.DataLoader(dataset(cfg), batch_size=size)))


def test_short_run_lowers_both_distillation_terms_and_exports_only_the_student(world):
    cfg = make_cfg(world, "run", task={"photometric_weight": 0.1}, max_steps=24, log_every=6)
    task = create_task("adu_depth", cfg)
    assert task.scale_kind == "metric" and (task.min_depth, task.max_depth) == (0.5, 80.0)  # from the teacher
    assert task.adapters.pairs == [(4, 4), (8, 8), (16, 16), (32, 32)]
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    result = Trainer(cfg, task, dataset(cfg)).fit()
    history = result.history
    assert len(history) == 4 and all(np.isfinite(r["loss"]) for r in history)
    assert history[-1]["response"] < 0.95 * history[0]["response"], [r["response"] for r in history]  # 24 steps
    assert history[-1]["feature"] < 0.9 * history[0]["feature"], [r["feature"] for r in history]
    assert {"photometric", "smoothness", "uncertainty_nll", "feature_r4", "feature_r32", "response_s3"} <= \
        set(history[0])
    # the frozen teacher did not move
    assert all(torch.equal(teacher_before[k], v) for k, v in task.teacher.state_dict().items())

    # the released student: exactly the student's weights (no adapter, teacher or pose weights)
    with safe_open(str(result.model_path), framework="pt") as handle:
        saved_keys = set(handle.keys())
    assert saved_keys == set(task.student.state_dict())
    adapter_keys = {k for k in task.state_dict() if k.startswith("adapters.")}
    assert adapter_keys and not any(k.startswith(("adapters", "teacher", "proj")) for k in saved_keys)
    model, meta = load_model(result.model_path)
    assert meta.model_name == "student_lcnet" and meta.scale_kind == "metric" and meta.has_uncertainty
    assert not meta.stereo and (meta.min_depth, meta.max_depth) == (0.5, 80.0)
    # the training checkpoint keeps the adapters (to resume) and leaves the frozen teacher out
    state = torch.load(ckpt.list_checkpoints(cfg.train.out_dir)[-1], weights_only=True)
    assert not any(k.startswith("teacher.") for k in state["task"])
    assert adapter_keys <= set(state["task"])


def test_the_stereo_teacher_is_frozen_and_no_gradient_reaches_its_features(world):
    cfg = make_cfg(world, "frozen", task={"mode": "mono_stereo", "pose_kwargs": {"backbone": "lcnet_050"}})
    task = create_task("adu_depth", cfg)
    task.train()
    assert not task.teacher.model.training  # eval mode (BatchNorm statistics) whatever the owner asks
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert not any(id(p) in {id(q) for q in task.teacher.parameters()} for p in task.parameters_for("main"))
    batch = first_batch(cfg)
    teacher = task.teacher.predict(batch["image"], batch["image_right"])
    assert not any(f.requires_grad for f in teacher["features"]) and not teacher["depth"].requires_grad
    assert teacher["depth"].shape == teacher["uncertainty"].shape == (2, 1, *SIZE)
    assert bool((teacher["uncertainty"] > 0).all())  # from its log_sigma head
    out = task(batch)
    out["loss"].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(p.grad is not None for p in task.adapters.parameters())
    assert any(p.grad is not None for p in task.pose_net.parameters())  # mono_stereo: temporal sources too


def test_uncertainty_weighting_and_feature_options(world):
    batch = first_batch(make_cfg(world, "x"))
    # teacher-uncertainty weighting off and a single cross-stride pairing, no attention: still trains
    cfg = make_cfg(world, "options", task={"teacher_uncertainty_weighting": False, "attention": False,
                                           "feature_pairs": [[32, 16]], "photometric_weight": 0.0},
                   model={"uncertainty": False})
    task = create_task("adu_depth", cfg)
    assert task.adapters.pairs == [(32, 16)] and task.pose_net is None and not task.deploy_has_uncertainty
    out = task(batch)
    assert set(out) >= {"feature", "feature_r32", "response"} and "uncertainty_nll" not in out
    assert "photometric" not in out and float(out["uncertainty_weight_min"]) == 1.0
    # features off: no adapters at all
    task = create_task("adu_depth", make_cfg(world, "nofeat", task={"feature_weight": 0.0}))
    assert task.adapters is None and "feature" not in task(batch)


@pytest.mark.parametrize("task, data, message", [
    ({"teacher_path": ""}, None, "task.kwargs.teacher_path: expected the released stereo teacher"),
    ({"teacher_path": "nope.safetensors"}, None, "task.kwargs.teacher_path: stereo teacher model nope.safetensors "
                                                 "not found"),
    (None, {"stereo": False}, "data.stereo: the stereo teacher needs the right images"),
    ({"feature_pairs": [[32, 64]]}, None, r"task.kwargs.feature_pairs: pairs\[0\]: the teacher has no feature map "
                                          r"at stride 64"),
    ({"focal_tau": 0.0}, None, "task.kwargs.focal_tau: expected a positive number"),
    ({"scale_weights": [1.0]}, None, "task.kwargs.scale_weights: expected 4 numbers"),
    ({"feature_weight": 0.0, "response_weight": 0.0, "photometric_weight": 0.0}, None, "nothing to train"),
    ({"uncertainty_loss": "none"}, None, "task.kwargs.uncertainty_loss: model 'student_lcnet' has an uncertainty"),
    ({"typo": 1}, None, "task.kwargs.typo: unknown key"),
])
def test_config_errors(world, task, data, message):
    with pytest.raises(ConfigError, match=message):
        create_task("adu_depth", make_cfg(world, "bad", task=task, data=data))


def test_a_monocular_teacher_is_refused(world):
    with pytest.raises(ConfigError, match="student_lcnet is a monocular network; adu_depth needs a stereo teacher"):
        create_task("adu_depth", make_cfg(world, "mono", task={"teacher_path": str(world["mono"])}))
    with pytest.raises(TypeError, match="expected a released model path or a"):
        StereoTeacher((torch.nn.Identity(),))


def test_shipped_config_builds_the_task(world):
    from kd_depth_core.config import load_train_config

    path = Path(__file__).resolve().parents[1] / "config" / "train" / "distill_adu.yaml"
    cfg = load_train_config(path, overrides=[f"task.kwargs.teacher_path={world['teacher']}",
                                             f"data.root={world['root']}"])
    task = create_task("adu_depth", cfg)
    assert task.deploy_model() is task.student and task.pose_net is not None  # mode mono_stereo
    assert task.adapters.pairs == [(4, 4), (8, 8), (16, 16), (32, 32)]
    metadata = task.deploy_metadata(focal_length_px=100.0)
    assert (metadata.input_height, metadata.input_width) == tuple(cfg.data.size) == (192, 640)
    assert metadata.scale_kind == "metric" and metadata.has_uncertainty and not metadata.stereo


def test_a_teacher_guided_by_sgbm_takes_the_cached_proxy_as_its_hints(world, monkeypatch):
    torch.manual_seed(0)
    guided = create_model("stereo_teacher", **TEACHER_KWARGS, classical_prior=True, local_matching=0)
    guided.set_rig(fx=0.58 * SIZE[1], baseline=0.54, width=SIZE[1], min_depth=0.5, max_depth=80.0)
    path = world["base"] / "guided.safetensors"
    save_model(path, guided, ModelMetadata.from_model(guided, input_height=SIZE[0], input_width=SIZE[1],
                                                      min_depth=0.5, max_depth=80.0, scale_kind="metric",
                                                      focal_length_px=None))
    cfg = make_cfg(world, "guided", task={"teacher_path": str(path), "photometric_weight": 0.0})
    task = create_task("adu_depth", cfg).eval()
    proxy = task.dataset_options()["proxy"]
    assert proxy.settings == guided.prior_settings() and proxy.cache_dir == Path(cfg.train.out_dir) / "proxy_cache"

    # a hand-made proxy: 5 px on every other column -> fx*B / 5 = 0.58*96*0.54 / 5 = 6.0134 m everywhere
    image, right = torch.rand(1, 3, *SIZE), torch.rand(1, 3, *SIZE)
    hint = torch.zeros(1, 1, *SIZE)
    hint[..., ::2] = 5.0
    depth = task.teacher.predict(image, right, proxy_disparity=hint)["depth"]
    assert float((depth - 6.0134).abs().max()) < 0.1
    assert float((task.teacher.predict(image, right)["depth"] - 6.0134).abs().median()) > 0.5  # its own SGBM
    with pytest.raises(ValueError, match=r"proxy_disparity \(32, 48\) is not at the teacher's input size"):
        task.teacher.predict(image, right, proxy_disparity=hint[..., ::2, ::2])

    # the dataset attaches the real proxy; the task's step runs the teacher on it (SGBM once per frame)
    data = SequenceDataset(cfg.data.root, cfg.data.split, offsets=(), size=cfg.data.size, stereo=True,
                           **{k: v for k, v in task.dataset_options().items() if k != "offsets"})
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert batch["proxy_disparity"].shape == (2, 1, *SIZE) and bool((batch["proxy_disparity"] > 0).any())
    from kd_depth_core.models import stereo

    own_sgbm = []
    real_hints = stereo.sgbm_hints
    monkeypatch.setattr(stereo, "sgbm_hints", lambda *a, **k: own_sgbm.append(1) or real_hints(*a, **k))
    assert proxy.computed == 2 and np.isfinite(float(task(batch)["loss"].detach()))
    assert own_sgbm == []  # the teacher used the batch's proxy, it ran no SGBM of its own
    task.teacher.predict(batch["image"], batch["image_right"])
    assert own_sgbm == [1]  # (the spy sees the teacher's own SGBM)
    next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert proxy.computed == 2 and proxy.hits == 2  # the second pass reads the cache

    # a teacher at another size than the data runs its own SGBM: no proxy is asked for
    other = make_cfg(world, "guided_other", task={"teacher_path": str(path), "photometric_weight": 0.0},
                     data={"size": [32, 48]})
    assert "proxy" not in create_task("adu_depth", other).dataset_options()
