"""Tasks 'xdistill' and 'segmentation' on a tiny synthetic world: gradients, the loss, the exported student."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import kd_depth_core.distill.xdistill  # noqa: F401  (registers task 'xdistill' and model 'segmentation_teacher')
import kd_depth_core.train.segmentation_task  # noqa: F401  (registers task 'segmentation')
from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.models import create_model
from kd_depth_core.models.io import ModelMetadata, load_model, save_model
from kd_depth_core.train import checkpoint as ckpt
from kd_depth_core.train.tasks import create_task
from kd_depth_core.train.trainer import Trainer

SIZE = (64, 96)
TEACHER = {"backbone": "lcnet_050", "decoder_channels": 8}
STUDENT = {"name": "student_lcnet", "kwargs": {"backbone": "lcnet_050"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """2 street sequences of 4 frames (train: 1, test: 1), a released and a plain-state-dict segmentation teacher."""
    base = tmp_path_factory.mktemp("xdistill")
    generate_dataset(base / "street", SynthSpec(sequences=2, frames=4, width=SIZE[1], height=SIZE[0], seed=5),
                     workers=1, progress=False)
    torch.manual_seed(0)
    teacher = create_model("segmentation_teacher", **TEACHER)
    meta = ModelMetadata.from_model(teacher, input_height=SIZE[0], input_width=SIZE[1], min_depth=0.1,
                                    max_depth=100.0, scale_kind="relative", focal_length_px=None)
    save_model(base / "teacher.safetensors", teacher, meta)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(base / "teacher_state.safetensors"))
    return {"base": base, "root": base / "street", "teacher": base / "teacher.safetensors",
            "teacher_state": base / "teacher_state.safetensors"}


def make_cfg(world: dict[str, Path], name: str, task: str = "xdistill", kwargs: dict | None = None,
             model: dict | None = None, **train) -> TrainConfig:
    defaults = {"teacher_path": str(world["teacher"]), "pose_kwargs": {"backbone": "lcnet_050"}} \
        if task == "xdistill" else {}
    data = {
        "data": {"root": str(world["root"]), "size": list(SIZE), "offsets": [-1, 1], "batch_size": 2,
                 "num_workers": 0, "augment": False, "val_split": ""},
        "model": model or STUDENT,
        "task": {"name": task, "kwargs": {**defaults, **(kwargs or {})}},
        "optim": {"name": "adam", "lr": 1e-3, "scheduler": "none"},
        "train": {"max_steps": 2, "log_every": 1, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": str(world["base"] / name), "progress": False, "seed": 0, **train},
    }
    return config_from_dict(TrainConfig, data, f"{name}.yaml")


def first_batch(cfg: TrainConfig, **options) -> dict:
    dataset = SequenceDataset(cfg.data.root, cfg.data.split, offsets=cfg.data.offsets, size=cfg.data.size, **options)
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))


def test_cross_task_gradient_reaches_the_depth_network_and_not_the_frozen_teacher(world):
    torch.manual_seed(0)
    task = create_task("xdistill", make_cfg(world, "grad"))
    task.train()
    assert not task.teacher.model.training  # frozen BatchNorm/dropout even in a training task
    assert not any(p.requires_grad for p in task.teacher.parameters())
    batch = first_batch(task.cfg)
    out = task.depth_outputs(batch)
    parts = task.cross_task_loss(batch, out["disp"])
    assert parts["cross_task"].requires_grad and float(parts["cross_task"].detach()) > 0
    parts["cross_task"].backward()
    depth_grads = {n: p.grad for n, p in task.depth_net.named_parameters()}
    assert all(g is not None for g in depth_grads.values())
    assert float(sum(g.abs().sum() for n, g in depth_grads.items() if n.startswith("encoder."))) > 0
    for s in range(4):  # the translator reads every disparity scale
        assert float(task.depth_net.decoder.disp_heads[s].weight.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in task.translator.parameters())
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(p.grad is None for p in task.pose_net.parameters())  # the cross-task term does not use poses
    # the pseudo-labels are the teacher's grouped argmax: group ids of the synthetic grouping (6 groups)
    labels, confidence = task.teacher.predict(batch["image"])
    assert labels.shape == (2, *SIZE) and int(labels.max()) < 6 and bool((confidence >= 1 / 6 - 1e-6).all())


def test_during_translator_warmup_the_cross_task_term_trains_only_the_translator(world):
    torch.manual_seed(0)
    task = create_task("xdistill", make_cfg(world, "warmup", kwargs={"translator_warmup_steps": 3}))
    batch = first_batch(task.cfg)

    def depth_gradient(weight: float, step: int) -> torch.Tensor:
        task.zero_grad(set_to_none=True)
        task.options.cross_task_weight = weight
        task(batch, step=step)["loss"].backward()
        return torch.cat([p.grad.flatten() for p in task.depth_net.parameters()])

    photometric_only = depth_gradient(0.0, step=0)
    torch.testing.assert_close(depth_gradient(1.0, step=2), photometric_only)  # CE stops at the detached depth
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in task.translator.parameters())
    assert not torch.allclose(depth_gradient(1.0, step=3), photometric_only)  # from step 3 on it reaches the depth


def test_guarded_cross_task_gradient_never_opposes_the_self_supervised_gradient_at_a_pixel(world):
    torch.manual_seed(0)
    task = create_task("xdistill", make_cfg(world, "guard", kwargs={"cross_task_weight": 1.0}))
    batch = first_batch(task.cfg)
    depth_outputs = task.depth_outputs
    seen: list[torch.Tensor] = []

    def keep_disparity(b):  # the finest disparity's gradient: self-supervised + cross-task parts
        out = depth_outputs(b)
        out["disp"][0].register_hook(seen.append)  # (the guard's own autograd.grad also passes here: take the last)
        return out

    task.depth_outputs = keep_disparity

    def disparity_gradient(weight: float, guard: bool) -> torch.Tensor:
        task.options.cross_task_weight, task.options.cross_task_guard = weight, guard
        torch.manual_seed(1)  # the same tie-breaking noise of the auto-mask in every call
        task(batch, step=0)["loss"].backward()
        return seen[-1]

    own = disparity_gradient(0.0, guard=False)
    unguarded = disparity_gradient(1.0, guard=False) - own
    guarded = disparity_gradient(1.0, guard=True) - own
    scale = float(unguarded.abs().max())
    agree = unguarded * own >= 0
    assert 0.05 < float(agree.float().mean()) < 0.95  # unguarded, the term pulls against the photometric loss
    assert float(guarded[~agree].abs().max()) <= 1e-4 * scale  # guarded, it is stopped there
    torch.testing.assert_close(guarded[agree], unguarded[agree], rtol=1e-4, atol=1e-5 * scale)  # and passes elsewhere


def test_loss_is_the_self_supervised_loss_plus_lambda_times_cross_entropy(world):
    torch.manual_seed(0)
    xdistill = create_task("xdistill", make_cfg(world, "sum", kwargs={"cross_task_weight": 0.5}))
    plain = create_task("self_supervised", make_cfg(world, "sum_plain", task="self_supervised",
                                                    kwargs={"pose_kwargs": {"backbone": "lcnet_050"}}))
    plain.depth_net.load_state_dict(xdistill.depth_net.state_dict())
    plain.pose_net.load_state_dict(xdistill.pose_net.state_dict())
    batch = first_batch(xdistill.cfg)
    with torch.no_grad():
        ours, theirs = xdistill(batch), plain(batch)
    assert {"photometric", "smoothness", "cross_task", "translator_accuracy", "teacher_confidence"} <= set(ours)
    torch.testing.assert_close(ours["photometric"], theirs["photometric"])
    torch.testing.assert_close(ours["loss"], theirs["loss"] + 0.5 * ours["cross_task"])


def test_short_run_exports_exactly_the_plain_student_and_leaves_the_teacher_out(world):
    cfg = make_cfg(world, "run", max_steps=2)
    task = create_task("xdistill", cfg)
    dataset = SequenceDataset(cfg.data.root, cfg.data.split, offsets=cfg.data.offsets, size=cfg.data.size)
    result = Trainer(cfg, task, dataset).fit()
    assert result.step == 2 and all(np.isfinite(r["loss"]) and r["cross_task"] > 0 for r in result.history)
    plain = create_model(STUDENT["name"], **STUDENT["kwargs"])
    with safe_open(str(result.model_path), framework="pt") as handle:
        saved = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    assert saved == {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    _, meta = load_model(result.model_path)
    assert meta.model_name == "student_lcnet"
    assert meta.model_kwargs == json.loads(json.dumps(plain.model_spec["kwargs"]))
    # the training checkpoint keeps the translator (to resume) but not the frozen teacher
    state = torch.load(ckpt.list_checkpoints(cfg.train.out_dir)[-1], weights_only=True)
    assert any(k.startswith("translator.") for k in state["task"])
    assert not any(k.startswith("teacher.") for k in state["task"])


def test_teacher_from_a_plain_state_dict_and_clear_config_errors(world, tmp_path):
    plain_kwargs = {"teacher_path": str(world["teacher_state"]), "teacher_kwargs": TEACHER}
    task = create_task("xdistill", make_cfg(world, "plain", kwargs=plain_kwargs))
    released, _ = load_model(world["teacher"])
    image = torch.rand(1, 3, *SIZE)
    torch.testing.assert_close(task.teacher.model(image)["logits"], released(image)["logits"])

    def error(kwargs: dict, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            create_task("xdistill", make_cfg(world, "err", kwargs=kwargs))

    error({"teacher_path": ""}, r"err.yaml: task.kwargs.teacher_path: expected the segmentation teacher")
    error({"teacher_path": str(tmp_path / "nope.safetensors")}, r"teacher_path: segmentation teacher .*nope.safetensors "
                                                                 "not found")
    error({"grouping": "cityscapes"}, r"task.kwargs.grouping: segmentation teacher .*teacher.safetensors: class id 0 "
                                      r"is 'sky' but grouping .*cityscapes.yaml has 'road'")
    error({**plain_kwargs, "teacher_kwargs": {**TEACHER, "class_names": ["sky", "road"]}},
          r"classifier predicts 12 classes but class_names lists 2")
    error({"teacher_kwargs": TEACHER}, "is a released model that records its own architecture")
    error({"grouping": "kitti"}, "task.kwargs.grouping: grouping 'kitti': no shipped grouping")
    error({"cross_task_weight": -1.0}, "task.kwargs.cross_task_weight: expected a number >= 0")
    error({"translator_scales": 5}, "task.kwargs.translator_scales: expected 1 to 4")
    error({"translator_warmup_steps": -1}, "task.kwargs.translator_warmup_steps: expected an integer >= 0")
    local = create_task("xdistill", make_cfg(world, "local", kwargs={"translator_scales": 1}))
    assert local.translator.num_scales == 1 and len(local.translator.embed) == 1
    disps = [torch.rand(1, 1, SIZE[0] // 2 ** s, SIZE[1] // 2 ** s, requires_grad=True) for s in range(4)]
    local.cross_task_loss({"image": image}, disps)["cross_task"].backward()
    assert disps[0].grad is not None and all(d.grad is None for d in disps[1:])  # only the finest scale is seen
    backbone_only = tmp_path / "backbone.safetensors"
    save_file({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, str(backbone_only))
    error({"teacher_path": str(backbone_only)}, "holds no decoder weights")


def test_segmentation_task_trains_the_teacher_that_xdistill_loads(world):
    seg_model = {"name": "segmentation_teacher", "kwargs": TEACHER}
    cfg = make_cfg(world, "seg", task="segmentation", model=seg_model, max_steps=6)
    cfg.optim.lr = 1e-2
    task = create_task("segmentation", cfg)
    assert task.dataset_options() == {"offsets": (), "load_semantic": True}
    dataset = SequenceDataset(cfg.data.root, cfg.data.split, size=cfg.data.size, **task.dataset_options())
    result = Trainer(cfg, task, dataset).fit()
    history = [r["cross_entropy"] for r in result.history]
    assert history[-1] < 0.8 * history[0], history  # overfits its 2 labelled frames
    xdistill = create_task("xdistill", make_cfg(world, "seg_teacher", kwargs={"teacher_path": str(result.model_path)}))
    assert xdistill.teacher.model.class_names == task.class_names and xdistill.teacher.input_size == SIZE
    # the model's classes must be the sequences' classes
    renamed = {**seg_model, "kwargs": {**TEACHER, "class_names": ["void", *task.class_names[1:]]}}
    with pytest.raises(ConfigError, match=r"meta.yaml: semantic_classes: class id 0 is 'sky' but the model's "
                                          r"class_names has 'void'"):
        create_task("segmentation", make_cfg(world, "seg_bad", task="segmentation", model=renamed))
