"""Synthetic dataset generation: sequence format, splits, determinism, workers, CLI."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from kd_depth_core.cli import main as kd_depth_main
from kd_depth_core.data.sequence import Sequence, read_split, validate_sequence
from kd_depth_core.data.synthetic.generate import (
    SynthSpec,
    generate_dataset,
    make_splits,
    sequence_rng,
)
from kd_depth_core.data.synthetic.presets import build_scene
from kd_depth_core.data.synthetic.render import Renderer, kitti_like_K, stereo_right_pose
from kd_depth_core.data.synthetic.world import CLASS_ID, SEMANTIC_CLASSES

TINY = SynthSpec(preset="street", sequences=3, frames=3, width=64, height=24, seed=1)


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "street"
    generate_dataset(root, TINY, workers=1, progress=False)
    return root


def test_dataset_root_is_valid_with_disjoint_splits(tiny_root):
    names = sorted(p.name for p in tiny_root.iterdir() if p.is_dir() and p.name != "splits")
    assert names == ["street_000", "street_001", "street_002"]
    splits = {s: read_split(tiny_root, s) for s in ("train", "val", "test")}
    assert splits == {"train": ["street_000"], "val": ["street_001"], "test": ["street_002"]}
    for name in names:
        seq = validate_sequence(tiny_root / name, deep=True)
        assert len(seq) == 3 and seq.has_right and seq.has_depth and seq.has_semantic
        assert seq.semantic_classes == list(SEMANTIC_CLASSES)
        assert seq.camera.baseline == pytest.approx(0.54)
        np.testing.assert_allclose(seq.camera.K, kitti_like_K(64, 24))
        assert seq.poses.shape == (3, 4, 4)
        assert np.all(np.diff(seq.stamps_ns) == 100_000_000)       # 10 Hz
        assert seq.meta["source"]["preset"] == "street" and seq.meta["source"]["seed"] == 1
    assert (tiny_root / "synth.yaml").is_file()


def test_written_frames_are_the_rendered_ground_truth(tiny_root):
    """Re-render frame 2 of sequence 1 and compare with what was written (RGB lossless, depth to 1/256 m)."""
    seq = Sequence(tiny_root / "street_001")
    scene = build_scene("street", sequence_rng(TINY.seed, "street", 1), TINY.frames, 0.54)
    K = kitti_like_K(64, 24)
    np.testing.assert_allclose(seq.poses[2], scene.poses[2], atol=1e-6)
    left, right = Renderer(scene.world).render([scene.poses[2], stereo_right_pose(scene.poses[2], 0.54)], K, 64, 24,
                                               exposure=scene.exposure[2])
    np.testing.assert_array_equal(seq.load_left(2), left.rgb)
    np.testing.assert_array_equal(seq.load_right(2), right.rgb)
    np.testing.assert_array_equal(seq.load_semantic(2), left.semantic)
    depth = seq.load_depth(2)
    np.testing.assert_allclose(depth, left.depth, atol=0.5 / 256 + 1e-6)
    sky = seq.load_semantic(2) == CLASS_ID["sky"]
    assert np.all(depth[sky] == 0) and np.all(depth[~sky] > 0)


def test_same_seed_identical_bytes_across_worker_counts_and_other_seed_differs(tiny_root, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, TINY, workers=2, progress=False)          # the multiprocessing path
    assert _file_hashes(again) == _file_hashes(tiny_root)
    other = tmp_path / "other"
    generate_dataset(other, SynthSpec(**{**TINY.__dict__, "seed": 2, "sequences": 1}), workers=1, progress=False)
    a, b = Sequence(tiny_root / "street_000"), Sequence(other / "street_000")
    assert not np.array_equal(a.load_left(0), b.load_left(0))
    assert not np.array_equal(a.load_depth(0), b.load_depth(0))


def test_existing_output_needs_overwrite(tmp_path):
    spec = SynthSpec(preset="indoor", sequences=1, frames=2, width=32, height=16, seed=0)
    root = tmp_path / "indoor"
    generate_dataset(root, spec, workers=1, progress=False)
    marker = root / "street_999"
    marker.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        generate_dataset(root, spec, workers=1, progress=False)
    assert marker.is_dir()                                             # nothing was touched
    generate_dataset(root, spec, workers=1, overwrite=True, progress=False)
    assert not marker.exists()
    seq = validate_sequence(root / "indoor_000")
    assert seq.camera.baseline == pytest.approx(0.12)
    assert read_split(root, "train") == ["indoor_000"]
    classes = set(np.unique(seq.load_semantic(0)).tolist())
    assert CLASS_ID["sky"] not in classes and classes & {CLASS_ID["wall"], CLASS_ID["floor"], CLASS_ID["furniture"]}
    assert not list(tmp_path.glob(".*partial"))                         # no temporary folders left


def test_make_splits_holds_out_whole_sequences():
    names = [f"s{i}" for i in range(20)]
    splits = make_splits(names)
    assert len(splits["test"]) == 3 and len(splits["val"]) == 2 and len(splits["train"]) == 15
    assert sorted(sum(splits.values(), [])) == sorted(names)
    assert make_splits(["a"]) == {"train": ["a"]}
    assert make_splits(["a", "b"]) == {"train": ["a"], "test": ["b"]}


@pytest.mark.parametrize("field,value", [("frames", 1), ("width", 0), ("baseline", -0.1), ("preset", "mars")])
def test_bad_spec_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SynthSpec(**{**TINY.__dict__, field: value}).check()


def test_cli_generates_refuses_to_overwrite_and_forces(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--sequences", "2", "--frames", "2", "--size", "48x16", "--seed", "3",
            "--baseline", "0.3", "--workers", "1"]
    assert kd_depth_main(args) == 0
    printed = capsys.readouterr().out
    assert "kd-depth validate" in printed and "2 street sequences" in printed
    seq = validate_sequence(out / "street_000")
    assert (seq.camera.width, seq.camera.height) == (48, 16) and seq.camera.baseline == pytest.approx(0.3)
    assert kd_depth_main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert kd_depth_main(args + ["--force"]) == 0
    with pytest.raises(SystemExit) as exc:
        kd_depth_main(["synth", "--out", str(out), "--size", "320by96"])
    assert exc.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
