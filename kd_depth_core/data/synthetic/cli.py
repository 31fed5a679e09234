"""`kd-depth synth`: generate the procedural synthetic world as a dataset root of training sequences."""
from __future__ import annotations

import argparse
import os
import re
import sys

from kd_depth_core.data.synthetic.presets import DEFAULT_BASELINE, PRESETS


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (e.g. 320x96) -> (width, height)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels such as 320x96, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of metres, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of metres, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset root to create (sequence folders + splits/)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="street", help="scene kind (default: street)")
    parser.add_argument("--sequences", type=_positive_int, default=20, help="number of sequences/scenes (default 20)")
    parser.add_argument("--frames", type=_positive_int, default=100, help="frames per sequence (default 100)")
    parser.add_argument("--size", type=parse_size, default=(320, 96), metavar="WxH",
                        help="image size in pixels (default 320x96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files (default 0)")
    parser.add_argument("--baseline", type=_positive_float, default=None,
                        help="stereo baseline in metres (default: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_BASELINE.items()) + ")")
    parser.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1),
                        help="parallel processes (default: min(2, CPUs))")
    parser.add_argument("--force", action="store_true", help="replace --out if it already exists")


def run(args: argparse.Namespace) -> int:
    from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset, tune_allocator

    width, height = args.size
    spec = SynthSpec(preset=args.preset, sequences=args.sequences, frames=args.frames, width=width, height=height,
                     seed=args.seed, baseline=args.baseline)
    try:
        spec.check()
    except ValueError as exc:
        print(f"kd-depth synth: {exc}", file=sys.stderr)
        return 2
    if os.path.exists(args.out) and not args.force:
        print(f"kd-depth synth: error: --out {args.out} already exists; pass --force to replace it or choose "
              "another --out", file=sys.stderr)
        return 2
    tune_allocator()
    summary = generate_dataset(args.out, spec, workers=args.workers, overwrite=args.force, progress=True)
    rate = summary.frames / max(summary.seconds, 1e-9)
    print(f"wrote {len(summary.sequences)} {spec.preset} sequences x {spec.frames} stereo frames ({summary.frames} "
          f"frames, {width}x{height}, baseline {spec.stereo_baseline} m) to {summary.root} "
          f"in {summary.seconds:.1f} s ({rate:.0f} frames/s)")
    for name, names in summary.splits.items():
        print(f"  {name:<5} {len(names):3d} sequences: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
    print("each frame: left+right RGB, depth (metres, 0 = sky), semantics "
          "(class names in meta.yaml), pose T_world_camera, K")
    print("next:")
    print(f"  kd-depth validate {summary.root}        # check every file")
    print(f"  kd-depth train --config config/train/teacher_ms_dpt.yaml data.root={summary.root}")
    return 0
