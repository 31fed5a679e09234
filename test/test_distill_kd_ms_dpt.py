"""Task 'kd_ms_dpt' end to end on a tiny synthetic world: a short run, cache reuse, the exported student."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.distill import distill_cli
from kd_depth_core.models import create_model
from kd_depth_core.models.io import ModelMetadata, load_model, save_model
from kd_depth_core.train import checkpoint as ckpt
from kd_depth_core.train.tasks import create_task
from kd_depth_core.train.trainer import Trainer

SIZE = (64, 96)  # the students reach stride 32 and reflection-pad there: at least 2 rows


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic dataset and a tiny released MS-DPT teacher (random weights, metric, MC dropout)."""
    base = tmp_path_factory.mktemp("kd_ms_dpt")
    root = base / "street"
    generate_dataset(root, SynthSpec(sequences=4, frames=6, width=SIZE[1], height=SIZE[0], seed=3), workers=1,
                     progress=False)
    torch.manual_seed(0)
    teacher = create_model("ms_dpt_teacher", backbone="vit_tiny_patch16_224", depth=4, embed_dim=64, num_heads=2,
                           img_size=SIZE, features=16, dropout=0.2)
    meta = ModelMetadata.from_model(teacher, input_height=SIZE[0], input_width=SIZE[1], min_depth=0.5,
                                    max_depth=80.0, scale_kind="metric", focal_length_px=None)
    save_model(base / "teacher.safetensors", teacher, meta)
    return {"base": base, "root": root, "teacher": base / "teacher.safetensors"}


def make_cfg(world: dict[str, Path], name: str, task: dict | None = None, model: dict | None = None,
             **train) -> TrainConfig:
    data = {
        "data": {"root": str(world["root"]), "size": list(SIZE), "offsets": [-1, 1], "batch_size": 2,
                 "num_workers": 0, "augment": False, "val_split": ""},
        "model": {"name": "student_lcnet", "kwargs": {"backbone": "lcnet_050", "uncertainty": True,
                                                       **(model or {})}},
        "task": {"name": "kd_ms_dpt", "kwargs": {
            "teacher_path": str(world["teacher"]), "num_samples": 4, "cache_dir": str(world["base"] / "cache"),
            "pose_kwargs": {"backbone": "lcnet_050"}, **(task or {})}},
        "optim": {"name": "adamw", "lr": 1e-3, "scheduler": "none"},
        "train": {"max_steps": 16, "log_every": 4, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": str(world["base"] / name), "progress": False, "seed": 0, **train},
    }
    return config_from_dict(TrainConfig, data, f"{name}.yaml")


def dataset(cfg: TrainConfig) -> SequenceDataset:
    return SequenceDataset(cfg.data.root, cfg.data.split, offsets=cfg.data.offsets, size=cfg.data.size)


def test_short_distillation_run_lowers_the_loss_and_exports_only_the_student(world):
    # the photometric term stays on (its machinery is exercised) but small next to the distillation
    cfg = make_cfg(world, "run", task={"distill_weight": 10.0, "photometric_weight": 0.1})
    task = create_task("kd_ms_dpt", cfg)
    assert task.scale_kind == "metric" and (task.min_depth, task.max_depth) == (0.5, 80.0)  # from the teacher
    assert task.dataset_options() == {}  # mono photometric term: temporal sources
    result = Trainer(cfg, task, dataset(cfg)).fit()
    history = result.history
    assert len(history) == 4 and all(np.isfinite(r["loss"]) for r in history)
    assert history[-1]["distill"] < 0.5 * history[0]["distill"], [r["distill"] for r in history]
    assert history[-1]["uncertainty_nll"] < history[0]["uncertainty_nll"]  # the head learns the spread
    assert all(r[f"distill_s{s}"] > 0 for r in history for s in range(4))  # every scale trains
    assert {"photometric", "smoothness", "uncertainty_nll", "confidence_mean"} <= set(history[0])
    # 8 training frames in batches of 2: epoch 1 (steps 1-4) misses, later epochs hit the cache
    assert history[0]["cache_hit_rate"] == 0.0 and history[-1]["cache_hit_rate"] == 1.0
    assert task.cache.stats.writes == len(dataset(cfg))

    # the released student: the student's weights only, metric, the teacher's depth range
    student_keys = set(task.student.state_dict())
    with safe_open(str(result.model_path), framework="pt") as handle:
        saved_keys = set(handle.keys())
    teacher_keys = {f"model.{k}" for k in task.teacher.model.state_dict()}
    assert saved_keys == student_keys
    assert not any(k.startswith(("teacher", "pose_net", "model.")) for k in saved_keys)
    assert not saved_keys & (teacher_keys | set(task.teacher.model.state_dict()))
    model, meta = load_model(result.model_path)
    assert meta.model_name == "student_lcnet" and meta.scale_kind == "metric" and meta.has_uncertainty
    assert (meta.min_depth, meta.max_depth) == (0.5, 80.0)
    # the training checkpoint leaves the frozen teacher out too
    state = torch.load(ckpt.list_checkpoints(cfg.train.out_dir)[-1], weights_only=True)
    assert not any(k.startswith("teacher.") for k in state["task"]) and any(k.startswith("student.")
                                                                           for k in state["task"])


def test_cached_labels_equal_online_labels_and_survive_a_new_run(world):
    cfg = make_cfg(world, "cache_check", task={"cache_dir": str(world["base"] / "cache2"), "cache_dtype": "float32",
                                               "photometric_weight": 0.0})
    batch = next(iter(torch.utils.data.DataLoader(dataset(cfg), batch_size=3)))
    first = create_task("kd_ms_dpt", cfg)
    depth, std, hits = first.pseudo_labels(batch)
    assert hits == 0.0 and depth.shape == std.shape == (3, 1, *SIZE) and bool((std > 0).all())
    # a new run with the same teacher reads them back; the teacher does not run
    second = create_task("kd_ms_dpt", cfg)
    second.teacher.model.forward = None  # would raise if called
    depth2, std2, hits2 = second.pseudo_labels(batch)
    assert hits2 == 1.0 and torch.equal(depth, depth2) and torch.equal(std, std2)
    # the ensemble is random, but within a few MC standard errors of a fresh online ensemble
    online = create_task("kd_ms_dpt", make_cfg(world, "online", task={"cache_dir": "", "num_samples": 64,
                                                                        "photometric_weight": 0.0}))
    fresh = online.pseudo_labels(batch)[0]
    assert float(((fresh - depth).abs() / (std + 1e-3)).median()) < 2.0


def test_distillation_only_and_config_errors(world):
    cfg = make_cfg(world, "distill_only", task={"photometric_weight": 0.0, "cache_dir": ""},
                   model={"uncertainty": False})
    task = create_task("kd_ms_dpt", cfg)
    assert task.pose_net is None and not task.deploy_has_uncertainty
    assert task.dataset_options() == {"offsets": ()}  # no source frames are loaded for distillation alone
    batch = next(iter(torch.utils.data.DataLoader(dataset(cfg), batch_size=2)))
    out = task(batch)
    assert "photometric" not in out and "uncertainty_nll" not in out and out["loss"].requires_grad
    out["loss"].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    with pytest.raises(ConfigError, match="task.kwargs.teacher_path: expected the released teacher"):
        create_task("kd_ms_dpt", make_cfg(world, "x", task={"teacher_path": ""}))
    with pytest.raises(ConfigError, match="task.kwargs.teacher_path: teacher model .*nope.safetensors not found"):
        create_task("kd_ms_dpt", make_cfg(world, "x", task={"teacher_path": str(world["base"] / "nope.safetensors")}))
    with pytest.raises(ConfigError, match="task.kwargs.scale_weights: expected 4 numbers"):
        create_task("kd_ms_dpt", make_cfg(world, "x", task={"scale_weights": [1.0, 0.5]}))
    with pytest.raises(ConfigError, match="task.kwargs.uncertainty_loss: model 'student_lcnet' has an uncertainty"):
        create_task("kd_ms_dpt", make_cfg(world, "x", task={"uncertainty_loss": "none"}))
    with pytest.raises(ConfigError, match="task.kwargs.typo: unknown key"):
        create_task("kd_ms_dpt", make_cfg(world, "x", task={"typo": 1}))


def test_mirror_where_flips_only_the_chosen_images_in_every_map():
    from kd_depth_core.distill.common import mirror_where

    row = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[4.0, 5.0, 6.0]]]])  # (2,1,1,3)
    out = mirror_where({"disp": [row, row[:, :, :, :2]], "scale": torch.ones(2), "name": "s"},
                       torch.tensor([True, False]))
    assert out["disp"][0].flatten().tolist() == [3.0, 2.0, 1.0, 4.0, 5.0, 6.0]
    assert out["disp"][1].flatten().tolist() == [2.0, 1.0, 4.0, 5.0]
    assert torch.equal(out["scale"], torch.ones(2)) and out["name"] == "s"  # not (B,C,H,W): untouched


