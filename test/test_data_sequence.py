"""Sequence format: round trip, validator errors that name the file and field, atomic writes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from kd_depth_core.cli import main as cli_main
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.sequence import (
    CameraModel,
    Sequence,
    SequenceError,
    SequenceWriter,
    list_sequences,
    read_split,
    validate_sequence,
    write_splits,
)

H, W = 12, 16


def camera() -> CameraModel:
    K = [[10.0, 0, 7.5], [0, 11.0, 5.5], [0, 0, 1]]
    return CameraModel(W, H, K, baseline=0.5, frame_id="cam_optical_frame", right_frame_id="cam_r_optical_frame")


def frame(i: int) -> dict:
    rng = np.random.default_rng(i)
    depth = rng.uniform(1, 50, (H, W)).astype(np.float32)
    depth[0, 0] = 0.0  # invalid pixel stays invalid
    return {
        "left": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "right": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "depth": depth,
        "semantic": rng.integers(0, 4, (H, W), dtype=np.uint8),
        "pose": np.eye(4) + np.diag([0, 0, 0, 0]) + np.pad(np.array([[0, 0, i]]).T, ((0, 1), (3, 0))),
    }


def write(path, n=5, stamps=None):
    stamps = stamps or [1_000 + 100 * i for i in range(n)]
    with SequenceWriter(path, camera(), has_right=True, has_depth=True, has_semantic=True,
                        semantic_classes=["sky", "road", "building", "car"], has_poses=True,
                        source={"test": True}) as writer:
        for i, stamp in enumerate(stamps):
            writer.add_frame(stamp, **frame(i))
    return path


def test_round_trip_is_exact(tmp_path):
    seq = Sequence(write(tmp_path / "seq_a"))
    assert len(seq) == 5 and seq.has_right and seq.has_depth and seq.has_semantic
    assert seq.stamps_ns.tolist() == [1000, 1100, 1200, 1300, 1400]
    np.testing.assert_array_equal(seq.camera.K, camera().K)
    assert seq.camera.baseline == 0.5 and seq.camera.frame_id == "cam_optical_frame"
    assert seq.semantic_classes == ["sky", "road", "building", "car"]
    for i in range(5):
        ref = frame(i)
        np.testing.assert_array_equal(seq.load_left(i), ref["left"])
        np.testing.assert_array_equal(seq.load_right(i), ref["right"])
        np.testing.assert_array_equal(seq.load_semantic(i), ref["semantic"])
        # metres x 256 quantisation: error at most half a step
        np.testing.assert_allclose(seq.load_depth(i), ref["depth"], atol=0.5 / 256)
        assert seq.load_depth(i)[0, 0] == 0.0
        np.testing.assert_allclose(seq.poses[i], ref["pose"])


def test_camera_scaling_by_hand():
    scaled = camera().scaled(32, 6)  # x factor 2, y factor 0.5
    np.testing.assert_allclose(scaled.K, [[20.0, 0, 15.0], [0, 5.5, 2.75], [0, 0, 1]])


def test_interrupted_write_leaves_nothing_that_loads(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with SequenceWriter(tmp_path / "seq_b", camera()) as writer:
            writer.add_frame(1, frame(0)["left"])
            raise RuntimeError("boom")
    assert not (tmp_path / "seq_b").exists()
    assert list(tmp_path.iterdir()) == []
    assert list_sequences(tmp_path) == []


def test_writer_refuses_to_overwrite(tmp_path):
    write(tmp_path / "seq_a")
    with pytest.raises(FileExistsError, match="seq_a"):
        SequenceWriter(tmp_path / "seq_a", camera())


def test_writer_rejects_bad_frames(tmp_path):
    with SequenceWriter(tmp_path / "s", camera()) as writer:
        with pytest.raises(ValueError, match="left: expected uint8 array of shape"):
            writer.add_frame(1, np.zeros((H, W), np.uint8))
        writer.add_frame(5, frame(0)["left"])
        with pytest.raises(ValueError, match="stamps must increase"):
            writer.add_frame(5, frame(0)["left"])


@pytest.mark.parametrize("corrupt, message", [
    (lambda p: (p / "left" / "000002.png").unlink(), r"left/000002\.png: missing"),
    (lambda p: p.joinpath("meta.yaml").write_text(p.joinpath("meta.yaml").read_text().replace(
        "- - 10.0", "- - 10.0\n    - 3.0", 1)), r"camera\.K"),
    (lambda p: p.joinpath("frames.csv").write_text("index,stamp_ns\n0,1\n1,2\n3,3\n4,4\n5,5\n"),
     r"frames\.csv: line 4: index: expected 2"),
    (lambda p: p.joinpath("frames.csv").write_text("index,stamp_ns\n0,1\n1,3\n2,2\n3,4\n4,5\n"),
     r"frames\.csv: line 4: stamp_ns: stamps must increase"),
    (lambda p: p.joinpath("depth", "000001.png").write_bytes(p.joinpath("depth", "000001.png").read_bytes()[:40]),
     r"depth/000001\.png: unreadable or truncated"),
    (lambda p: p.joinpath("meta.yaml").unlink(), r"meta\.yaml: missing"),
])
def test_validator_names_each_corruption(tmp_path, corrupt, message):
    path = write(tmp_path / "seq_c")
    validate_sequence(path)
    corrupt(path)
    with pytest.raises(SequenceError, match=message):
        validate_sequence(path)


def test_validate_command(tmp_path, capsys):
    write(tmp_path / "good")
    bad = write(tmp_path / "bad")
    (bad / "right" / "000000.png").unlink()
    write_splits(tmp_path, {"train": ["good"], "test": ["bad"]})
    assert cli_main(["validate", str(tmp_path / "good")]) == 0
    assert cli_main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "right/000000.png: missing" in out


def test_splits_name_missing_sequences(tmp_path):
    write(tmp_path / "a")
    write_splits(tmp_path, {"train": ["a"], "val": ["a", "nope"]})
    assert read_split(tmp_path, "train") == ["a"]
    with pytest.raises(SequenceError, match="nope"):
        read_split(tmp_path, "val")
    with pytest.raises(SequenceError, match="available splits"):
        read_split(tmp_path, "test")


def test_dataset_triplets_respect_offsets_and_boundaries(tmp_path):
    write(tmp_path / "a", n=5)
    write(tmp_path / "b", n=3)
    write_splits(tmp_path, {"train": ["a", "b"]})
    ds = SequenceDataset(tmp_path, "train", offsets=(-1, 2))
    # a: targets 1,2 (need i-1 >= 0 and i+2 <= 4); b: none (needs i+2 <= 2 with i >= 1)
    assert [ds.frame_key(i) for i in range(len(ds))] == ["a/000001", "a/000002"]
    sample = ds[1]
    seq = Sequence(tmp_path / "a")
    assert torch.equal(sample["image"], torch.from_numpy(seq.load_left(2)).permute(2, 0, 1).float() / 255)
    assert torch.equal(sample["sources"][0], torch.from_numpy(seq.load_left(1)).permute(2, 0, 1).float() / 255)
    assert torch.equal(sample["sources"][1], torch.from_numpy(seq.load_left(4)).permute(2, 0, 1).float() / 255)


def test_dataset_scales_k_and_loads_optional_parts(tmp_path):
    write(tmp_path / "a", n=4)
    write_splits(tmp_path, {"train": ["a"]})
    ds = SequenceDataset(tmp_path, "train", offsets=(-1, 1), size=(6, 32), stereo=True, load_depth=True,
                         load_semantic=True)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 6, 32) and batch["sources"].shape == (2, 2, 3, 6, 32)
    assert batch["image_right"].shape == (2, 3, 6, 32)
    assert batch["depth_gt"].shape == (2, 1, 6, 32) and batch["semantic"].dtype == torch.int64
    torch.testing.assert_close(batch["K"][0], torch.tensor([[20.0, 0, 15.0], [0, 5.5, 2.75], [0, 0, 1]]))
    assert batch["baseline"].tolist() == [0.5, 0.5]
    assert batch["frame_key"] == ["a/000001", "a/000002"]


def test_dataset_rejects_missing_parts(tmp_path):
    with SequenceWriter(tmp_path / "mono", CameraModel(W, H, camera().K)) as writer:
        for i in range(3):
            writer.add_frame(i + 1, frame(i)["left"])
    with pytest.raises(SequenceError, match="mono: data.stereo=true but the sequence has no right images"):
        SequenceDataset(tmp_path, ["mono"], stereo=True)


def test_background_write_failure_surfaces_and_leaves_nothing(tmp_path):
    writer = SequenceWriter(tmp_path / "s", camera(), workers=2)
    writer.add_frame(1, frame(0)["left"])
    import shutil

    writer._drain(wait=True)
    shutil.rmtree(writer._tmp / "left")  # the disk "fails" under the writer
    with pytest.raises(OSError, match="could not write"):  # at the next frame or at close, whichever sees it
        writer.add_frame(2, frame(1)["left"])
        writer.close()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_ensure_splits_holds_out_sequences_and_never_overwrites(tmp_path):
    from kd_depth_core.data.sequence import ensure_splits

    for name in ("s1", "s2", "s3"):
        write(tmp_path / name, n=2)
    # val and test are different sequences with three or more (nothing selects checkpoints on test)
    assert ensure_splits(tmp_path) == {"train": ["s1"], "val": ["s3"], "test": ["s2"]}
    assert read_split(tmp_path, "val") == ["s3"]
    assert ensure_splits(tmp_path) is None  # existing splits are the user's


def test_new_sequences_are_appended_to_a_split(tmp_path):
    from kd_depth_core.data.sequence import append_to_split, ensure_splits, unsplit_sequences

    for name in ("s1", "s2", "s3"):
        write(tmp_path / name, n=2)
    ensure_splits(tmp_path)
    write(tmp_path / "s4", n=2)
    assert unsplit_sequences(tmp_path) == ["s4"]
    assert append_to_split(tmp_path) == ["s4"]
    assert read_split(tmp_path, "train") == ["s1", "s4"]
    assert unsplit_sequences(tmp_path) == [] and append_to_split(tmp_path) == []


def test_writer_stores_encoded_bytes_as_they_are_and_rejects_another_format(tmp_path):
    camera = CameraModel(width=8, height=4, K=np.array([[8.0, 0, 4], [0, 8, 2], [0, 0, 1]]))
    rgb = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)
    ok, jpeg = cv2.imencode(".jpg", rgb)
    with SequenceWriter(tmp_path / "seq", camera, image_format="jpg", workers=0) as writer:
        writer.add_frame(1, jpeg.tobytes())
        with pytest.raises(ValueError, match="left: encoded bytes are png; this sequence stores jpg"):
            writer.add_frame(2, cv2.imencode(".png", rgb)[1].tobytes())
    assert (tmp_path / "seq" / "left" / "000000.jpg").read_bytes() == jpeg.tobytes()
