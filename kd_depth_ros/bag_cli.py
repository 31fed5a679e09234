"""`kd-depth convert-bag BAG... --out DIR` and the ``convert_bag`` executable: rosbag2 / ROS 1 bags -> training
sequences (the conversion itself is :mod:`kd_depth_ros.bag_converter`).

Exit status: 0 when every bag converted, 1 when some bag failed, 2 when no sequence is in ``--out`` afterwards
or ``--out`` / an option is unusable (one line naming it; no traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from kd_depth_ros.bag_converter import (
    CAMERA_INFO_POLICIES,
    IMAGE_FORMAT_CHOICES,
    RECTIFY_MODES,
    BagConversionError,
    ConvertOptions,
    convert_bags,
    why_nothing_written,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="rosbag2 folder (sqlite3 or mcap, split files included), .db3/.mcap file or ROS 1 .bag")
    parser.add_argument("--out", required=True, type=Path, help="dataset root: one sequence folder per segment")
    topics = parser.add_argument_group("topics")
    topics.add_argument("--image-topic", help="left/mono image topic (Image or CompressedImage); "
                                              "default: the only image topic")
    topics.add_argument("--right-topic", help="right image topic of a stereo pair")
    topics.add_argument("--camera-info-topic", help="default: camera_info beside the image topic")
    topics.add_argument("--right-camera-info-topic", help="default: camera_info beside the right topic")
    topics.add_argument("--lidar-topic", help="PointCloud2 to project into ground-truth depth (needs /tf_static)")
    sync = parser.add_argument_group("matching by header stamp")
    sync.add_argument("--camera-info-policy", choices=CAMERA_INFO_POLICIES, default="nearest",
                      help="nearest stamp, or the latest at or before the frame (default: %(default)s)")
    sync.add_argument("--stereo-tolerance", type=float, default=0.01, metavar="S",
                      help="max left/right stamp difference, seconds (default: %(default)s)")
    sync.add_argument("--lidar-tolerance", type=float, default=0.05, metavar="S",
                      help="max image/cloud stamp difference, seconds (default: %(default)s)")
    sync.add_argument("--max-wait", type=float, default=1.0, metavar="S",
                      help="how far the image stream may run ahead of a silent partner topic (default: %(default)s)")
    image = parser.add_argument_group("images")
    image.add_argument("--rectify", choices=RECTIFY_MODES, default="auto",
                       help="auto: remap raw images from K/D/R/P unless the topic is *rect* or the calibration is an "
                            "identity; remap: always; rectified: images are already rectified (K from P); raw: keep "
                            "images unrectified (K and D recorded) (default: %(default)s)")
    image.add_argument("--width", type=int, help="output width, pixels (intrinsics scaled; height kept in aspect "
                                                 "when not given)")
    image.add_argument("--height", type=int, help="output height, pixels")
    image.add_argument("--image-format", choices=IMAGE_FORMAT_CHOICES, default="auto",
                       help="auto: keep a compressed camera's own jpeg/png bytes when no remap or resize is due (no "
                            "second compression, fastest), png for raw images; png: lossless; jpg: quality 95 "
                            "(default: %(default)s)")
    select = parser.add_argument_group("frame selection")
    select.add_argument("--min-motion", type=float, default=1.0, metavar="GREY",
                        help="keep a frame when its downscaled grayscale differs from the last kept one by at least "
                             "this mean absolute difference, grey levels 0..255; 0 keeps all (default: %(default)s)")
    select.add_argument("--max-gap", type=float, default=0.5, metavar="S",
                        help="start a new sequence after a stamp gap longer than this, seconds (default: %(default)s)")
    select.add_argument("--min-frames", type=int, default=3,
                        help="drop sequences with fewer keyframes (default: %(default)s)")
    depth = parser.add_argument_group("lidar depth")
    depth.add_argument("--min-depth", type=float, default=0.1, help="metres (default: %(default)s)")
    depth.add_argument("--max-depth", type=float, default=250.0, help="metres (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--jobs", "-j", type=int, default=1, help="bags converted in parallel processes")
    run.add_argument("--force", action="store_true",
                     help="overwrite existing sequences of these bags (default: resume, skipping complete ones)")
    run.add_argument("--split", default="train",
                     help="when --out already has splits/, append the new sequences to this split "
                          "(default: %(default)s)")
    run.add_argument("--summary-json", type=Path, help="also write the per-bag summaries to this JSON file")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    fields = {f.name for f in dataclasses.fields(ConvertOptions)}
    return ConvertOptions(**{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> int:
    """Convert the bags; print one summary line per bag. 0 when every bag converted, 1 when some bag
    failed, 2 when no sequence is in ``--out`` afterwards (the reasons are printed, a new ``--out`` removed)."""
    from kd_depth_core.data.sequence import append_to_split, ensure_splits, list_sequences
    from kd_depth_core.utils.atomic import write_text_atomic

    out = Path(args.out)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"convert-bag: error: {exc}", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"convert-bag: error: --out {out} is a file; name a folder (the dataset root)", file=sys.stderr)
        return 2
    summary_problem = _unwritable_file(args.summary_json) if args.summary_json is not None else None
    if summary_problem:  # found now, not after the conversion
        print(f"convert-bag: error: --summary-json {args.summary_json}: {summary_problem}", file=sys.stderr)
        return 2
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".kd-depth-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        print(f"convert-bag: error: cannot write --out {out} ({exc.strerror or exc}); choose a folder you can "
              "write", file=sys.stderr)
        return 2
    try:
        summaries = convert_bags(args.bags, out, options, jobs=args.jobs, progress=not args.quiet)
    except BagConversionError as exc:
        _remove_if_empty(out, created)
        print(f"convert-bag: error: {exc}", file=sys.stderr)
        return 1
    print(f"converted into {out}:")
    for summary in summaries:
        print(f"  {summary.line()}", file=sys.stderr if summary.error else sys.stdout)
    if args.summary_json is not None:
        write_text_atomic(args.summary_json, json.dumps([dataclasses.asdict(s) for s in summaries], indent=2))
    if not list_sequences(out):
        _remove_if_empty(out, created)
        print("convert-bag: error: no sequence was written. Why:\n" + "\n".join(
            f"  {line}" for line in why_nothing_written(summaries)), file=sys.stderr)
        return 2
    splits = ensure_splits(out)
    if splits:
        print("wrote default splits: " + ", ".join(f"{k} ({len(v)} sequences)" for k, v in splits.items())
              + f" in {out / 'splits'} (edit them to choose your held-out sequences)")
    else:
        added = append_to_split(out, args.split)
        if added:
            print(f"added {len(added)} new sequence(s) to {out / 'splits' / (args.split + '.txt')}")
    if any(s.error for s in summaries):
        return 1
    mono = "" if options.right_topic else " data.stereo=false task.kwargs.mode=mono task.kwargs.proxy_weight=0"
    print(f"next: kd-depth validate {out}  then  kd-depth train --config config/train/teacher_ms_dpt.yaml "
          f"data.root={out}{mono}")
    return 0


def _unwritable_file(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (probed in its nearest existing folder), or None."""
    path = Path(path)
    if path.is_dir():
        return "is a folder; name a file"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder; choose another path"
    probe = folder / f".kd-depth-write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc}); choose a path you can write"
    return None


def _remove_if_empty(out: Path, created: bool) -> None:
    """Remove an --out this run created when nothing (but hidden partial folders) is left in it."""
    if created and out.is_dir() and not any(not p.name.startswith(".") for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def build_parser(prog: str = "convert_bag") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].replace("`", ""))
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``convert_bag`` ROS executable (same options as ``kd-depth convert-bag``, and its one error path: an
    ordinary mistake is one line and exit 2, ``--debug`` shows the traceback)."""
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; complete sequences are kept, the one in progress was discarded", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one error path of kd_depth_core.cli; unexpected errors re-raise
        from kd_depth_core.cli import explain_error

        message = explain_error(error)
        if message is None or args.debug:
            raise
        print(f"convert_bag: {message} (run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
