"""`kd-depth demo`: the whole pipeline on the built-in synthetic world (`make demo`)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    parser.add_argument("--fast", action="store_true", help="the small preset: the same stages in a few minutes")
    parser.add_argument("--preset", default=None, help="a preset of config/demo.yaml (overrides --fast)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--skip-ros", action="store_true", help="leave out the ROS 2 node stage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="folder with demo.yaml and train/*.yaml (default: the package's config/)")


def run(args: argparse.Namespace) -> int:
    from kd_depth_ros.demo.pipeline import run_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    preset = args.preset or ("fast" if args.fast else "full")
    report = run_demo(args.out, preset=preset, device=args.device, progress=not args.no_progress,
                      skip_ros=args.skip_ros, config_dir=args.config_dir)
    print(f"\nkd-depth demo finished. Report: {report.resolve()}")
    print("Open it in a Markdown viewer (figures sit beside it). A rerun reuses finished stages; "
          "delete the folder to start over.")
    return 0
