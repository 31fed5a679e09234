"""`kd-depth evaluate`: score a released model on a benchmark or on our own sequences.

Prints the protocol's standard table; with ``--out`` writes results.json, results.md, PNG panels
(RGB | GT | prediction | error | uncertainty) and, for models with uncertainty, sparsification
and calibration plots.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from kd_depth_core.data.benchmarks import BENCHMARK_PROTOCOLS, BenchmarkReader, open_benchmark
from kd_depth_core.eval.protocols import Protocol, get_protocol


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `evaluate` and `compare`: the data, the protocol and its overrides."""
    parser.add_argument("--data", type=Path, help="dataset root (KITTI raw, NYUv2, Make3D, DrivingStereo or a "
                                                  "folder of kd-depth sequences)")
    parser.add_argument("--protocol", choices=BENCHMARK_PROTOCOLS, help="evaluation protocol")
    parser.add_argument("--split", default=None, help="split name: NYU/sequence 'test' (default); DrivingStereo "
                                                      "'test', 'train', 'sunny', 'cloudy', 'foggy', 'rainy'")
    parser.add_argument("--split-file", type=Path, default=None,
                        help="KITTI split list (Monodepth2's splits/eigen/test_files.txt or "
                             "splits/eigen_benchmark/test_files.txt) or a Make3D image list")
    parser.add_argument("--gt-root", type=Path, default=None,
                        help="kitti_eigen_benchmark: root of the extracted data_depth_annotated archive")
    parser.add_argument("--median-scaling", action=argparse.BooleanOptionalAction, default=None,
                        help="per-image median scaling (default: on for relative-depth models as the protocol "
                             "says, off for metric models)")
    parser.add_argument("--min-depth", type=float, default=None, help="override the protocol's minimum depth (m)")
    parser.add_argument("--max-depth", type=float, default=None,
                        help="override the protocol's depth cap (m); 'sequence' default 80")
    parser.add_argument("--stride", type=int, default=1, help="sequence protocol: every n-th frame")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples (quick check; "
                                                                "not the official numbers)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results and figures")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")
    parser.add_argument("--scale-mode", default="auto",
                        help="DepthPredictor scale mode: auto, none, focal, fixed, ground_plane (inference/scale.py)")
    parser.add_argument("--sgbm-min-depth", type=float, default=2.0,
                        help="--model sgbm: nearest depth searched (m); sets the number of disparities")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path,
                        help="released model file (kd-depth export), or 'sgbm' for the classical stereo baseline "
                             "(OpenCV SGBM, no learning; needs right images)")
    parser.add_argument("--model-card", default=None,
                        help="model card (YAML) of a foreign ONNX model (default: <stem>.card.yaml or <stem>.yaml "
                             "beside it); relative foreign models are scored with per-image median scaling")
    parser.add_argument("--label", default=None, help="name of the model in tables (default: file stem)")
    add_data_arguments(parser)
    parser.add_argument("--panels", type=int, default=4, help="number of PNG panels written with --out")


def build_protocol(args: argparse.Namespace) -> Protocol:
    """The protocol named by ``--protocol`` with the command-line overrides."""
    if args.protocol is None:
        raise ValueError(f"--protocol is required; choose from {', '.join(BENCHMARK_PROTOCOLS)}")
    overrides: dict[str, Any] = {}
    if args.median_scaling is not None:
        overrides["median_scaling"] = args.median_scaling
    if args.min_depth is not None:
        overrides["min_depth"] = args.min_depth
    if args.max_depth is not None:
        overrides["max_depth"] = args.max_depth  # the ground-truth cap follows unless the protocol has none
    return get_protocol(args.protocol, **overrides)


def open_samples(args: argparse.Namespace, right: bool = False) -> BenchmarkReader:
    """The reader for ``--data``/``--protocol``; ``right``: with right images (stereo models)."""
    if args.data is None or args.protocol is None:
        raise ValueError("--data and --protocol are required to evaluate a model")
    return open_benchmark(args.protocol, args.data, split=args.split, split_file=args.split_file,
                          gt_root=args.gt_root, stride=args.stride, limit=args.limit, right=right)


def load_predictor(model_path: Path, args: argparse.Namespace):
    """The inference engine's DepthPredictor for ``model_path`` (imported lazily), giving depth at the
    network's resolution: ``evaluate`` resizes it to the ground truth as the protocol says (in disparity)."""
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"--model: {model_path} does not exist")
    from kd_depth_core.inference.predictor import DepthPredictor

    card = getattr(args, "model_card", None)
    if Path(model_path).suffix == ".onnx" and (card is not None or _is_foreign(model_path)):
        return load_foreign_predictor(model_path, card, args)
    return DepthPredictor(str(model_path), device=args.device, scale_mode=args.scale_mode, output="model")


def _is_foreign(model_path: Path) -> bool:
    from kd_depth_core.inference.foreign import is_foreign_onnx

    return is_foreign_onnx(model_path)


