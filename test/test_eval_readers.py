"""Benchmark readers on tiny fixture trees written in the official folder layouts."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from kd_depth_core.data.benchmarks import MissingFilesError, open_benchmark
from kd_depth_core.data.benchmarks.kitti import (
    KittiEigenReader,
    project_velodyne,
    read_calib_file,
    read_split_file,
    velo_to_image_matrix,
)
from kd_depth_core.data.sequence import CameraModel, SequenceError, SequenceWriter, write_splits

DATE, DRIVE = "2011_09_26", "2011_09_26_drive_0001_sync"
H, W = 10, 20
# Velodyne (x forward, y left, z up) -> camera (x right, y down, z forward)
R_VELO_TO_CAM = [0, -1, 0, 0, 0, -1, 1, 0, 0]
P_RECT = [10, 0, 10, 0, 0, 10, 5, 0, 0, 0, 1, 0]  # fx = fy = 10, cx = 10, cy = 5


def _fmt(values) -> str:
    return " ".join(f"{v:.12e}" for v in values)


def write_calibration(date_dir: Path) -> None:
    date_dir.mkdir(parents=True, exist_ok=True)
    (date_dir / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\ncorner_dist: 9.950000e-02\n"
        f"S_rect_02: {_fmt([W, H])}\nR_rect_00: {_fmt(np.eye(3).ravel())}\nP_rect_02: {_fmt(P_RECT)}\n")
    (date_dir / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {_fmt(R_VELO_TO_CAM)}\nT: {_fmt([0, 0, 0])}\n"
        "delta_f: 0 0\ndelta_c: 0 0\n")


# (x, y, z) in the Velodyne frame -> expected pixel (row, col) and depth, worked out by hand:
# camera point = (-y, -z, x); u = 10 * X / Z + 10, v = 10 * Y / Z + 5; pixel = round(.) - 1
POINTS = np.array([
    [20.0, 0.0, 0.0, 0.5],   # u=10, v=5 -> (4, 9) at 20 m; loses to the nearer point below
    [10.0, 0.0, 0.0, 0.5],   # u=10, v=5 -> (4, 9) at 10 m
    [5.0, 1.0, 0.5, 0.5],    # cam (-1, -0.5, 5): u=8, v=4 -> (3, 7) at 5 m
    [2.0, -0.5, 0.25, 0.5],  # cam (0.5, -0.25, 2): u=12.5 -> round half to even 12, v=3.75 -> 4 -> (3, 11)
    [-5.0, 0.0, 0.0, 0.5],   # behind the Velodyne (x < 0): dropped (it would project onto (4, 9))
    [1.0, -5.0, 0.0, 0.5],   # u = 60: outside the image
], dtype=np.float32)
EXPECTED = {(4, 9): 10.0, (3, 7): 5.0, (3, 11): 2.0}


def write_kitti_frame(root: Path, frame: int, points: np.ndarray = POINTS, image_ext: str = "png") -> None:
    drive = root / DATE / DRIVE
    (drive / "image_02" / "data").mkdir(parents=True, exist_ok=True)
    (drive / "velodyne_points" / "data").mkdir(parents=True, exist_ok=True)
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    cv2.imwrite(str(drive / "image_02" / "data" / f"{frame:010d}.{image_ext}"), image[..., ::-1])
    points.astype(np.float32).tofile(drive / "velodyne_points" / "data" / f"{frame:010d}.bin")


def test_velodyne_projection_lands_on_hand_computed_pixels_and_nearest_wins(tmp_path):
    write_calibration(tmp_path)
    P, shape = velo_to_image_matrix(read_calib_file(tmp_path / "calib_cam_to_cam.txt"),
                                    read_calib_file(tmp_path / "calib_velo_to_cam.txt"))
    assert shape == (H, W)
    depth = project_velodyne(POINTS, P, shape)
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    found = {(int(r), int(c)): float(depth[r, c]) for r, c in zip(*np.nonzero(depth))}
    assert found == EXPECTED
    # the order of duplicates does not matter
    assert np.array_equal(project_velodyne(POINTS[::-1], P, shape), depth)


def test_projection_matrix_composes_rect_rotation_and_velodyne_extrinsics():
    cam_to_cam = {"S_rect_02": np.array([100.0, 50.0]), "R_rect_00": np.array([0, -1, 0, 1, 0, 0, 0, 0, 1.0]),
                  "P_rect_02": np.array([2.0, 0, 0, 0.5, 0, 3.0, 0, 0, 0, 0, 1.0, 0.25])}
    velo_to_cam = {"R": np.eye(3).ravel(), "T": np.array([1.0, 2.0, 3.0])}
    P, shape = velo_to_image_matrix(cam_to_cam, velo_to_cam)
    assert shape == (50, 100)
    # X = (1, 1, 1): Tr -> (2, 3, 4); R_rect (90 deg about z) -> (-3, 2, 4); P -> (2*-3 + 0.5, 3*2, 4 + 0.25)
    assert P @ np.array([1.0, 1.0, 1.0, 1.0]) == pytest.approx([-5.5, 6.0, 4.25])
    with pytest.raises(ValueError, match="P_rect_03: missing"):
        velo_to_image_matrix(cam_to_cam, velo_to_cam, cam=3)


def test_kitti_reader_yields_image_projected_depth_and_meta(tmp_path):
    write_calibration(tmp_path / DATE)
    write_kitti_frame(tmp_path, 5)
    split = tmp_path / "test_files.txt"
    split.write_text(f"{DATE}/{DRIVE} 0000000005 l\n")
    with pytest.warns(UserWarning, match="official test set has 697"):
        reader = open_benchmark("kitti_eigen", tmp_path, split_file=split)
    assert isinstance(reader, KittiEigenReader) and len(reader) == 1
    image, depth, name, meta = next(iter(reader))
    assert name == f"{DATE}/{DRIVE} 0000000005 l"
    assert image.shape == (H, W, 3) and image.dtype == np.uint8 and tuple(image[0, 0]) == (200, 0, 0)
    assert {(int(r), int(c)): float(depth[r, c]) for r, c in zip(*np.nonzero(depth))} == EXPECTED
    assert meta["K"] == pytest.approx(np.array([[10, 0, 10], [0, 10, 5], [0, 0, 1.0]]))


def test_kitti_missing_files_are_named_with_full_paths_and_counted(tmp_path):
    write_calibration(tmp_path / DATE)
    write_kitti_frame(tmp_path, 0)
    split = tmp_path / "test_files.txt"
    split.write_text(f"{DATE}/{DRIVE} 0000000000 l\n{DATE}/{DRIVE} 0000000007 l\n")
    with pytest.raises(MissingFilesError) as info:
        KittiEigenReader(tmp_path, split)
    message = str(info.value)
    assert "2 file(s)" in message and "1 of 2 samples" in message
    assert str(tmp_path / DATE / DRIVE / "image_02" / "data" / "0000000007.png") in message
    assert str(tmp_path / DATE / DRIVE / "velodyne_points" / "data" / "0000000007.bin") in message


def test_kitti_split_file_is_required_and_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="splits/eigen/test_files.txt"):
        KittiEigenReader(tmp_path, None)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{DATE}/{DRIVE} 0000000005 l\n{DATE} 12 x\n")
    with pytest.raises(ValueError, match="bad.txt: line 2"):
        read_split_file(bad)


def test_kitti_improved_ground_truth_from_the_annotated_archive(tmp_path):
    write_kitti_frame(tmp_path / "raw", 3, image_ext="jpg")
    gt_dir = tmp_path / "annotated" / "val" / DRIVE / "proj_depth" / "groundtruth" / "image_02"
    gt_dir.mkdir(parents=True)
    raw = np.zeros((H, W), np.uint16)
    raw[2, 3] = 5 * 256 + 128  # 5.5 m
    cv2.imwrite(str(gt_dir / "0000000003.png"), raw)
    split = tmp_path / "bench.txt"
    split.write_text(f"{DATE}/{DRIVE} 3 l\n")
    with pytest.warns(UserWarning, match="652"):
        reader = open_benchmark("kitti_eigen_benchmark", tmp_path / "raw", split_file=split,
                                gt_root=tmp_path / "annotated")
    sample = reader.load(0)
    assert sample.depth[2, 3] == pytest.approx(5.5) and np.count_nonzero(sample.depth) == 1
    assert sample.meta["depth_path"].endswith("val/2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/"
                                              "0000000003.png")


def _write_rgb(path: Path, shape=(6, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape + (3,), 90, np.uint8))


def _write_u16(path: Path, value: int, shape=(6, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.zeros(shape, np.uint16)
    raw[1:, :] = value
    cv2.imwrite(str(path), raw)


def test_nyu_official_splits_and_flat_layouts(tmp_path):
    root = tmp_path / "nyu"
    _write_rgb(root / "official_splits" / "test" / "bathroom" / "rgb_00045.jpg")
    _write_u16(root / "official_splits" / "test" / "bathroom" / "sync_depth_00045.png", 2500)  # mm
    with pytest.warns(UserWarning, match="654"):
        reader = open_benchmark("nyu", root)
    sample = reader.load(0)
    assert sample.name == "bathroom/00045" and sample.depth[2, 2] == pytest.approx(2.5) and sample.depth[0, 0] == 0

    flat = tmp_path / "flat"
    _write_rgb(flat / "rgb" / "a.png")
    _write_u16(flat / "depth" / "a.png", 1500)
    _write_rgb(flat / "rgb" / "b.png")
    np.save(flat / "depth" / "b.npy", np.full((6, 8), 3.25, np.float32))
    with pytest.warns(UserWarning):
        reader = open_benchmark("nyu", flat)
    assert reader.names == ["a", "b"]
    assert reader.load(0).depth[3, 3] == pytest.approx(1.5) and reader.load(1).depth[0, 0] == pytest.approx(3.25)

    _write_rgb(flat / "rgb" / "c.png")
    with pytest.raises(MissingFilesError, match=r"c \(depth\): .*flat/depth/c.png"):
        open_benchmark("nyu", flat)


def test_make3d_npy_layout_and_missing_grid(tmp_path):
    _write_rgb(tmp_path / "Test134" / "img-op1.jpg", shape=(44, 33))
    grid = np.full((55, 305), 12.0, np.float32)
    (tmp_path / "Gridlaserdata").mkdir()
    np.save(tmp_path / "Gridlaserdata" / "depth_sph_corr-op1.npy", grid)
    with pytest.warns(UserWarning, match="134"):
        reader = open_benchmark("make3d", tmp_path)
    sample = reader.load(0)
    assert sample.name == "op1" and sample.image.shape == (44, 33, 3) and sample.depth.shape == (55, 305)
    _write_rgb(tmp_path / "Test134" / "img-op2.jpg")
    with pytest.raises(MissingFilesError, match=r"op2 \(depth\): .*Gridlaserdata/depth_sph_corr-op2.mat"):
        open_benchmark("make3d", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("scipy") is not None, reason="checks the message shown without scipy")
def test_make3d_mat_without_scipy_says_how_to_proceed(tmp_path):
    from kd_depth_core.data.benchmarks.make3d import load_make3d_depth

    with pytest.raises(ImportError, match="needs scipy.*convert the grids to .npy"):
        load_make3d_depth(tmp_path / "depth_sph_corr-x.mat")


def test_drivingstereo_test_and_weather_layouts(tmp_path):
    _write_rgb(tmp_path / "test-left-image" / "2018-07-11" / "f1.jpg")
    _write_u16(tmp_path / "test-depth-map" / "2018-07-11" / "f1.png", 20 * 256)
    sample = open_benchmark("drivingstereo", tmp_path).load(0)
    assert sample.name == "2018-07-11/f1" and sample.depth[5, 5] == pytest.approx(20.0)

    _write_rgb(tmp_path / "foggy" / "left-image-full-size" / "g.jpg")
    _write_u16(tmp_path / "foggy" / "depth-map-full-size" / "g.png", 7 * 256)
    assert open_benchmark("drivingstereo", tmp_path, split="foggy").load(0).depth[2, 2] == pytest.approx(7.0)

    _write_rgb(tmp_path / "foggy" / "left-image-full-size" / "h.jpg")
    with pytest.raises(MissingFilesError, match=r"(?s)1 file\(s\).*h \(depth\): .*foggy/depth-map-full-size/h.png"):
        open_benchmark("drivingstereo", tmp_path, split="foggy")
    with pytest.raises(FileNotFoundError, match="rainy/left-image-full-size"):
        open_benchmark("drivingstereo", tmp_path, split="rainy")


def _write_sequence(root: Path, name: str, frames: int, has_depth: bool = True, has_right: bool = False) -> None:
    camera = CameraModel(8, 6, np.array([[5.0, 0, 4], [0, 5.0, 3], [0, 0, 1]]), baseline=0.1 if has_right else None)
    with SequenceWriter(root / name, camera, has_depth=has_depth, has_right=has_right) as writer:
        for i in range(frames):
            depth = np.full((6, 8), 1.0 + i, np.float32) if has_depth else None
            right = np.full((6, 8, 3), 10 * i + 1, np.uint8) if has_right else None
            writer.add_frame(1000 + i, np.full((6, 8, 3), 10 * i, np.uint8), right, depth=depth)


def test_sequence_reader_uses_the_split_and_stride(tmp_path):
    _write_sequence(tmp_path, "drive_a", 5)
    _write_sequence(tmp_path, "drive_b", 2)
    write_splits(tmp_path, {"test": ["drive_a", "drive_b"]})
    reader = open_benchmark("sequence", tmp_path, stride=2)
    assert reader.names == ["drive_a/000000", "drive_a/000002", "drive_a/000004", "drive_b/000000"]
    sample = reader.load(2)
    assert sample.depth[0, 0] == pytest.approx(5.0) and sample.image[0, 0, 0] == 40
    assert sample.meta["K"][0, 0] == 5.0

    _write_sequence(tmp_path, "no_depth", 1, has_depth=False)
    write_splits(tmp_path, {"test": ["no_depth"]})
    with pytest.raises(SequenceError, match="has_depth is false"):
        open_benchmark("sequence", tmp_path)


def test_sequence_reader_gives_right_images_for_stereo_models(tmp_path):
    _write_sequence(tmp_path, "stereo", 3, has_right=True)
    write_splits(tmp_path, {"test": ["stereo"]})
    assert "right" not in open_benchmark("sequence", tmp_path).load(1).meta  # mono models: not loaded
    sample = open_benchmark("sequence", tmp_path, right=True).load(1)
    assert sample.image[0, 0, 0] == 10 and sample.meta["right"].shape == (6, 8, 3) and sample.meta["right"][0, 0, 0] == 11
    _write_sequence(tmp_path, "mono", 1)
    write_splits(tmp_path, {"test": ["stereo", "mono"]})
    with pytest.raises(SequenceError, match=r"mono/meta.yaml: has_right is false; a stereo model needs"):
        open_benchmark("sequence", tmp_path, right=True)
    with pytest.raises(ValueError, match="protocol 'nyu': stereo models are evaluated on kd-depth sequences only"):
        open_benchmark("nyu", tmp_path, right=True)


def test_unknown_benchmark_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="no benchmark reader"):
        open_benchmark("cityscapes", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        open_benchmark("nyu", tmp_path / "nowhere")
