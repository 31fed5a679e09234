"""Bad bags and bad requests give a named error, say what was expected, and leave no partial output."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import bag_fixtures as bf  # noqa: E402

from kd_depth_core.data.sequence import Sequence  # noqa: E402
from kd_depth_ros import bag_converter as bc  # noqa: E402
from kd_depth_ros.bag_converter import ConvertOptions, convert_bag, convert_bags  # noqa: E402

W, H = 64, 48
K = bf.intrinsics(W, H)
T0, DT = 2_000_000_000, 100_000_000


def mono_bag(path: Path, storage: str = "sqlite3", frames: int = 6, encoding: str = "rgb8",
             info: bool = True, extra: list | None = None) -> Path:
    msgs = []
    for i, frame in enumerate(bf.textured_frames(frames, W, H)):
        if encoding == "32FC1":  # a depth image: not something a camera sequence can hold
            depth = np.full((H, W), 3.0, np.float32)
            msgs.append(bf.image("/cam/image_raw", depth.view(np.uint8).reshape(H, W * 4), T0 + i * DT,
                                 encoding="32FC1"))
            msgs[-1].fields.update(width=W, step=W * 4)
        else:
            msgs.append(bf.image("/cam/image_raw", frame, T0 + i * DT, encoding=encoding))
        if info:
            msgs.append(bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K))
    return bf.write_bag(path, msgs + (extra or []), storage)


def assert_no_output(out: Path) -> None:
    """Nothing was left behind: no sequence, no hidden temporary folder."""
    assert not out.exists() or list(out.iterdir()) == []


def _data_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_bag_converts_what_is_readable_and_says_what_was_lost(tmp_path, storage, capsys):
    """A recording cut at 2/3 of its file (the recorder was killed): the complete messages convert, byte for byte
    as from the whole bag, and the summary says how many were recovered and lost, where, and how to repair."""
    whole = mono_bag(tmp_path / "whole", storage, frames=30)
    convert_bag(whole, tmp_path / "ref", ConvertOptions(min_motion=0))
    bag = mono_bag(tmp_path / "cut", storage, frames=30)
    data = _data_file(bag)
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size * 2 // 3)
    summary = convert_bag(bag, tmp_path / "out", ConvertOptions(min_motion=0))
    recovered = int(re.search(r"recovered (\d+) complete messages, (\d+) of 60 lost", summary.truncated).group(1))
    lost = 60 - recovered
    assert f"{lost} of 60 lost" in summary.truncated and 10 <= recovered < 60
    assert "mcap recover" in summary.truncated and "sqlite3" in summary.truncated
    assert (data.name in summary.truncated) and summary.warnings[0] == summary.truncated
    assert summary.sequences_written == ["cut_000"] and 5 <= summary.frames_written <= recovered // 2 + 1
    seq, ref = Sequence(tmp_path / "out" / "cut_000"), Sequence(tmp_path / "ref" / "whole_000")
    assert len(seq) == summary.frames_written and len(ref) == 30
    for i in range(len(seq)):  # the same frames as the whole bag gave, in order
        assert seq.stamps_ns[i] == ref.stamps_ns[i]
        np.testing.assert_array_equal(seq.load_left(i), ref.load_left(i))
    assert bc.main([str(bag), "--out", str(tmp_path / "cli"), "--quiet", "--min-motion", "0"]) == 0
    assert "WARNING: truncated bag" in capsys.readouterr().out


def test_damage_midway_keeps_what_was_read_before_it(tmp_path):
    """The bag opens (its index is whole) but a record in the third 1 MiB chunk is damaged: the frames before it
    are converted and the summary says how many messages were read and lost."""
    import struct

    frames = bf.textured_frames(40, 200, 150)
    msgs = []
    for i, frame in enumerate(frames):
        msgs += [bf.image("/cam/image_raw", frame, T0 + i * DT),
                 bf.camera_info("/cam/camera_info", T0 + i * DT, 200, 150, bf.intrinsics(200, 150))]
    bag = bf.write_bag(tmp_path / "hurt", msgs, "mcap")
    data_file = _data_file(bag)
    data, pos, chunks = bytearray(data_file.read_bytes()), 8, []
    while data[pos] != 0x0F:  # top-level records up to DataEnd; remember where each chunk's first record starts
        length = struct.unpack_from("<Q", data, pos + 1)[0]
        if data[pos] == 0x06:
            chunks.append(pos + 9 + 28 + 4 + struct.unpack_from("<I", data, pos + 9 + 28)[0] + 8)
        pos += 9 + length
    assert len(chunks) >= 3
    struct.pack_into("<Q", data, chunks[2] + 1, 2**40)  # that record now claims a terabyte
    data_file.write_bytes(bytes(data))
    summary = convert_bag(bag, tmp_path / "out", ConvertOptions(min_motion=0))
    read = int(re.search(r"reading stopped after (\d+) of 80 messages", summary.truncated).group(1))
    assert f"{80 - read} messages after it are lost" in summary.truncated and "mcap recover" in summary.truncated
    assert 0 < summary.frames_written == summary.frames_read < 40
    seq = Sequence(tmp_path / "out" / "hurt_000")
    np.testing.assert_array_equal(seq.load_left(len(seq) - 1), frames[len(seq) - 1])


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_with_nothing_readable_is_one_clear_error(tmp_path, storage):
    bag = mono_bag(tmp_path / "cut", storage)
    data = _data_file(bag)
    with open(data, "r+b") as handle:
        handle.truncate(40)
    with pytest.raises(bc.BagReadError, match=r"cut: cannot open the bag .* no complete message could be recovered "
                                              r"from cut\.(db3|mcap).*mcap recover") as caught:
        convert_bag(bag, tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert_no_output(tmp_path / "out")


def test_error_midway_discards_the_sequence_in_progress(tmp_path):
    """Frames 0-3 are written into a temporary folder; frame 4 is a depth image: the error removes it all."""
    frames = bf.textured_frames(6, W, H)
    msgs = [bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K) for i in range(6)]
    msgs += [bf.image("/cam/image_raw", frames[i], T0 + i * DT) for i in range(4)]
    depth = bf.image("/cam/image_raw", np.zeros((H, W * 4), np.uint8), T0 + 4 * DT, encoding="32FC1")
    depth.fields.update(width=W)
    bag = bf.write_bag(tmp_path / "mixed", msgs + [depth], "mcap")
    with pytest.raises(bc.UnsupportedEncodingError, match=r"mixed: /cam/image_raw at stamp 2400000000 ns.*'32FC1'"):
        convert_bag(bag, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_missing_bag_and_not_a_bag(tmp_path):
    with pytest.raises(bc.BagNotFoundError, match="nowhere"):
        convert_bags([tmp_path / "nowhere"], tmp_path / "out")
    (tmp_path / "folder").mkdir()
    with pytest.raises(bc.BagReadError, match="metadata.yaml"):
        convert_bag(tmp_path / "folder", tmp_path / "out")
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap file at all")
    with pytest.raises(bc.BagReadError, match="junk.mcap"):
        convert_bag(junk, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_bag_without_image_topics_lists_what_it_has(tmp_path):
    bag = bf.write_bag(tmp_path / "infos", [bf.camera_info("/cam/camera_info", T0, W, H, K)], "sqlite3")
    with pytest.raises(bc.TopicNotFoundError, match=r"no image topics.*/cam/camera_info \(sensor_msgs/msg/CameraInfo\)"):
        convert_bag(bag, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_wrong_topic_name_lists_the_image_topics(tmp_path):
    bag = mono_bag(tmp_path / "cam")
    with pytest.raises(bc.TopicNotFoundError, match=r"'/camera/image'.*image topics present: /cam/image_raw "
                                                    r"\(sensor_msgs/msg/Image, 6 msgs\)"):
        convert_bag(bag, tmp_path / "out", ConvertOptions(image_topic="/camera/image"))
    with pytest.raises(bc.TopicNotFoundError, match=r"'/cam/camera_info'.*is sensor_msgs/msg/CameraInfo"):
        convert_bag(bag, tmp_path / "out", ConvertOptions(image_topic="/cam/camera_info"))
    assert_no_output(tmp_path / "out")


def test_missing_camera_info_is_named(tmp_path):
    bag = mono_bag(tmp_path / "nocal", info=False)
    with pytest.raises(bc.CameraInfoNotFoundError, match=r"no camera_info for /cam/image_raw.*'/cam/camera_info' "
                                                         r"not found.*--camera-info-topic"):
        convert_bag(bag, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_unsupported_encoding_is_named(tmp_path):
    bag = mono_bag(tmp_path / "depthcam", encoding="32FC1")
    with pytest.raises(bc.UnsupportedEncodingError, match=r"'32FC1'.*expected one of.*rgb8"):
        convert_bag(bag, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_lidar_without_tf_static_is_named(tmp_path):
    bag = mono_bag(tmp_path / "notf", extra=[bf.pointcloud("/points", np.ones((3, 3)), T0)])
    with pytest.raises(bc.TransformNotFoundError, match="/tf_static"):
        convert_bag(bag, tmp_path / "out", ConvertOptions(lidar_topic="/points"))
    tf = [bf.tf_static(0, [("base_link", "camera_optical_frame", (0, 0, 0), (0, 0, 0, 1))])]
    bag = mono_bag(tmp_path / "wrongtf", extra=[bf.pointcloud("/points", np.ones((3, 3)), T0)] + tf)
    with pytest.raises(bc.TransformNotFoundError, match=r"\['lidar'\] not found.*base_link, camera_optical_frame"):
        convert_bag(bag, tmp_path / "out", ConvertOptions(lidar_topic="/points"))
    assert_no_output(tmp_path / "out")


def test_existing_output_is_never_overwritten_without_force(tmp_path):
    bag = mono_bag(tmp_path / "cam")
    out = tmp_path / "out"
    (out / "cam_000").mkdir(parents=True)
    (out / "cam_000" / "notes.txt").write_text("mine")
    with pytest.raises(bc.OutputExistsError, match=r"cam_000: output exists.*--force"):
        convert_bag(bag, out)
    assert (out / "cam_000" / "notes.txt").read_text() == "mine"
    convert_bag(bag, out, ConvertOptions(force=True))
    assert len(Sequence(out / "cam_000")) == 6


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    bag = mono_bag(tmp_path / "cam")
    code = bc.main([str(bag), "--out", str(tmp_path / "out"), "--image-topic", "/nope", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2  # nothing written
    assert "no sequence was written" in err and not (tmp_path / "out").exists()
    assert "TopicNotFoundError" in err and "/cam/image_raw" in err
    assert "no image messages were read" not in err  # the bag's own error is the reason; no second, wrong one
    assert bc.main([str(bag), "--out", str(tmp_path / "out"), "--max-gap", "0"]) == 2
    assert "max_gap: expected > 0 s" in capsys.readouterr().err
    assert bc.main([str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 1
    assert "bag not found" in capsys.readouterr().err
    assert_no_output(tmp_path / "out")


# ---------------------------------------------------------------- the command tells the truth (issue 19)
def _cli(argv: list[str]) -> tuple[int, str, str]:
    import subprocess

    exe = Path(sys.executable).with_name("kd-depth")
    done = subprocess.run([str(exe), "convert-bag", "-q", *argv], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_changing_camera_info_is_named_exit_2_and_no_out_left(tmp_path):
    msgs = []
    for i, frame in enumerate(bf.textured_frames(6, W, H)):
        k = K.copy()
        k[0, 2] += i * 0.5  # cx moves every frame
        msgs += [bf.image("/cam/image_raw", frame, T0 + i * DT), bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, k)]
    bag = bf.write_bag(tmp_path / "moving", msgs)
    out = tmp_path / "out"
    rc, stdout, stderr = _cli([str(bag), "--out", str(out)])
    assert rc == 2
    assert "camera_info changed" in stderr and "K differs at frame 1 (cx" in stderr and "one camera" in stderr
    assert "next:" not in stdout + stderr and "Traceback" not in stderr
    assert not out.exists()


def test_all_static_frames_exit_2_with_reason(tmp_path):
    frame = bf.textured_frames(1, W, H)[0]
    msgs = []
    for i in range(6):
        msgs += [bf.image("/cam/image_raw", frame, T0 + i * DT), bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K)]
    bag = bf.write_bag(tmp_path / "static", msgs)
    out = tmp_path / "out"
    rc, stdout, stderr = _cli([str(bag), "--out", str(out)])
    assert rc == 2 and "no sequence was written" in stderr and "static" in stderr
    assert "next:" not in stdout and not out.exists()


def test_dropped_frames_are_described_and_a_damaged_frame_prints_no_codec_noise(tmp_path, capfd):
    msgs = []
    for i, frame in enumerate(bf.textured_frames(6, W, H)):
        image = bf.compressed("/cam/image_raw/compressed", frame, T0 + i * DT)
        if i == 2:
            image.fields["data"] = image.fields["data"][:40]  # cut short: libpng / OpenCV complain
        msgs += [image, bf.camera_info("/cam/camera_info", T0 + i * DT, W, H, K)]
    bag = bf.write_bag(tmp_path / "damaged", msgs, "mcap")
    for extra in ([], ["--width", "32"]):  # stored as recorded, and decoded for a resize
        out = tmp_path / f"out{len(extra)}"
        assert bc.main([str(bag), "--out", str(out), "--quiet", "--min-motion", "0", *extra]) == 0
        stdout, stderr = capfd.readouterr()
        line = next(text for text in stdout.splitlines() if "sequence(s) written" in text)
        assert re.search(rf"dropped: undecodable image data 1 \(first: /cam/image_raw/compressed at stamp "
                         rf"{T0 + 2 * DT} ns: data: .*\(.*PNG.*\)\)", line), line
        assert stderr == "", stderr


def test_appending_a_bag_updates_train_split_and_rerun_without_topic_is_accepted(tmp_path):
    out = tmp_path / "out"
    first = mono_bag(tmp_path / "first")
    rc, _, stderr = _cli([str(first), "--out", str(out), "--image-topic", "/cam/image_raw"])
    assert rc == 0, stderr
    splits_before = (out / "splits" / "train.txt").read_text()
    rc, _, stderr = _cli([str(first), "--out", str(out)])  # same topic, resolved by default: a resume
    assert rc == 0, stderr
    second = mono_bag(tmp_path / "second")
    rc, stdout, stderr = _cli([str(second), "--out", str(out)])
    assert rc == 0, stderr
    train = (out / "splits" / "train.txt").read_text().split()
    assert splits_before.split() == train[: len(splits_before.split())]
    assert any(name.startswith("second_") for name in train)
    assert "train.txt" in stdout
    # a mono bag: the suggested teacher command must not ask for right images
    assert "data.root=" in stdout and "data.stereo=false task.kwargs.mode=mono task.kwargs.proxy_weight=0" in stdout


def test_convert_bag_out_is_a_file_or_unwritable(tmp_path):
    bag = mono_bag(tmp_path / "b")
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, stderr = _cli([str(bag), "--out", str(afile)])
    assert rc == 2 and "is a file" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_summary_json_that_cannot_be_written_is_refused_before_converting(tmp_path, capsys):
    """--summary-json is checked first (the ROS executable `convert_bag` is bc.main): one line, exit 2, nothing
    converted; the executable takes --debug like `kd-depth`."""
    bag = mono_bag(tmp_path / "b")
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = tmp_path / "out"
    for target, why in ((afile / "summary.json", "is a file, not a folder"), (tmp_path, "is a folder; name a file")):
        assert bc.main([str(bag), "--out", str(out), "--quiet", "--debug", "--summary-json", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--summary-json {target}: " in err and why in err, err
        assert not out.exists()
    assert bc.main([str(bag), "--out", str(out), "--quiet", "--summary-json", str(tmp_path / "s" / "s.json")]) == 0
    assert (tmp_path / "s" / "s.json").is_file()


def test_validate_warns_about_sequences_in_no_split_and_says_how_to_add_them(tmp_path, capsys):
    import shutil

    from kd_depth_core.cli import main as cli_main
    from kd_depth_core.data.sequence import append_to_split

    out = tmp_path / "out"
    convert_bag(mono_bag(tmp_path / "first"), out)
    assert bc.main([str(mono_bag(tmp_path / "second")), "--out", str(out), "-q"]) == 0  # writes the splits
    shutil.copytree(out / "first_000", out / "copied_000")  # added by hand: in no split
    capsys.readouterr()
    assert cli_main(["validate", str(out), "--quick"]) == 0
    text = capsys.readouterr().out
    [warning] = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert "1 sequence(s)" in warning and "copied_000" in warning and "first_000" not in warning
    assert str(out / "splits" / "train.txt") in warning and "convert-bag" in warning and "--split" in warning
    assert append_to_split(out) == ["copied_000"]
    assert cli_main(["validate", str(out), "--quick"]) == 0
    assert "WARNING" not in capsys.readouterr().out
