"""Task 'lumde' on a tiny synthetic indoor world: alternating updates, the discriminator phase, options."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.distill import lumde  # noqa: F401  (registers task 'lumde')
from kd_depth_core.models import create_model
from kd_depth_core.models.io import ModelMetadata, load_model, save_model
from kd_depth_core.train import checkpoint as ckpt
from kd_depth_core.train.tasks import create_task
from kd_depth_core.train.trainer import Trainer

SIZE = (64, 96)  # the students reach stride 32: at least 2 rows there
TINY_DISC = {"input_size": [32, 48], "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny indoor dataset and a tiny released metric MS-DPT teacher (random weights, 0.1-10 m)."""
    base = tmp_path_factory.mktemp("lumde")
    root = base / "indoor"
    generate_dataset(root, SynthSpec(preset="indoor", sequences=4, frames=5, width=SIZE[1], height=SIZE[0], seed=1),
                     workers=1, progress=False)
    torch.manual_seed(0)
    teacher = create_model("ms_dpt_teacher", backbone="vit_tiny_patch16_224", depth=4, embed_dim=32, num_heads=2,
                           img_size=SIZE, features=16, dropout=0.1)
    meta = ModelMetadata.from_model(teacher, input_height=SIZE[0], input_width=SIZE[1], min_depth=0.1,
                                    max_depth=10.0, scale_kind="metric", focal_length_px=None)
    save_model(base / "teacher.safetensors", teacher, meta)
    return {"base": base, "root": root, "teacher": base / "teacher.safetensors"}


