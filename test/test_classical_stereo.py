"""Classical stereo (OpenCV SGBM) as proxy labels and baseline; the proxy loss; the proxy cache.

The hand-made pair: a textured background plane at disparity 4 px and a textured box in front of
it at disparity 12 px, columns [40, 70) of the left image. The right image sees the background
at u − 4 and the box at u − 12, so the left background pixels u in [32, 40) (just left of the
box) are hidden behind the box in the right image: a left-right check must drop them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from kd_depth_core.classical.proxy_cache import ProxySource
from kd_depth_core.classical.sgbm import (
    SGBMPredictor,
    SGBMSettings,
    fill_rows,
    left_right_check,
    sgbm_disparity,
)
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.sequence import CameraModel, SequenceWriter, write_splits
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.geometry import disparity_to_depth
from kd_depth_core.losses import stereo_photometric_error
from kd_depth_core.losses.proxy import proxy_depth, proxy_loss, proxy_mask

H, W = 48, 128
D_BACK, D_BOX = 4, 12
BOX = (40, 70)
FX, BASELINE = 100.0, 0.2  # fx·B = 20 px·m: the background at 5 m, the box at 1.67 m


def _texture(rng: np.random.Generator, width: int) -> np.ndarray:
    noise = rng.random((H, width, 3)).astype(np.float32)
    tex = 0.6 * cv2.GaussianBlur(noise, (0, 0), 1.0) + 0.4 * cv2.GaussianBlur(noise, (0, 0), 2.5)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (tex * 255).astype(np.uint8)


def make_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, true left disparity) of the background plane + box scene."""
    rng = np.random.default_rng(0)
    back, box = _texture(rng, W + 32), _texture(rng, W + 32)
    u = np.arange(W)
    left = back[:, u + 16].copy()
    left[:, BOX[0]:BOX[1]] = box[:, 16 + np.arange(*BOX)]
    right = back[:, u + 16 + D_BACK].copy()  # right pixel x shows the background point at left u = x + 4
    lo, hi = BOX[0] - D_BOX, BOX[1] - D_BOX
    right[:, lo:hi] = box[:, 16 + np.arange(lo, hi) + D_BOX]  # the box, left u = x + 12
    truth = np.full((H, W), float(D_BACK), np.float32)
    truth[:, BOX[0]:BOX[1]] = D_BOX
    return left, right, truth


SETTINGS = SGBMSettings(min_depth=1.0, block_size=5)


def test_sgbm_confident_pixels_match_the_true_disparity_and_occlusions_are_dropped():
    left, right, truth = make_pair()
    disparity, confident = sgbm_disparity(left, right, SETTINGS, fx=FX, baseline=BASELINE)
    assert confident.mean() > 0.6
    assert np.median(np.abs(disparity[confident] - truth[confident])) < 1.0
    assert np.all(disparity[~confident] == 0)
    occluded = confident[:, BOX[0] - (D_BOX - D_BACK):BOX[0]]  # background hidden behind the box on the right
    assert occluded.mean() < 0.25, occluded.mean()


def test_left_right_check_by_hand():
    # left pixel u with disparity d looks at right pixel u - d
    d_left = np.array([[0.0, 1.0, 2.0, 1.0, 3.0]])
    d_right = np.array([[1.0, 1.0, 5.0, 1.0, 1.0]])
    # u=0: unmatched; u=1 -> right 0 (1 vs 1: ok); u=2 -> right 0 (1 vs 2: ok at tol 1);
    # u=3 -> right 2 (5 vs 1: occluded, fails); u=4 -> right 1 (1 vs 3: fails)
    assert left_right_check(d_left, d_right, 1.0).tolist() == [[False, True, True, False, False]]
    assert left_right_check(d_left, d_right, 0.5).tolist() == [[False, True, False, False, False]]
    assert left_right_check(np.array([[0.0, 3.0]]), np.array([[3.0, 3.0]]), 1.0).tolist() == [[False, False]]


