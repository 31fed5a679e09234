"""Keyframe selection drops static stretches, gaps and calibration changes split sequences, stamps match."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import bag_fixtures as bf  # noqa: E402

from kd_depth_core.data.sequence import Sequence  # noqa: E402
from kd_depth_ros.bag_converter import ConvertOptions, convert_bag  # noqa: E402
from kd_depth_ros.keyframes import KeyframeSelector, NearestStampMatcher, SegmentSplitter, motion_score  # noqa: E402

W, H = 64, 48
K = bf.intrinsics(W, H)
T0, DT = 5_000_000_000, 100_000_000
MS = 1_000_000


def test_keyframe_selector_drops_repeated_frames():
    frames = bf.textured_frames(12, W, H, static={5, 6, 7, 8})
    selector = KeyframeSelector(min_motion=1.0)
    kept = [i for i, f in enumerate(frames) if selector.accept(f)[0]]
    assert kept == [0, 1, 2, 3, 4, 9, 10, 11]
    assert motion_score(np.zeros((4, 4), np.float32), np.full((4, 4), 3, np.float32)) == 3.0
    assert KeyframeSelector(min_motion=0).accept(frames[0])[0]


def test_keyframe_reference_is_the_last_kept_frame():
    """Slow motion accumulates: 1-pixel steps are each too small, but the difference to the last keyframe grows."""
    frames = bf.textured_frames(8, W, H, shift_px=1)
    step = motion_score(*(np.float32(f.mean(2)) for f in frames[:2]))
    selector = KeyframeSelector(min_motion=step * 1.5)
    kept = [i for i, f in enumerate(frames) if selector.accept(f)[0]]
    assert kept[0] == 0 and len(kept) > 2 and all(b - a >= 2 for a, b in zip(kept, kept[1:]))


def test_segment_splitter_gap_and_camera_change():
    splitter = SegmentSplitter(max_gap_s=0.5)
    stamps = [0, 100, 200, 800, 900, 1000]  # ms; 600 ms gap after 200
    keys = ["a", "a", "a", "a", "b", "b"]
    out = [splitter.update(s * MS, k) for s, k in zip(stamps, keys)]
    assert out == [(0, True), (0, False), (0, False), (1, True), (2, True), (2, False)]
    with pytest.raises(ValueError, match="max_gap_s"):
        SegmentSplitter(max_gap_s=0)


def test_matcher_nearest_within_tolerance_and_latest_before():
    matcher = NearestStampMatcher({"right": 0.01, "info": float("inf")}, max_wait_s=1.0, before_only={"info"})
    matcher.add("info", 0, "info0")
    for i in range(4):
        matcher.add_primary(i * 100 * MS, f"L{i}")
    matcher.add("right", 3 * MS, "R0")         # 3 ms after L0: match
    matcher.add("right", 120 * MS, "R1")       # 20 ms after L1: too far
    matcher.add("info", 150 * MS, "info1")
    matcher.add("right", 198 * MS, "R2a")      # 2 ms before L2
    matcher.add("right", 205 * MS, "R2b")      # 5 ms after: the nearer one wins
    released = list(matcher.ready())
    assert [(m.item, m.partners) for m in released] == [
        ("L0", {"right": "R0", "info": "info0"}),
        ("L1", {"right": None, "info": "info0"}),
    ]  # L2 waits: no right frame beyond 200 + 10 ms yet, and no info at or after 200 ms
    rest = list(matcher.finish())
    assert [(m.item, m.partners) for m in rest] == [("L2", {"right": "R2a", "info": "info1"}),
                                                      ("L3", {"right": None, "info": "info1"})]


def test_matcher_releases_frames_when_a_partner_stays_silent():
    matcher = NearestStampMatcher({"cloud": 0.05}, max_wait_s=0.3)
    for i in range(10):
        matcher.add_primary(i * 100 * MS, i)
    assert [m.item for m in matcher.ready()] == [0, 1, 2, 3, 4, 5]  # more than 0.3 s behind the newest frame
    assert len(matcher) == 4


def _bag(path: Path, frames: list[np.ndarray], stamps: list[int], Ks: list[np.ndarray] | None = None) -> Path:
    msgs = []
    for i, (frame, stamp) in enumerate(zip(frames, stamps)):
        msgs += [bf.compressed("/cam/image_raw/compressed", frame, stamp),
                 bf.camera_info("/cam/camera_info", stamp, W, H, K if Ks is None else Ks[i])]
    return bf.write_bag(path, msgs, "sqlite3")


def test_static_stretch_dropped_gap_splits_short_tail_dropped(tmp_path):
    frames = bf.textured_frames(18, W, H, static={5, 6, 7, 8})
    stamps = [T0 + i * DT for i in range(12)]             # sequence 0: frames 0-11, 5-8 static
    stamps += [T0 + 2 * 10**9 + i * DT for i in range(4)]  # 0.9 s after frame 11: sequence 1, frames 12-15
    stamps += [T0 + 4 * 10**9 + i * DT for i in range(2)]  # another gap: only 2 frames, too short
    bag = _bag(tmp_path / "walk", frames, stamps)
    summary = convert_bag(bag, tmp_path / "out", ConvertOptions(max_gap=0.5, min_frames=3))
    assert summary.sequences_written == ["walk_000", "walk_001"]
    assert summary.dropped == {"static (motion < 1 grey levels)": 4, "sequence shorter than 3 keyframes": 2}
    first, second = Sequence(tmp_path / "out" / "walk_000"), Sequence(tmp_path / "out" / "walk_001")
    assert first.stamps_ns.tolist() == [stamps[i] for i in (0, 1, 2, 3, 4, 9, 10, 11)]
    assert second.stamps_ns.tolist() == stamps[12:16]
    np.testing.assert_array_equal(first.load_left(5), frames[9])
    assert not (tmp_path / "out" / "walk_002").exists()


def test_calibration_change_starts_a_new_sequence(tmp_path):
    frames = bf.textured_frames(6, W, H)
    K2 = K.copy()
    K2[0, 0] = K2[1, 1] = 52.0
    bag = _bag(tmp_path / "recal", frames, [T0 + i * DT for i in range(6)], [K] * 3 + [K2] * 3)
    summary = convert_bag(bag, tmp_path / "out")
    assert summary.sequences_written == ["recal_000", "recal_001"]
    np.testing.assert_array_equal(Sequence(tmp_path / "out" / "recal_000").camera.K, K)
    np.testing.assert_array_equal(Sequence(tmp_path / "out" / "recal_001").camera.K, K2)
