"""SGBM proxy supervision of the students (`train.proxy_supervision.ProxySupervision`, shared with the teachers)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_depth_core import geometry
from kd_depth_core.config import ConfigError, TrainConfig, config_from_dict
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.distill import adu_depth  # noqa: F401  (registers task 'adu_depth')
from kd_depth_core.models import create_model
from kd_depth_core.models.io import ModelMetadata, save_model
from kd_depth_core.train.proxy_supervision import ProxySupervision
from kd_depth_core.train.tasks import create_task

SIZE = (64, 96)
MIN_DEPTH, MAX_DEPTH = 0.5, 80.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def config(root: Path, out: Path, stereo: bool = True) -> TrainConfig:
    return config_from_dict(TrainConfig, {"data": {"root": str(root), "size": list(SIZE), "stereo": stereo},
                                          "train": {"out_dir": str(out)}}, "proxy.yaml")


def disp_for(depth: torch.Tensor) -> torch.Tensor:
    """The sigmoid disparity that `geometry.disp_to_depth` maps to `depth` metres."""
    return geometry.depth_to_disp(depth, MIN_DEPTH, MAX_DEPTH)


def shifted_pair(shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured left image and its right view: every pixel `shift` px to the left (constant disparity)."""
    generator = torch.Generator().manual_seed(0)
    wide = torch.rand(1, 3, SIZE[0], SIZE[1] + shift, generator=generator)
    return wide[..., :-shift], wide[..., shift:]  # left(u) = wide(u) = right(u - shift)


def test_the_proxy_pulls_a_wrong_prediction_by_its_log_ratio_and_leaves_a_right_one_alone(tmp_path):
    fx, baseline, shift = 48.0, 0.5, 6  # proxy depth fx*B/d = 4 m everywhere
    left, right = shifted_pair(shift)
    batch = {"image": left, "image_right": right, "K": torch.tensor([[[fx, 0, 48.0], [0, fx, 32.0], [0, 0, 1]]]),
             "baseline": torch.tensor([baseline]), "proxy_disparity": torch.full((1, 1, *SIZE), float(shift))}
    part = ProxySupervision(config(tmp_path, tmp_path), {}, "", MIN_DEPTH, MAX_DEPTH)
    assert part.dataset_options() == {"proxy": part.source} and part.settings.min_depth == MIN_DEPTH

    # twice too far: the hint rebuilds the left image exactly, the prediction does not -> |log 8 - log 4|
    wrong = disp_for(torch.full((1, 1, *SIZE), 8.0))
    terms = part.terms(batch, [wrong, wrong[..., ::2, ::2]])  # no photometric term: its own stereo error
    assert float(terms.loss) == pytest.approx(math.log(2.0), rel=1e-4)
    assert float(terms.fraction) > 0.8  # all but the left band that the right image does not see
    # the prediction already explains the pair as well as the hint: no pixel is pulled
    right_depth = disp_for(torch.full((1, 1, *SIZE), 4.0))
    terms = part.terms(batch, [right_depth])
    assert float(terms.loss) == 0.0 and float(terms.fraction) == 0.0
    # a photometric term that already explains the pixels better than the hint switches the proxy off
    terms = part.terms(batch, [wrong], prediction_error=torch.full((1, 1, *SIZE), -1.0))
    assert float(terms.loss) == 0.0
    # a hint that is wrong (3 px) explains the pair worse than the right prediction: ignored
    batch["proxy_disparity"] = torch.full((1, 1, *SIZE), 3.0)
    assert float(part.terms(batch, [right_depth]).fraction) < 0.05


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("student_proxy")
    root = base / "street"
    generate_dataset(root, SynthSpec(sequences=3, frames=6, width=SIZE[1], height=SIZE[0], seed=7), workers=1,
                     progress=False)
    torch.manual_seed(0)
    teacher = create_model("ms_dpt_teacher", backbone="vit_tiny_patch16_224", depth=4, embed_dim=64, num_heads=2,
                           img_size=SIZE, features=16, dropout=0.2)
    save_model(base / "teacher.safetensors", teacher, ModelMetadata.from_model(
        teacher, input_height=SIZE[0], input_width=SIZE[1], min_depth=MIN_DEPTH, max_depth=MAX_DEPTH,
        scale_kind="metric", focal_length_px=None))
    stereo = create_model("stereo_teacher", backbone="resnet10t", max_disparity=16, match_channels=8,
                          aggregation_channels=16, refine_channels=8, classical_prior=True, local_matching=0)
    stereo.set_rig(fx=0.58 * SIZE[1], baseline=0.54, width=SIZE[1], min_depth=MIN_DEPTH, max_depth=MAX_DEPTH)
    save_model(base / "guided.safetensors", stereo, ModelMetadata.from_model(
        stereo, input_height=SIZE[0], input_width=SIZE[1], min_depth=MIN_DEPTH, max_depth=MAX_DEPTH,
        scale_kind="metric", focal_length_px=None))
    return {"base": base, "root": root, "teacher": base / "teacher.safetensors", "guided": base / "guided.safetensors"}


