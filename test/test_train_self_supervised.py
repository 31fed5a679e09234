"""The self-supervised task on frames cut from one random texture (a fronto-parallel plane).

A plane at depth Z seen by a rectified rig: the right image is the left shifted by the disparity
d = fx * B / Z pixels, and a camera moved sideways by t sees it shifted by fx * t / Z. Here
fx = 48 px, B = 0.1 m, Z = 1.6 m -> d = 3 px; temporal sources are shifted by 2 px.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict, name_the_override
from kd_depth_core.train.self_supervised import SelfSupervisedTask, photometric_uncertainty_nll
from kd_depth_core.train.tasks import create_task
from kd_depth_core.train.trainer import Trainer

H = W = 64
FX, BASELINE, DEPTH = 48.0, 0.1, 1.6
DISPARITY = 3  # = FX * BASELINE / DEPTH
SHIFT = 2  # temporal neighbours, pixels
TINY = {"backbone": "lcnet_050"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


class PlaneDataset(Dataset):
    """Batch dicts (docs/architecture.md) of a textured plane at DEPTH metres."""

    def __init__(self, n: int = 8) -> None:
        rng = np.random.default_rng(0)
        canvas = sum(w * cv2.GaussianBlur(rng.random((H + 20, W + 3 * n + 20, 3)).astype(np.float32), (0, 0), s)
                     for s, w in ((1, 0.3), (3, 1.0), (8, 2.0)))
        self.canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min())
        self.n = n

    def __len__(self) -> int:
        return self.n

    def _crop(self, x: int, y: int) -> torch.Tensor:
        return torch.from_numpy(self.canvas[y:y + H, x:x + W].transpose(2, 0, 1).copy())

    def __getitem__(self, i: int) -> dict:
        x, y = 5 + 3 * i, 2 + i % 10
        return {
            "image": self._crop(x, y),
            "sources": torch.stack([self._crop(x - SHIFT, y), self._crop(x + SHIFT, y)]),  # offsets -1, +1
            "image_right": self._crop(x + DISPARITY, y),
            "K": torch.tensor([[FX, 0, (W - 1) / 2], [0, FX, (H - 1) / 2], [0, 0, 1]]),
            "baseline": torch.tensor(BASELINE),
            "depth_gt": torch.full((1, H, W), DEPTH),
            "frame_key": f"plane/{i:06d}",
        }


def make_cfg(tmp_path, mode="stereo", model="student_lcnet", model_kwargs=TINY, **task_kwargs) -> TrainConfig:
    return config_from_dict(TrainConfig, {
        "data": {"size": [H, W], "stereo": True, "offsets": [-1, 1], "batch_size": 2, "num_workers": 0},
        "model": {"name": model, "kwargs": dict(model_kwargs)},
        "task": {"name": "self_supervised",
                 "kwargs": {"mode": mode, "min_depth": 0.5, "max_depth": 20.0, "pose_kwargs": TINY, **task_kwargs}},
        "optim": {"name": "adam", "lr": 3e-3, "scheduler": "none"},
        "train": {"max_steps": 24, "log_every": 1, "val_every": 24, "val_batches": 0, "image_every": 24,
                  "ckpt_every": 0, "out_dir": str(tmp_path / "run"), "progress": False},
    }, "ss.yaml")


@pytest.mark.slow
def test_stereo_training_lowers_photometric_loss_and_learns_metric_depth(tmp_path):
    cfg = make_cfg(tmp_path)
    torch.manual_seed(0)
    task = create_task("self_supervised", cfg)
    assert isinstance(task, SelfSupervisedTask) and task.pose_net is None and task.scale_kind == "metric"
    trainer = Trainer(cfg, task, PlaneDataset(), PlaneDataset())
    before = trainer.validate()
    result = trainer.fit()
    photometric = [r["photometric"] for r in result.history]
    assert np.mean(photometric[-3:]) < 0.5 * photometric[0], photometric
    # Metric scale through the baseline: the prediction moves towards the true 1.6 m (starts near 1 m).
    assert result.val_metrics["abs_rel"] < 0.5 * before["abs_rel"], (before, result.val_metrics)
    assert result.val_metrics["num_images"] == 8

    from kd_depth_core.models.io import load_model

    model, meta = load_model(result.model_path)
    assert (meta.scale_kind, meta.min_depth, meta.max_depth, meta.stereo) == ("metric", 0.5, 20.0, False)
    assert meta.focal_length_px == FX and (meta.input_height, meta.input_width) == (H, W)
    image = PlaneDataset()[0]["image"][None]
    task.eval()
    assert torch.allclose(model(image)["disp"][0], task.depth_net(image)["disp"][0])


def test_mono_training_uses_the_pose_net(tmp_path):
    cfg = make_cfg(tmp_path, mode="mono")
    cfg.data.stereo = False
    torch.manual_seed(0)
    task = create_task("self_supervised", cfg)
    assert task.pose_net is not None and task.scale_kind == "relative"
    dataset = PlaneDataset(2)
    batch = {k: (torch.stack([dataset[i][k] for i in range(2)]) if k != "frame_key" else []) for k in dataset[0]}
    del batch["image_right"]
    optimizer = torch.optim.Adam(task.parameters(), 1e-3)
    losses = []
    for step in range(6):
        out = task(batch, step=step)
        optimizer.zero_grad()
        out["loss"].backward()
        if step == 0:
            assert all(p.grad is not None for p in task.pose_net.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(float(out["photometric"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert set(out) == {"loss", "photometric", "smoothness", "automask_fraction"}


def test_stereo_teacher_sees_the_pair_and_trains_its_uncertainty(tmp_path):
    cfg = make_cfg(tmp_path, mode="mono_stereo", model="stereo_teacher",
                   model_kwargs={"backbone": "resnet10t", "max_disparity": 16, "cost_volume_reductions": [4, 8]})
    torch.manual_seed(0)
    task = create_task("self_supervised", cfg)
    assert task.stereo_input and task.deploy_stereo and task.has_uncertainty
    dataset = PlaneDataset(2)
    batch = {k: (torch.stack([dataset[i][k] for i in range(2)]) if k != "frame_key" else []) for k in dataset[0]}
    out = task(batch)
    assert math.isfinite(out["uncertainty_nll"].item())
    parts = out["photometric"] + out["smoothness"] + out["uncertainty_nll"]  # uncertainty_weight 1
    assert out["loss"].item() == pytest.approx(parts.item(), rel=1e-5)
    out["loss"].backward()
    head = [p for n, p in task.depth_net.named_parameters() if "sigma" in n]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    assert task.predict_depth(batch).shape == (2, 1, H, W)


def test_uncertainty_nll_is_minimal_where_sigma_is_depth_times_residual():
    """Found numerically (a fine grid of sigma), not from the implementation's constant: the best sigma is
    depth x residual (metres), stays positive for a zero residual, and a mask leaves the other pixel out."""
    residual = torch.tensor([0.05, 0.2, 0.0]).reshape(3, 1, 1, 1)
    depth = torch.tensor([4.0, 10.0, 5.0]).reshape(3, 1, 1, 1)
    sigmas = torch.logspace(-4, 1, 5001)  # 1e-4 .. 10 m
    for kind in ("laplacian", "gaussian"):
        for i in range(3):
            values = torch.stack([photometric_uncertainty_nll(residual[i:i + 1], torch.log(s).view(1, 1, 1, 1),
                                                              depth[i:i + 1], kind=kind) for s in sigmas])
            best = float(sigmas[int(values.argmin())])
            expected = float(depth[i] * residual[i])
            assert best == pytest.approx(expected, abs=0.003 * float(depth[i])), (kind, i, best)
            assert best > 10 * float(sigmas[0])  # a finite minimum, also at residual 0 (not the grid's end)
    # a mask keeps only the first pixel: the value equals that pixel's alone
    log_sigma = torch.log(depth * residual + 0.01)
    masked = photometric_uncertainty_nll(residual, log_sigma, depth, torch.tensor([True, False, False]).view(3, 1, 1, 1))
    alone = photometric_uncertainty_nll(residual[:1], log_sigma[:1], depth[:1])
    assert masked.item() == pytest.approx(alone.item(), rel=1e-6)
    assert masked.item() != pytest.approx(photometric_uncertainty_nll(residual, log_sigma, depth).item(), rel=1e-3)


@pytest.mark.parametrize("change, fragment", [
    # keys set by an override: the error names the override, not ss.yaml (config.ConfigError)
    ({"data.stereo": False}, "override 'data.stereo=false' (command line): data.stereo: mode 'stereo' needs the "
                             "right images"),
    ({"task.kwargs.mode": "mono", "data.offsets": []}, "override 'data.offsets=[]' (command line): data.offsets: "
                                                       "mode 'mono' needs temporal"),
    ({"task.kwargs.mode": "sideways"}, "task.kwargs.mode: expected one of 'mono', 'stereo', 'mono_stereo'"),
    ({"task.kwargs.ssim": 0.5}, "override 'task.kwargs.ssim=0.5' (command line): task.kwargs.ssim: unknown key; "
                                "valid keys: mode, min_depth"),
    ({"task.kwargs.uncertainty_loss": "none", "model.kwargs.uncertainty": True},
     "task.kwargs.uncertainty_loss: model 'student_lcnet' has an uncertainty head"),
])
def test_configuration_errors_name_the_key(tmp_path, change, fragment):
    overrides = [f"{k}={v}".replace("False", "false").replace("True", "true") for k, v in change.items()]
    base = make_cfg(tmp_path).to_dict()
    cfg = config_from_dict(TrainConfig, base, "ss.yaml", overrides)
    with pytest.raises(ConfigError) as info:
        create_task("self_supervised", cfg)
    # what `kd-depth train` prints: the task's error, re-attributed to the override that set the key
    assert fragment in name_the_override(str(info.value), "ss.yaml", base, overrides)


def test_stereo_model_in_mono_mode_is_rejected(tmp_path):
    cfg = make_cfg(tmp_path, mode="mono", model="stereo_teacher", model_kwargs={"backbone": "resnet10t"})
    with pytest.raises(ConfigError, match="model 'stereo_teacher' takes a stereo pair; use mode 'stereo'"):
        create_task("self_supervised", cfg)


def test_unknown_baseline_is_a_clear_error(tmp_path):
    task = create_task("self_supervised", make_cfg(tmp_path))
    dataset = PlaneDataset(1)
    batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in dataset[0].items()}
    batch["baseline"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"baseline <= 0 \(unknown\) for frames \['plane/000000'\]"):
        task(batch)


@pytest.mark.parametrize("name", ["baseline_resnet18", "teacher_stereo", "teacher_ms_dpt", "tiny_test"])
def test_shipped_configs_build_their_task(name):
    from pathlib import Path

    from kd_depth_core.config import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[1] / "config" / "train" / f"{name}.yaml")
    task = create_task(cfg.task.name, cfg)
    assert task.deploy_model() is task.depth_net
    metadata = task.deploy_metadata(focal_length_px=100.0)
    assert (metadata.input_height, metadata.input_width) == tuple(cfg.data.size)
    assert metadata.scale_kind == ("relative" if cfg.task.kwargs.get("mode") == "mono" else "metric")


def test_too_small_min_depth_for_the_rig_warns_with_a_suggestion(tmp_path, caplog):
    # fx*B = 4.8 px*m, width 64: min_depth 0.1 m starts at 4.8 * 0.5 * (10 + 0.05) = 24 px (> 6.4 px = 10 %);
    # the suggestion is fx*B / (0.1 * width) = 0.75 m.
    task = create_task("self_supervised", make_cfg(tmp_path, min_depth=0.1))
    dataset = PlaneDataset(1)
    batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in dataset[0].items()}
    with caplog.at_level("WARNING", logger="kd_depth_core.train"):
        task(batch)
        task(batch)
    warnings = [r.getMessage() for r in caplog.records if "min_depth" in r.getMessage()]
    assert len(warnings) == 1 and "disparity of 24 px on a 64 px wide image" in warnings[0]
    assert "task.kwargs.min_depth=0.75" in warnings[0]


def test_unknown_task_lists_the_registered_ones(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.task.name = "self_supervized"
    with pytest.raises(ConfigError, match=r"ss.yaml: task.name: unknown task 'self_supervized'; registered tasks: "
                                          r".*self_supervised"):
        create_task(cfg.task.name, cfg)


def _released(task, path):
    """Export a task's network the way the trainer does (weights + metadata)."""
    from kd_depth_core.models.io import save_model

    return save_model(path, task.deploy_model(), task.deploy_metadata())


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest weight difference (parameters only: a training step also moves BatchNorm's running stats)."""
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_init_from_starts_the_network_from_a_released_file_and_the_optimizer_afresh(tmp_path):
    torch.manual_seed(0)
    source = create_task("self_supervised", make_cfg(tmp_path / "a"))
    path = _released(source, tmp_path / "start.safetensors")
    lr = 1e-4
    cfg = make_cfg(tmp_path / "b")
    cfg.train.max_steps, cfg.optim.lr, cfg.train.init_from = 1, lr, str(path)
    cfg.train.val_every = cfg.train.image_every = 0
    torch.manual_seed(1)  # another initialisation: without init_from the network differs by far more than lr
    task = create_task("self_supervised", cfg)
    assert _max_difference(task.deploy_model(), source.deploy_model()) > 100 * lr
    result = Trainer(cfg, task, PlaneDataset()).fit()
    assert result.step == 1  # the step starts at 0, not the source run's
    # one fresh Adam step moves each weight by at most lr (m/sqrt(v) = g/|g| on the first step)
    assert _max_difference(task.deploy_model(), source.deploy_model()) <= 1.01 * lr


@pytest.mark.parametrize("change, fragment", [
    ({"model_kwargs": {"backbone": "lcnet_075"}}, "whose weights do not fit this run's"),
    ({"min_depth": 1.0}, "predicts depth 1-20 m, this task 0.5-20 m"),
])
def test_init_from_a_file_that_does_not_fit_is_a_one_line_error(tmp_path, change, fragment):
    from kd_depth_core.train.checkpoint import CheckpointError, init_from_model

    other = create_task("self_supervised", make_cfg(tmp_path / "a", **change))
    path = _released(other, tmp_path / "other.safetensors")
    task = create_task("self_supervised", make_cfg(tmp_path / "b"))
    with pytest.raises(CheckpointError) as info:
        init_from_model(task, path, "ss.yaml: train.init_from")
    message = str(info.value)
    assert message.startswith("ss.yaml: train.init_from: ") and fragment in message and "\n" not in message
    with pytest.raises(CheckpointError, match="train.init_from: model file not found: .*missing.safetensors"):
        init_from_model(task, tmp_path / "missing.safetensors")


def _checkpoint(task, cfg, path):
    """A training checkpoint of `task` the way the trainer writes one (format 1, weights-only)."""
    from kd_depth_core.train.checkpoint import save_checkpoint

    return save_checkpoint(path, {"step": 7, "nonfinite_steps": 0, "world_size": 1, "task": task.state_dict(),
                                  "optimizers": {}, "schedulers": {}, "scalers": {}, "rng": [],
                                  "config": cfg.to_dict()})


def test_init_from_a_checkpoint_also_starts_the_pose_network(tmp_path):
    from kd_depth_core.train.checkpoint import init_from_model

    torch.manual_seed(0)
    source_cfg = make_cfg(tmp_path / "a", mode="mono")
    source = create_task("self_supervised", source_cfg)
    path = _checkpoint(source, source_cfg, tmp_path / "a" / "step_00000007.pt")
    torch.manual_seed(1)
    task = create_task("self_supervised", make_cfg(tmp_path / "b", mode="mono"))
    assert _max_difference(task.pose_net, source.pose_net) > 1e-3  # a fresh pose network differs
    parts = init_from_model(task, path, "ss.yaml: train.init_from")
    assert parts == ["network (from depth_net)", "pose_net"]
    assert _max_difference(task.deploy_model(), source.deploy_model()) == 0
    assert _max_difference(task.pose_net, source.pose_net) == 0
    # a released file carries no pose network: only the depth network moves
    torch.manual_seed(1)
    fresh = create_task("self_supervised", make_cfg(tmp_path / "c", mode="mono"))
    assert init_from_model(fresh, _released(source, tmp_path / "m.safetensors")) == ["network"]
    assert _max_difference(fresh.pose_net, source.pose_net) > 1e-3


def test_init_from_a_checkpoint_finds_the_network_under_any_name_and_refuses_one_that_does_not_fit(tmp_path):
    from kd_depth_core.train.checkpoint import CheckpointError, init_from_model

    torch.manual_seed(0)
    cfg = make_cfg(tmp_path / "a", mode="mono")
    source = create_task("self_supervised", cfg)
    path = _checkpoint(source, cfg, tmp_path / "renamed.pt")
    state = torch.load(path, weights_only=True)  # a distillation run keeps its network as `student.*`
    state["task"] = {k.replace("depth_net.", "student.", 1): v for k, v in state["task"].items()}
    torch.save(state, path)
    task = create_task("self_supervised", make_cfg(tmp_path / "b", mode="mono"))
    assert init_from_model(task, path)[0] == "network (from student)"
    assert _max_difference(task.deploy_model(), source.deploy_model()) == 0

    other_cfg = make_cfg(tmp_path / "c", mode="mono", model_kwargs={"backbone": "lcnet_075"})
    other = _checkpoint(create_task("self_supervised", other_cfg), other_cfg, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as info:
        init_from_model(task, other, "ss.yaml: train.init_from")
    message = str(info.value)
    assert message.startswith("ss.yaml: train.init_from: ") and "holds no network that fits" in message
    assert "depth_net" in message and "\n" not in message
    far_cfg = make_cfg(tmp_path / "d", mode="mono", min_depth=1.0)
    far = _checkpoint(create_task("self_supervised", far_cfg), far_cfg, tmp_path / "far.pt")
    with pytest.raises(CheckpointError, match="predicts depth 1-20 m, this task 0.5-20 m"):
        init_from_model(task, far)


def test_a_trainer_checkpoint_carries_its_depth_range_even_when_the_config_relied_on_the_defaults(tmp_path):
    from kd_depth_core.train.checkpoint import CheckpointError, init_from_model, latest_checkpoint

    cfg = make_cfg(tmp_path / "a")
    del cfg.task.kwargs["min_depth"], cfg.task.kwargs["max_depth"]  # the task's defaults: 0.1-100 m
    cfg.train.max_steps = cfg.train.ckpt_every = 1
    cfg.train.val_every = cfg.train.image_every = 0
    source = create_task("self_supervised", cfg)
    Trainer(cfg, source, PlaneDataset(2)).fit()
    path = latest_checkpoint(cfg.train.out_dir)
    assert torch.load(path, weights_only=True)["depth_range"] == [0.1, 100.0]
    task = create_task("self_supervised", make_cfg(tmp_path / "b"))  # 0.5-20 m: the same sigmoid means other depths
    with pytest.raises(CheckpointError, match="predicts depth 0.1-100 m, this task 0.5-20 m"):
        init_from_model(task, path, "ss.yaml: train.init_from")