def make_cfg(world: dict[str, Path], name: str, task: dict | None = None, **train) -> TrainConfig:
    data = {
        "data": {"root": str(world["root"]), "size": list(SIZE), "offsets": [-1, 1], "batch_size": 2,
                 "num_workers": 0, "augment": False, "val_split": ""},
        "model": {"name": "student_lcnet", "kwargs": {"backbone": "lcnet_050"}},
        "task": {"name": "lumde", "kwargs": {
            "teacher_path": str(world["teacher"]), "cache_dir": "", "pose_kwargs": {"backbone": "lcnet_050"},
            "pairwise_grid": 4, "pairwise_patch": 2, "adversarial_weight": 0.1, "adversarial_warmup_steps": 0,
            "discriminator_kwargs": TINY_DISC, **(task or {})}},
        "optim": {"name": "adam", "lr": 1e-3, "phase_lr": {"discriminator": 2e-3}, "scheduler": "none"},
        "train": {"max_steps": 2, "log_every": 1, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": str(world["base"] / name), "progress": False, "seed": 0, **train},
    }
    return config_from_dict(TrainConfig, data, f"{name}.yaml")


def dataset(cfg: TrainConfig) -> SequenceDataset:
    return SequenceDataset(cfg.data.root, cfg.data.split, offsets=cfg.data.offsets, size=cfg.data.size)


def first_batch(cfg: TrainConfig, size: int = 2) -> dict:
    return next(iter(torch.utils.data.DataLoader(dataset(cfg), batch_size=size)))


def snapshot(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in task.named_parameters()}


def changed(before: dict[str, torch.Tensor], task: torch.nn.Module) -> set[str]:
    return {name for name, p in task.named_parameters() if not torch.equal(before[name], p.detach())}


def groups(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_phases_step_only_their_own_networks(world):
    cfg = make_cfg(world, "direct")
    task = create_task("lumde", cfg)
    assert task.phases == ["generator", "discriminator"] and task.deploy_model() is task.student
    generator, discriminator = task.parameters_for("generator"), task.parameters_for("discriminator")
    trainable = {id(p) for p in task.parameters() if p.requires_grad}
    assert {id(p) for p in generator} | {id(p) for p in discriminator} == trainable
    assert not {id(p) for p in generator} & {id(p) for p in discriminator}
    assert not any(p.requires_grad for p in task.teacher.parameters())
    optimizers = {"generator": torch.optim.Adam(generator, lr=1e-3),
                  "discriminator": torch.optim.Adam(discriminator, lr=1e-3)}
    batch = first_batch(cfg)

    before = snapshot(task)
    task.zero_grad(set_to_none=True)
    out = task(batch, phase="generator", step=0)
    assert {"distill", "photometric", "pairwise", "adversarial", "adversarial_weight"} <= set(out)
    out["loss"].backward()
    # the adversarial term sends gradients into the discriminator too, but only the generator steps
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in task.discriminator.parameters())
    optimizers["generator"].step()
    assert groups(changed(before, task)) == {"student", "pose_net"}  # the pose net trains in the student module

    before = snapshot(task)
    task.zero_grad(set_to_none=True)
    out = task(batch, phase="discriminator", step=0)
    assert {"d_loss", "d_real_score", "d_fake_score", "d_accuracy"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is None for p in task.student.parameters())  # student outputs are detached
    assert all(p.grad is None for p in task.pose_net.parameters())
    optimizers["discriminator"].step()
    assert groups(changed(before, task)) == {"discriminator"}
    with pytest.raises(KeyError, match="unknown phase 'main'; phases: generator, discriminator"):
        task(batch, phase="main")


def test_two_trainer_steps_alternate_updates_and_release_only_the_student(world):
    cfg = make_cfg(world, "trainer")
    task = create_task("lumde", cfg)
    trainer = Trainer(cfg, task, dataset(cfg))
    assert trainer.optimizers["discriminator"].param_groups[0]["lr"] == 2e-3  # optim.phase_lr
    record: list[tuple[str, set[str]]] = []
    for phase, optimizer in trainer.optimizers.items():
        state: dict[str, dict] = {}

        def before(opt, args, kwargs, state=state):
            state["params"] = snapshot(task)

        def after(opt, args, kwargs, state=state, phase=phase):
            record.append((phase, changed(state["params"], task)))

        optimizer.register_step_pre_hook(before)
        optimizer.register_step_post_hook(after)
    result = trainer.fit()
    assert [phase for phase, _ in record] == ["generator", "discriminator"] * 2
    for phase, names in record:
        assert groups(names) == ({"student", "pose_net"} if phase == "generator" else {"discriminator"}), names
    assert result.step == 2 and result.nonfinite_steps == 0
    assert {"generator/distill", "generator/pairwise", "generator/adversarial", "discriminator/d_loss"} <= \
        set(result.history[-1])
    # the released model is the depth student alone; the checkpoint keeps the discriminator, not the teacher
    with safe_open(str(result.model_path), framework="pt") as handle:
        assert set(handle.keys()) == set(task.student.state_dict())
    model, meta = load_model(result.model_path)
    assert meta.model_name == "student_lcnet" and (meta.min_depth, meta.max_depth) == (0.1, 10.0)
    state = torch.load(ckpt.list_checkpoints(cfg.train.out_dir)[-1], weights_only=True)
    assert any(k.startswith("discriminator.") for k in state["task"])
    assert not any(k.startswith("teacher.") for k in state["task"])


def test_discriminator_phase_reuses_the_generator_output_and_learns_a_fixed_student(world):
    # random networks give nearly flat depth (relative spread ~1 % teacher, ~2 % student): without the
    # image channels the discriminator sees only that difference in structure
    cfg = make_cfg(world, "disc", task={"adversarial_weight": 0.0,
                                        "discriminator_kwargs": {**TINY_DISC, "use_image": False}})
    torch.manual_seed(0)
    task = create_task("lumde", cfg)
    calls = []
    task.student.register_forward_hook(lambda module, args, out: calls.append(torch.is_grad_enabled()))
    batch = first_batch(cfg, size=4)
    out = task(batch, phase="generator", step=3)
    assert "adversarial" not in out and float(out["adversarial_weight"]) == 0.0  # weight 0: no D forward
    task(batch, phase="discriminator", step=3)
    assert calls == [True]  # the discriminator phase used the generator's (detached) student depth
    task(batch, phase="discriminator", step=4)
    assert calls == [True, False]  # no generator phase on this step: one gradient-free student pass

    # the student stays fixed; the discriminator alone learns teacher (real) vs student (fake)
    optimizer = torch.optim.Adam(task.parameters_for("discriminator"), lr=2e-3)
    history = []
    for step in range(40):
        optimizer.zero_grad(set_to_none=True)
        parts = task(batch, phase="discriminator", step=step)
        parts["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in parts.items()})
    assert history[-1]["d_accuracy"] == 1.0, history[-1]
    assert history[-1]["d_loss"] < 0.3 * history[0]["d_loss"], [h["d_loss"] for h in history]
    assert history[-1]["d_real_score"] > 0.5 > history[-1]["d_fake_score"]


def test_adversarial_warm_up_feature_pairs_and_hinge(world):
    cfg = make_cfg(world, "features", task={"adversarial_warmup_steps": 10, "adversarial_start_step": 2,
                                            "pairwise_source": "features", "gan_loss": "hinge"})
    task = create_task("lumde", cfg)
    batch = first_batch(cfg)
    weights = [float(task(batch, phase="generator", step=s)["adversarial_weight"]) for s in (0, 7, 12)]
    assert weights == pytest.approx([0.0, 0.05, 0.1])
    out = task(batch, phase="generator", step=12)
    assert 0.0 <= float(out["pairwise"]) <= 4.0 and out["loss"].requires_grad
    assert float(out["adversarial"]) == pytest.approx(-float(out["d_fake_score"]))  # hinge: -mean(fake)
    d_out = task(batch, phase="discriminator", step=12)
    assert d_out["loss"].requires_grad


def test_config_errors_name_the_key(world):
    with pytest.raises(ConfigError, match="task.kwargs.pairwise_patch: a depth cell needs at least 2x2"):
        create_task("lumde", make_cfg(world, "x", task={"pairwise_patch": 1}))
    with pytest.raises(ConfigError, match="task.kwargs.adversarial_weight: expected a number >= 0"):
        create_task("lumde", make_cfg(world, "x", task={"adversarial_weight": -0.1}))
    with pytest.raises(ConfigError, match="task.kwargs.pairwise_student_feature: the student has 5 feature maps"):
        create_task("lumde", make_cfg(world, "x", task={"pairwise_source": "features",
                                                        "pairwise_student_feature": 7}))
    with pytest.raises(ConfigError, match="task.kwargs.discriminator_model / discriminator_kwargs: .*patch_size"):
        create_task("lumde", make_cfg(world, "x", task={"discriminator_kwargs": {**TINY_DISC, "patch_size": 5}}))
    with pytest.raises(ConfigError, match="task.kwargs.gan_loss: expected one of 'lsgan', 'hinge'"):
        create_task("lumde", make_cfg(world, "x", task={"gan_loss": "wgan"}))
    with pytest.raises(ConfigError, match="optim.phase_lr.main: unknown phase"):
        cfg = make_cfg(world, "x")
        cfg.optim.phase_lr = {"main": 1e-3}
        Trainer(cfg, create_task("lumde", cfg), dataset(cfg))


def test_shipped_config_is_valid_indoor_and_names_both_phases():
    from kd_depth_core.config import load_train_config, parse_section
    from kd_depth_core.distill.lumde import LUMDETask

    path = Path(__file__).resolve().parents[1] / "config" / "train" / "distill_lumde.yaml"
    cfg = load_train_config(path)
    options = parse_section(LUMDETask.Options, dict(cfg.task.kwargs), f"{path}: task.kwargs")
    assert cfg.task.name == "lumde" and "indoor" in cfg.data.root and options.max_depth == 10.0
    assert set(cfg.optim.phase_lr) <= set(LUMDETask.phases)
    assert options.pairwise_source == "depth" and options.adversarial_warmup_steps > 0
