"""The method-agnostic trainer with toy tasks: learning, non-finite skips, checkpoints, exact resume, phases."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict
from kd_depth_core.train import checkpoint as ckpt
from kd_depth_core.train.tasks import Task
from kd_depth_core.train.trainer import Trainer, amp_dtype, lr_factor

WEIGHTS = torch.tensor([1.0, -2.0, 3.0, 0.5])


class ToyDataset(Dataset):
    """y = x . WEIGHTS; __getitem__ adds noise from the global torch RNG (like an augmentation)."""

    def __init__(self, n: int = 32) -> None:
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        x = self.x[index] + 0.01 * torch.randn(4)
        return {"x": x, "y": (self.x[index] * WEIGHTS).sum(), "frame_key": f"toy/{index:06d}"}


class ToyTask(Task):
    """A small MLP with dropout; the loss also draws from python's and numpy's RNGs."""

    @dataclass
    class Options:
        nan_at_step: int = -1
        crash_at_step: int = -1

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))

    def forward(self, batch, phase="main", step=0):
        if step == self.options.crash_at_step:
            raise RuntimeError("simulated crash")
        mse = ((self.net(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()
        loss = mse * (1.0 + 1e-3 * random.random() * float(np.random.rand()))
        if step == self.options.nan_at_step:
            loss = loss * float("nan")
        return {"loss": loss, "mse": mse.detach()}

    def deploy_model(self):
        return self.net


def make_cfg(tmp_path: Path, optim: dict | None = None, **train) -> TrainConfig:
    data = {
        "data": {"batch_size": 4, "num_workers": 0},
        "model": {"name": "toy"},
        "task": {"name": "toy"},
        "optim": {"name": "adamw", "lr": 1e-2, "scheduler": "cosine", "warmup_steps": 2, "weight_decay": 1e-4,
                  **(optim or {})},
        "train": {"max_steps": 12, "log_every": 1, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": str(tmp_path / "run"), "progress": False, "seed": 3, **train},
    }
    return config_from_dict(TrainConfig, data, "toy.yaml")


def fit(cfg: TrainConfig, task_seed: int = 0, **options):
    torch.manual_seed(task_seed)
    task = ToyTask(cfg, ToyTask.Options(**options))
    result = Trainer(cfg, task, ToyDataset()).fit()
    return task, result


def weights(task: Task) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def test_loss_goes_down(tmp_path):
    _, result = fit(make_cfg(tmp_path, {"lr": 0.05, "scheduler": "none"}, max_steps=60, log_every=10))
    losses = [record["mse"] for record in result.history]
    assert len(losses) == 6 and result.step == 60
    assert losses[-1] < 0.25 * losses[0], losses


def test_nonfinite_loss_skips_the_step(tmp_path):
    clean, _ = fit(make_cfg(tmp_path / "a", max_steps=2))
    skipped, result = fit(make_cfg(tmp_path / "b", max_steps=3), nan_at_step=2)
    # Step 2 was skipped: the weights are exactly those after steps 0 and 1.
    for name, value in weights(clean).items():
        assert torch.equal(value, skipped.state_dict()[name]), name
    assert result.nonfinite_steps == 1
    assert result.history[2]["nonfinite_steps"] == 1 and "loss" not in result.history[2]
    assert all(p.grad is None for p in skipped.parameters())
    # Training goes on normally afterwards.
    later, result = fit(make_cfg(tmp_path / "c", max_steps=5), nan_at_step=2)
    assert result.nonfinite_steps == 1
    assert all(torch.isfinite(v).all() for v in later.state_dict().values())
    assert not torch.equal(later.net[0].weight, clean.net[0].weight)


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=4, ckpt_every=2, keep_checkpoints=1)
    task, result = fit(cfg)
    files = ckpt.list_checkpoints(cfg.train.out_dir)
    assert [f.name for f in files] == ["step_00000004.pt"] and result.checkpoint == files[0]
    state = torch.load(files[0], weights_only=True)
    assert state["format"] == ckpt.CHECKPOINT_FORMAT and state["step"] == 4
    assert state["config"] == cfg.to_dict()
    assert set(state["optimizers"]) == {"main"} and state["optimizers"]["main"]["state"]
    assert state["schedulers"]["main"]["last_epoch"] == 4
    assert len(state["rng"]) == 1 and set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    for name, value in task.state_dict().items():
        assert torch.equal(state["task"][name], value)
    assert (Path(cfg.train.out_dir) / "config.yaml").is_file()
    assert ckpt.latest_checkpoint(cfg.train.out_dir) == files[0]


def test_load_checkpoint_rejects_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a kd-depth training checkpoint"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    # 32 samples / batch 4 = 8 steps per epoch: the checkpoint at 6 is mid-epoch and the run crosses an epoch.
    reference, ref_result = fit(make_cfg(tmp_path / "ref", max_steps=12))
    cfg = make_cfg(tmp_path / "crash", max_steps=12, ckpt_every=6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, crash_at_step=9)
    assert ckpt.latest_checkpoint(cfg.train.out_dir).name == "step_00000006.pt"
    # A fresh process would build the task from another initialisation; the checkpoint must win.
    resumed, result = fit(make_cfg(tmp_path / "crash", max_steps=12, resume="auto"), task_seed=99)
    assert [r["step"] for r in result.history] == list(range(7, 13))
    for got, want in zip(result.history, ref_result.history[6:]):
        assert got["step"] == want["step"]
        assert got["loss"] == want["loss"], (got, want)  # bitwise
    for name, value in weights(reference).items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_resume_from_missing_path_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, resume=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match=r"toy.yaml: train.resume: checkpoint .*nope.pt not found"):
        fit(cfg)


class TwoPhaseTask(Task):
    """Scalars a, b; phase 'a' minimises (a*b - 1)^2 over a, phase 'b' minimises (b - a)^2 over b."""

    phases = ["a", "b"]

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(2.0))

    def parameters_for(self, phase):
        return [self.a] if phase == "a" else [self.b]

    def forward(self, batch, phase="main", step=0):
        loss = (self.a * self.b - 1) ** 2 if phase == "a" else (self.b - self.a) ** 2
        return {"loss": loss}

    def deploy_model(self):
        return nn.Identity()


def test_phases_update_only_their_own_parameters(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=1)
    cfg.optim.name, cfg.optim.scheduler, cfg.optim.warmup_steps, cfg.optim.weight_decay = "sgd", "none", 0, 0.0
    cfg.optim.lr = 0.1
    task = TwoPhaseTask(cfg)
    result = Trainer(cfg, task, ToyDataset()).fit()
    # Phase a: d/da (ab-1)^2 = 2(ab-1)b = 4 -> a = 1 - 0.1*4 = 0.6; b untouched by phase a's gradient.
    # Phase b: d/db (b-a)^2 = 2(b-a) = 2.8 -> b = 2 - 0.28 = 1.72; a untouched by phase b's optimizer.
    assert task.a.item() == pytest.approx(0.6, abs=1e-6)
    assert task.b.item() == pytest.approx(1.72, abs=1e-6)
    assert result.history[0]["a/loss"] == pytest.approx(1.0) and result.history[0]["b/loss"] == pytest.approx(1.96)
    # Per-phase learning rates: phase b frozen by lr 0.
    cfg2 = make_cfg(tmp_path / "2", max_steps=3)
    cfg2.optim.name, cfg2.optim.scheduler, cfg2.optim.warmup_steps = "sgd", "none", 0
    cfg2.optim.phase_lr = {"b": 0.0}
    task2 = TwoPhaseTask(cfg2)
    Trainer(cfg2, task2, ToyDataset()).fit()
    assert task2.b.item() == 2.0 and task2.a.item() != 1.0


def test_phase_lr_for_unknown_phase_is_rejected(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.optim.phase_lr = {"generator": 1e-3}
    with pytest.raises(ValueError, match="optim.phase_lr.generator: unknown phase; phases of task 'toy': main"):
        Trainer(cfg, ToyTask(cfg), ToyDataset())


def test_lr_schedule_shapes():
    cfg = make_cfg(Path("."))
    optim = cfg.optim
    optim.warmup_steps, optim.scheduler, optim.min_lr_ratio = 2, "cosine", 0.0
    assert [lr_factor(s, optim, 12) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, optim, 12) == pytest.approx(1.0)
    assert lr_factor(7, optim, 12) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_factor(12, optim, 12) == pytest.approx(0.0)
    optim.warmup_steps, optim.scheduler, optim.step_size, optim.gamma = 0, "step", 5, 0.1
    assert [lr_factor(s, optim, 12) for s in (4, 5, 10)] == pytest.approx([1.0, 0.1, 0.01])


def test_too_small_dataset_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.data.batch_size = 64
    with pytest.raises(ConfigError, match=r"data.batch_size: the training split has 32 samples, fewer than "
                                          r"data.batch_size \(64\)"):
        Trainer(cfg, ToyTask(cfg), ToyDataset())


class ConvToyTask(ToyTask):
    """ToyTask with a convolution: x (4,) seen as a 2-channel 2x1 image -> Conv2d(2, 8, (2, 1)) -> Linear(8, 1)."""

    def __init__(self, cfg: TrainConfig, options: ToyTask.Options | None = None) -> None:
        super().__init__(cfg, options)
        self.net = nn.Sequential(nn.Unflatten(1, (2, 2, 1)), nn.Conv2d(2, 8, (2, 1)), nn.Flatten(), nn.ReLU(),
                                 nn.Linear(8, 1))


def test_channels_last_changes_the_layout_not_the_training(tmp_path):
    results = {}
    for channels_last in (False, True):
        cfg = make_cfg(tmp_path / str(channels_last), max_steps=6, channels_last=channels_last)
        torch.manual_seed(0)
        task = ConvToyTask(cfg)
        Trainer(cfg, task, ToyDataset()).fit()
        conv = task.net[1].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert conv.is_contiguous() != channels_last
        results[channels_last] = weights(task)
    for name, value in results[False].items():  # the same steps, only the memory layout differs
        assert torch.allclose(value, results[True][name], rtol=1e-4, atol=1e-6), name


def test_amp_dtype_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("none", cpu) is None and amp_dtype("none", cuda) is None
    assert amp_dtype("bf16", cuda) == torch.bfloat16 and amp_dtype("fp16", cuda) == torch.float16
    assert amp_dtype("fp16", cpu) is None  # no fp16 autocast on the CPU
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert amp_dtype("bf16", cpu) == (torch.bfloat16 if native else None)


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="this CPU has no native bf16 arithmetic")
def test_bf16_amp_runs_the_convolutions_in_bf16_on_a_cpu_that_has_it(tmp_path):
    seen = {}
    for amp in ("none", "bf16"):
        cfg = make_cfg(tmp_path / amp, max_steps=3, amp=amp)
        torch.manual_seed(0)
        task = ConvToyTask(cfg)
        task.net[1].register_forward_hook(lambda module, args, out, amp=amp: seen.update({amp: out.dtype}) or None)
        Trainer(cfg, task, ToyDataset()).fit()
        assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in task.state_dict().values())
    assert seen == {"none": torch.float32, "bf16": torch.bfloat16}