def test_mirror_shows_the_student_mirrored_images_and_returns_unmirrored_outputs(world):
    cfg = make_cfg(world, "mirror", task={"photometric_weight": 0.0, "cache_dir": "", "mirror": 1.0})
    task = create_task("kd_ms_dpt", cfg)
    image = next(iter(torch.utils.data.DataLoader(dataset(cfg), batch_size=2)))["image"]
    task.eval()
    with torch.no_grad():
        plain = task.student_outputs(image)
        mirrored = task.student(image.flip(-1))
    task.train()
    task.student.eval()  # the same BatchNorm statistics as above; the task still trains, so it mirrors
    with torch.no_grad():
        out = task.student_outputs(image)
    for scale in range(4):  # mirror 1: every image went in mirrored and came back mirrored
        assert torch.allclose(out["disp"][scale], mirrored["disp"][scale].flip(-1))
    assert torch.allclose(out["log_sigma"], mirrored["log_sigma"].flip(-1))
    assert (out["disp"][0] - plain["disp"][0]).abs().max() > 1e-4  # the student is not mirror-symmetric
    with pytest.raises(ConfigError, match="task.kwargs.mirror: expected a probability in"):
        create_task("kd_ms_dpt", make_cfg(world, "x", task={"mirror": 1.5}))


def test_distill_command_runs_distillation_configs_only(world, tmp_path, capsys):
    def run(cfg: TrainConfig, *overrides: str) -> int:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict()))
        parser = argparse.ArgumentParser()
        distill_cli.add_arguments(parser)
        return distill_cli.run(parser.parse_args(["--config", str(path), *overrides]))

    cfg = make_cfg(world, "cli", task={"photometric_weight": 0.0})
    assert run(cfg, "train.max_steps=2", "model.kwargs.uncertainty=false") == 0
    assert (world["base"] / "cli" / "model.safetensors").is_file()
    assert "kd_ms_dpt" in distill_cli.distillation_tasks()
    cfg.task.name, cfg.task.kwargs = "self_supervised", {}
    assert run(cfg) == 2
    assert "task.name: 'self_supervised' is not a distillation task" in capsys.readouterr().err
