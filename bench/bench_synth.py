"""Benchmark: time to generate the default synthetic demo dataset (goal: >= 2,000 stereo frames at
320x96 with depth and semantics in <= 60 s on a 2-core machine).

    python bench/bench_synth.py                       # 20 street sequences x 100 frames, 2 workers
    python bench/bench_synth.py --sequences 4 --frames 50 --workers 1 --render-only

Prints wall time, frames/s and the machine's load (other processes on a shared machine slow this
down; the load average is printed so numbers can be judged).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset, sequence_rng, tune_allocator  # noqa: E402


def _render_only(spec: SynthSpec) -> tuple[float, float]:
    """Time scene building and rendering alone (no files) in this process: (setup s, render ms/frame)."""
    import cv2

    from kd_depth_core.data.synthetic.presets import build_scene
    from kd_depth_core.data.synthetic.render import Renderer, kitti_like_K, stereo_right_pose

    cv2.setNumThreads(1)
    K = kitti_like_K(spec.width, spec.height)
    setup = render = 0.0
    frames = 0
    for index in range(spec.sequences):
        t0 = time.perf_counter()
        scene = build_scene(spec.preset, sequence_rng(spec.seed, spec.preset, index), spec.frames, spec.baseline)
        renderer = Renderer(scene.world)
        t1 = time.perf_counter()
        for i, pose in enumerate(scene.poses):
            renderer.render([pose, stereo_right_pose(pose, spec.stereo_baseline)], K, spec.width, spec.height,
                            exposure=scene.exposure[i])
        setup += t1 - t0
        render += time.perf_counter() - t1
        frames += len(scene.poses)
    return setup, render / frames * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="street", choices=["street", "indoor"])
    parser.add_argument("--sequences", type=int, default=20)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", default="320x96")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render-only", action="store_true", help="time rendering in this process, write nothing")
    parser.add_argument("--out", default=None, help="keep the dataset here (default: a temporary folder)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    spec = SynthSpec(args.preset, args.sequences, args.frames, width, height, args.seed).check()
    load_before = os.getloadavg()
    print(f"date {datetime.now(UTC).isoformat(timespec='seconds')}  machine {platform.node()} "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print(f"load average before (1/5/15 min): {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}")
    if args.render_only:
        tune_allocator()
        cpu0 = time.process_time()
        setup, per_frame = _render_only(spec)
        print(f"render only, 1 process: scene+textures {setup / spec.sequences:.2f} s/sequence, "
              f"{per_frame:.1f} ms per stereo frame (wall), CPU {time.process_time() - cpu0:.1f} s")
        return 0
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_synth_")) / "synth"
    try:
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        summary = generate_dataset(out, spec, workers=args.workers, overwrite=True, progress=False)
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(usage0, usage1))
        load_after = os.getloadavg()
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        print(f"generated {summary.frames} stereo frames ({spec.sequences} x {spec.frames}, {width}x{height}, "
              f"{spec.preset}, RGB L+R + depth + semantics + poses) with {args.workers} workers: "
              f"{summary.seconds:.1f} s wall, {summary.frames / summary.seconds:.1f} frames/s, {size_mb:.0f} MB")
        print(f"load average after (1/5/15 min): {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}")
        print(f"CPU time of all processes: {cpu:.1f} s ({cpu / summary.frames * 1e3:.1f} ms per stereo frame); "
              f"on {args.workers} otherwise idle cores that is about {cpu / args.workers:.0f} s wall "
              f"(CPU time is itself inflated when the cores are shared)")
        verdict = "MET" if summary.frames >= 2000 and summary.seconds <= 60 else "NOT MET"
        print(f"goal (>= 2000 frames in <= 60 s): {verdict}")
    finally:
        if not args.out:
            shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