def student_cfg(world, name: str, task: str, kwargs: dict, stereo: bool = True) -> TrainConfig:
    return config_from_dict(TrainConfig, {
        "data": {"root": str(world["root"]), "size": list(SIZE), "offsets": [-1, 1], "stereo": stereo,
                 "batch_size": 2, "num_workers": 0, "augment": False, "val_split": ""},
        "model": {"name": "student_lcnet", "kwargs": {"backbone": "lcnet_050"}},
        "task": {"name": task, "kwargs": {"pose_kwargs": {"backbone": "lcnet_050"}, **kwargs}},
        "train": {"out_dir": str(world["base"] / name)}}, f"{name}.yaml")


def loader(task, cfg: TrainConfig, batch_size: int = 2):
    options = {"offsets": cfg.data.offsets, **task.dataset_options()}
    data = SequenceDataset(cfg.data.root, cfg.data.split, size=cfg.data.size, stereo=cfg.data.stereo, **options)
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


def test_a_method_1_student_trained_with_stereo_learns_from_the_proxy(world):
    kwargs = {"teacher_path": str(world["teacher"]), "num_samples": 1, "mode": "mono_stereo", "proxy_weight": 1.0,
              "proxy_sgbm": {"upsample": 1}}
    cfg = student_cfg(world, "kd_proxy", "kd_ms_dpt", kwargs)
    task = create_task("kd_ms_dpt", cfg).train()
    proxy = task.dataset_options()["proxy"]
    assert proxy is task.student_terms.proxy.source and proxy.settings.min_depth == MIN_DEPTH  # the teacher's range
    batch = next(iter(loader(task, cfg)))
    out = task(batch)
    assert {"proxy", "proxy_fraction", "distill", "photometric"} <= set(out) and float(out["proxy_fraction"]) > 0
    assert float(out["proxy"]) > 0
    task.student_terms.opt.proxy_weight = 3.0  # the term enters the loss with its weight
    heavier = task(batch)
    assert float(heavier["loss"] - out["loss"]) == pytest.approx(2.0 * float(out["proxy"]), rel=1e-3)

    # the proxy term alone moves the student toward the SGBM depth where it is confident
    student = task.student
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    part = task.student_terms.proxy

    def proxy_error() -> float:
        with torch.no_grad():
            depth = geometry.disp_to_depth(student(batch["image"])["disp"][0], MIN_DEPTH, MAX_DEPTH)[1]
            hint = batch["K"][:, 0, 0].view(-1, 1, 1, 1) * batch["baseline"].view(-1, 1, 1, 1) \
                / batch["proxy_disparity"].clamp_min(1e-3)
            confident = batch["proxy_disparity"] > 0
            return float((depth.log() - hint.log()).abs()[confident].mean())

    before = proxy_error()
    for _ in range(25):
        optimizer.zero_grad()
        part.terms(batch, [d.float() for d in student(batch["image"])["disp"]]).loss.backward()
        optimizer.step()
    assert proxy_error() < 0.5 * before, (before, proxy_error())


def test_proxy_errors_name_the_field(world):
    kwargs = {"teacher_path": str(world["teacher"]), "num_samples": 1, "proxy_weight": 1.0}
    with pytest.raises(ConfigError, match=r"task\.kwargs\.proxy_weight: SGBM proxy supervision needs the right "
                                          r"images; set data\.stereo: true"):
        create_task("kd_ms_dpt", student_cfg(world, "no_stereo", "kd_ms_dpt", kwargs, stereo=False))
    with pytest.raises(ConfigError, match=r"task\.kwargs\.proxy_sgbm: sgbm\.upsample"):
        create_task("kd_ms_dpt", student_cfg(world, "bad_sgbm", "kd_ms_dpt", {**kwargs, "proxy_sgbm": {"upsample": 9}}))
    with pytest.raises(ConfigError, match=r"task\.kwargs\.proxy_weight: expected a number >= 0"):
        create_task("kd_ms_dpt", student_cfg(world, "negative", "kd_ms_dpt", {**kwargs, "proxy_weight": -1.0}))


def test_adu_shares_one_sgbm_proxy_between_the_guided_teacher_and_the_student(world):
    kwargs = {"teacher_path": str(world["guided"]), "mode": "stereo", "proxy_weight": 1.0}
    cfg = student_cfg(world, "adu_proxy", "adu_depth", kwargs)
    task = create_task("adu_depth", cfg).train()
    assert task.teacher_proxy is not None and task.student_terms.proxy.source is task.teacher_proxy
    assert task.dataset_options()["proxy"] is task.teacher_proxy
    batch = next(iter(loader(task, cfg)))
    out = task(batch)
    assert float(out["proxy_fraction"]) > 0 and np.isfinite(float(out["loss"].detach()))
    assert task.teacher_proxy.computed == 2  # one SGBM run per frame serves both

    other = student_cfg(world, "adu_other", "adu_depth", {**kwargs, "proxy_sgbm": {"upsample": 3}})
    with pytest.raises(ConfigError, match=r"proxy_sgbm: the student's SGBM proxy .* differs from the guided "
                                          r"teacher's hints"):
        create_task("adu_depth", other)