def load_foreign_predictor(model_path: Path, card: str | None, args: argparse.Namespace):
    """A foreign ONNX model (inference/foreign.py) at its own resolution. A relative one (depth up to scale) is
    run with a unit factor and scored with per-image median scaling, which the protocol then must keep on."""
    from kd_depth_core.inference.foreign import load_card
    from kd_depth_core.inference.predictor import DepthPredictor

    relative = load_card(card, model_path).relative
    scale_mode, factor = args.scale_mode, None
    if relative:
        if args.median_scaling is False:
            raise ValueError(f"--no-median-scaling: {model_path} is a relative foreign model (depth up to scale); "
                             "it can only be scored with median scaling")
        scale_mode, factor = "fixed", 1.0
        print(f"note: {Path(model_path).name} is a relative foreign model: scored with per-image median scaling "
              "(not metric)")
    return DepthPredictor(str(model_path), device=args.device, scale_mode=scale_mode, scale_factor=factor,
                          output="model", model_card=card)


SGBM_LABEL = "OpenCV SGBM (no learning)"


def is_sgbm(model_path: Path) -> bool:
    """``--model sgbm``: the classical stereo baseline instead of a model file."""
    return str(model_path) == "sgbm" and not Path(model_path).is_file()


def default_label(model_path: Path) -> str:
    return SGBM_LABEL if is_sgbm(model_path) else Path(model_path).stem


def sgbm_predict_fn(args: argparse.Namespace):
    """SGBM + left-right check + row-wise hole filling as a metric stereo ``predict_fn``."""
    from kd_depth_core.classical.sgbm import SGBMPredictor, SGBMSettings

    predictor = SGBMPredictor(SGBMSettings(min_depth=args.sgbm_min_depth),
                              max_depth=args.max_depth if args.max_depth is not None else 80.0)
    print(predictor.describe(), file=sys.stderr)

    def predict_fn(image, K=None, right=None, baseline=None):
        if right is None or K is None or not baseline:
            raise ValueError("--model sgbm needs rectified right images, K and the stereo baseline: evaluate it "
                             "with --protocol sequence on sequences recorded with a right camera")
        return predictor.predict(image, right, K, baseline)

    return predict_fn


def load_predict_fn(model_path: Path, args: argparse.Namespace):
    """(``predict_fn(image, K=None)``, whether the model predicts metric depth); a stereo model's
    ``predict_fn`` also takes ``right`` (the right image); ``--model sgbm`` is the classical baseline."""
    if is_sgbm(model_path):
        return sgbm_predict_fn(args), True
    predictor = load_predictor(model_path, args)
    print(predictor.describe(), file=sys.stderr)
    metric = getattr(predictor.metadata, "scale_kind", "relative") == "metric"
    if getattr(predictor.metadata, "stereo", False):
        def predict_stereo_fn(image, K=None, right=None, baseline=None):
            if right is None:
                raise ValueError(f"--model {model_path} is a stereo model and these samples have no right image; "
                                 "evaluate it with --protocol sequence on sequences recorded with a right camera")
            return predictor.predict_stereo(image, right, K=K, baseline=baseline or None)  # 0 = unknown

        return predict_stereo_fn, metric

    def predict_fn(image, K=None):
        return predictor.predict(image, K=K)

    return predict_fn, metric


def protocol_for_model(args: argparse.Namespace, metric: bool) -> Protocol:
    """The protocol with overrides; without --[no-]median-scaling, metric models are not median-scaled."""
    protocol = build_protocol(args)
    if args.median_scaling is None and metric and protocol.median_scaling:
        print("note: metric model: median scaling off (pass --median-scaling to force it)", file=sys.stderr)
        protocol = protocol.replace(median_scaling=False)
    return protocol


def safe_name(text: str) -> str:
    """A file-name-safe version of a sample name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "image"


def write_figures(out_dir: Path, result) -> list[Path]:
    """Panels of the kept samples and, with uncertainty, sparsification/calibration plots."""
    from kd_depth_core.eval import plots

    paths = []
    for index, visual in enumerate(result.visuals):
        paths.append(plots.save_depth_panel(visual, out_dir / "panels" / f"{index:03d}_{safe_name(visual.name)}.png",
                                            title=f"{result.label} — {result.protocol.name}"))
    if result.uncertainty:
        summaries = {result.label: result.uncertainty}
        paths.append(plots.save_figure(plots.sparsification_figure(summaries), out_dir / "sparsification.png"))
        paths.append(plots.save_figure(plots.calibration_figure(summaries), out_dir / "calibration.png"))
    return paths


def run(args: argparse.Namespace) -> int:
    from kd_depth_core.eval.evaluate import accepts_keyword, evaluate
    from kd_depth_core.eval.report import console_report, write_results

    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():  # before the long run
        print(f"kd-depth evaluate: --out {args.out} is a file; name a folder for the results", file=sys.stderr)
        return 2
    try:
        build_protocol(args)  # option errors before the model loads
        samples = open_samples(args)  # data errors before the model loads
        predict_fn, metric = load_predict_fn(args.model, args)
        if accepts_keyword(predict_fn, "right"):  # a stereo model: the samples with their right images
            samples = open_samples(args, right=True)
        protocol = protocol_for_model(args, metric)
        label = args.label or default_label(args.model)
        result = evaluate(predict_fn, samples, protocol, label=label,
                          num_visuals=args.panels if args.out is not None else 0, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"kd-depth evaluate: {exc}", file=sys.stderr)
        return 2
    data = result.to_dict()
    data["model"] = str(args.model)
    data["data"] = str(args.data)
    print(console_report(data))
    if args.out is not None:
        written = list(write_results(args.out, data).values()) + write_figures(args.out, result)
        print(f"wrote {len(written)} files to {args.out}")
    return 0