def test_settings_scale_with_the_rig_and_width():
    settings = SGBMSettings(min_depth=2.0)
    p = settings.resolved(320, 185.6, 0.54)  # fx·B / min_depth = 50.1 px -> 64
    assert p["num_disparities"] == 64 and p["block_size"] == 5
    assert settings.resolved(1280, 742.4, 0.54)["num_disparities"] == 208  # 200.4 px -> 13·16
    assert settings.resolved(1280, 742.4, 0.54)["block_size"] == 11
    with pytest.raises(ValueError, match="sgbm.num_disparities"):
        SGBMSettings(num_disparities=20)
    with pytest.raises(ValueError, match="baseline"):
        settings.resolved(320, 185.6, 0.0)


def test_fill_rows_takes_the_farther_neighbour():
    disparity = np.array([[0, 5, 0, 0, 2, 0], [0, 0, 0, 0, 0, 0]], np.float32)
    filled = fill_rows(disparity, disparity > 0)
    np.testing.assert_array_equal(filled, [[5, 5, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(disparity_to_depth(np.array([4.0, 0.0]), FX, BASELINE), [5.0, 0.0])


def test_sgbm_baseline_predicts_dense_metric_depth():
    left, right, truth = make_pair()
    K = np.array([[FX, 0, W / 2], [0, FX, H / 2], [0, 0, 1]])
    depth = SGBMPredictor(SETTINGS, max_depth=80.0).predict(left, right, K, BASELINE)
    assert depth.shape == (H, W) and np.all(depth > 0)
    true_depth = FX * BASELINE / truth
    inner = np.s_[8:-8, 24:-8]
    assert np.median(np.abs(depth[inner] - true_depth[inner]) / true_depth[inner]) < 0.05


# --------------------------------------------------------------------------- the proxy loss
def test_proxy_loss_hand_worked_values():
    hint_disp = torch.tensor([[[[10.0, 10.0, 0.0, 10.0]]]])  # px; pixel 2 has no proxy
    fx_baseline = torch.tensor([20.0])  # -> proxy depth 2 m
    hint, confident = proxy_depth(hint_disp, fx_baseline)
    assert torch.equal(confident, hint_disp > 0) and torch.allclose(hint[confident], torch.tensor(2.0))
    hint_error = torch.tensor([[[[0.1, 0.1, 0.1, 0.5]]]])
    prediction_error = torch.tensor([[[[0.2, 0.2, 0.2, 0.2]]]])  # pixel 3: the prediction explains it better
    mask = proxy_mask(confident, hint_error, prediction_error)
    assert mask.tolist() == [[[[True, True, False, False]]]]
    depth = torch.tensor([[[[4.0, 1.0, 50.0, 7.0]]]], requires_grad=True)
    loss = proxy_loss([depth], hint, mask)
    assert loss.item() == pytest.approx(np.log(2.0))  # (|ln 4/2| + |ln 1/2|) / 2
    loss.backward()
    assert depth.grad[0, 0, 0, 2] == 0 and depth.grad[0, 0, 0, 3] == 0  # masked pixels get no gradient
    assert depth.grad[0, 0, 0, 0] > 0 and depth.grad[0, 0, 0, 1] < 0  # pulled toward 2 m from both sides
    none = proxy_loss([depth], hint, torch.zeros_like(mask))
    assert none.item() == 0.0


# --------------------------------------------------------------------------- the cache
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy") / "street"
    generate_dataset(root, SynthSpec(sequences=2, frames=5, width=128, height=48, seed=2), workers=1, progress=False)
    return root


def _epoch(dataset: SequenceDataset) -> list[torch.Tensor]:
    return [dataset[i]["proxy_disparity"] for i in range(len(dataset))]


def test_the_cache_computes_sgbm_once_and_rebuilds_when_stale(world, tmp_path):
    source = ProxySource(SGBMSettings(min_depth=2.0), tmp_path / "cache")
    dataset = SequenceDataset(world, split=None, offsets=(), stereo=True, augment=True, proxy=source)
    first = _epoch(dataset)
    assert source.computed == len(dataset) and source.hits == 0
    assert first[0].shape == (1, 48, 128) and (first[0] > 0).float().mean() > 0.3
    dataset.set_epoch(1)  # another augmentation: the proxy comes from the unaugmented pair
    second = _epoch(dataset)
    assert source.computed == len(dataset) and source.hits == len(dataset)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # a touched image invalidates its frame only
    name, index = dataset.sequences[0].name, dataset.samples[0][1]
    path = dataset.sequences[0].frame_path("right", index)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _epoch(dataset)
    assert source.computed == len(dataset) + 1
    assert len(list((tmp_path / "cache" / name).glob(f"{index:06d}-*.npy"))) == 1  # the stale entry is gone
    # another setting misses everywhere
    other = ProxySource(SGBMSettings(min_depth=2.0, uniqueness_ratio=5), tmp_path / "cache")
    dataset.proxy = other
    _epoch(dataset)
    assert other.computed == len(dataset) and other.hits == 0


WRITER = """
import sys, time
from kd_depth_core.classical.proxy_cache import ProxySource
from kd_depth_core.classical.sgbm import SGBMSettings
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.geometry import disparity_to_depth
cache, world, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
dataset = SequenceDataset(world, split=None, offsets=(), stereo=True, proxy=ProxySource(SGBMSettings(), cache))
while time.time() < start:
    time.sleep(0.001)
print(float(dataset[0]["proxy_disparity"].sum()))
"""


def test_two_workers_writing_the_same_entry_leave_one_valid_file(world, tmp_path):
    cache = tmp_path / "cache"
    start = time.time() + 8.0  # both processes imported and waiting, then they write at once
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(cache), str(world), str(start)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    sums = [float(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sums[0] == sums[1]
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temporary file left behind
    assert float(np.load(files[0]).astype(np.float32).sum()) == pytest.approx(sums[0])


def subpixel_pair(shift: float, height: int = 64, width: int = 160):
    """A smooth random texture and its view `shift` px (fractional) to the right: left[u] = right[u - shift]."""
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 255, (height // 2, (width + 40) // 2, 3)).astype(np.uint8),
                         (width + 40, height), interpolation=cv2.INTER_CUBIC)
    xs = (np.arange(width, dtype=np.float32) + 20 + shift)[None].repeat(height, 0)
    ys = np.arange(height, dtype=np.float32)[:, None].repeat(width, 1)
    return np.ascontiguousarray(texture[:, 20:20 + width]), cv2.remap(texture, xs, ys, cv2.INTER_CUBIC)


def test_matching_the_enlarged_pair_reduces_the_subpixel_error():
    errors = {1: [], 2: []}
    for shift in (6.25, 6.5, 6.75):
        left, right = subpixel_pair(shift)
        for factor in errors:
            settings = SGBMSettings(min_depth=1.0, block_size=5, upsample=factor)
            disparity, confident = sgbm_disparity(left, right, settings, fx=FX, baseline=BASELINE)
            assert disparity.shape == confident.shape == left.shape[:2]
            assert np.all(disparity[~confident] == 0) and confident[:, 24:-8].mean() > 0.9
            errors[factor].append(np.abs(disparity[:, 24:-8][confident[:, 24:-8]] - shift).mean())
    # SGBM alone locks onto whole and half pixels (about 0.13 px off on average here); enlarged, < 0.08 px
    assert np.mean(errors[2]) < 0.6 * np.mean(errors[1]), errors
    with pytest.raises(ValueError, match="sgbm.upsample"):
        SGBMSettings(upsample=0)
    assert SGBMSettings(upsample=2).fingerprint() != SGBMSettings().fingerprint()  # a new proxy cache entry


# --------------------------------------------------------------------------- the mirror augmentation
# `SequenceDataset(flip=...)`: the frame's right camera, mirrored, trained as the left view of a rectified
# pair whose partner, the mirrored left image, sits at +baseline. With make_pair's scene, right pixel x
# shows left pixel u = x + d, so the box is at right columns [28, 58); mirrored (x' = W-1-x) it lies at
# [70, 100), and mirrored pixel x' matches mirrored-left pixel W-1-u = x' - d: the same positive disparities.
CX = 60.0  # off-centre on purpose: mirrored, it must become W - 1 - 60 = 67
MIRRORED_BOX = (70, 100)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def mirror_world(tmp_path_factory):
    """One sequence of 4 frames of the hand-made pair, frame i brightened by 10·i (so frames differ)."""
    root = tmp_path_factory.mktemp("mirror")
    camera = CameraModel(W, H, [[FX, 0, CX], [0, FX, H / 2], [0, 0, 1]], baseline=BASELINE)
    left, right, _ = make_pair()
    frames = [(np.clip(left.astype(int) + 10 * i, 0, 255).astype(np.uint8),
               np.clip(right.astype(int) + 10 * i, 0, 255).astype(np.uint8)) for i in range(4)]
    with SequenceWriter(root / "seq", camera, has_right=True) as writer:
        for i, (left_image, right_image) in enumerate(frames):
            writer.add_frame(1_000 + 100 * i, left_image, right_image)
    write_splits(root, {"train": ["seq"]})
    return root, frames


def test_a_mirrored_sample_is_the_flipped_right_camera_with_the_flipped_left_as_partner(mirror_world):
    root, frames = mirror_world
    plain = SequenceDataset(root, "train", offsets=(-1, 1), stereo=True)[0]  # target frame 1
    mirrored = SequenceDataset(root, "train", offsets=(-1, 1), stereo=True, flip=1.0)[0]
    assert torch.equal(plain["image"], _tensor(frames[1][0]))
    assert torch.equal(mirrored["image"], _tensor(frames[1][1][:, ::-1]))
    assert torch.equal(mirrored["sources"][0], _tensor(frames[0][1][:, ::-1]))  # the same (right) camera
    assert torch.equal(mirrored["sources"][1], _tensor(frames[2][1][:, ::-1]))
    assert torch.equal(mirrored["image_right"], _tensor(frames[1][0][:, ::-1]))
    assert mirrored["K"][0, 2].item() == W - 1 - CX and mirrored["K"][0, 0].item() == FX
    assert plain["K"][0, 2].item() == CX
    assert mirrored["baseline"].item() == pytest.approx(BASELINE)  # no sign flip
    assert mirrored["frame_key"] == "seq/000001/mirrored" and plain["frame_key"] == "seq/000001"


def test_the_mirrored_pair_has_its_partner_at_plus_baseline(mirror_world):
    """The true depth of the mirrored view explains its partner with +baseline, and SGBM agrees."""
    root, _ = mirror_world
    dataset = SequenceDataset(root, "train", offsets=(), stereo=True, flip=1.0,
                              proxy=ProxySource(SGBMSettings(min_depth=1.0, block_size=5)))
    sample = dataset[1]
    depth = torch.full((1, 1, H, W), FX * BASELINE / 4)
    depth[..., MIRRORED_BOX[0]:MIRRORED_BOX[1]] = FX * BASELINE / 12
    image, right, K = sample["image"][None], sample["image_right"][None], sample["K"][None]
    inner = (slice(None), slice(None), slice(4, H - 4), slice(20, W - 20))
    plus = stereo_photometric_error(depth, image, right, K, torch.tensor([BASELINE]))[inner].mean()
    minus = stereo_photometric_error(depth, image, right, K, torch.tensor([-BASELINE]))[inner].mean()
    assert plus < 0.3 * minus
    proxy = sample["proxy_disparity"][0].numpy()
    box, back = proxy[:, 74:96], proxy[:, 104:124]
    assert (box > 0).mean() > 0.5 and abs(np.median(box[box > 0]) - 12) < 1
    assert (back > 0).mean() > 0.5 and abs(np.median(back[back > 0]) - 4) < 1


def test_mirrored_proxies_are_their_own_cache_entries(mirror_world, tmp_path):
    root, _ = mirror_world
    source = ProxySource(SGBMSettings(min_depth=1.0, block_size=5), tmp_path / "cache")
    dataset = SequenceDataset(root, "train", offsets=(), stereo=True, flip=0.5, proxy=source)
    seen = {}
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            seen[(i, dataset.mirrored(i))] = dataset[i]["proxy_disparity"]
    assert {m for _, m in seen} == {False, True}  # both views came up
    assert source.computed == len(seen)  # each view of each frame matched once, then read back
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "seq").glob("*.npy"))
    assert names == sorted(f"{i:06d}{'m' if m else ''}" for i, m in seen)
    for (i, m), disparity in seen.items():  # the two views differ (the box moved), so no entry evicted the other
        if m and (i, False) in seen:
            assert not torch.equal(disparity, seen[(i, False)])


def test_flip_is_refused_without_the_right_images_or_with_ground_truth(mirror_world):
    root, _ = mirror_world
    with pytest.raises(ValueError, match="data.flip"):
        SequenceDataset(root, "train", offsets=(), stereo=False, flip=0.5)
    with pytest.raises(ValueError, match="data.flip"):
        SequenceDataset(root, "train", offsets=(), stereo=True, flip=1.5)
