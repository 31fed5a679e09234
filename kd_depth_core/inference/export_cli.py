"""`kd-depth export --model M.safetensors --format onnx|torchscript --out F`: export and verify.

The export holds normalisation, the network and disparity -> depth (see
``kd_depth_core/inference/export.py``): input RGB float32 in [0, 1] (B,3,H,W), outputs ``depth``
(and ``uncertainty``) in metres. After writing, the export is run next to eager PyTorch on a
random batch of 2 and the largest absolute and relative differences are printed; the command
fails (exit 1) when the relative difference exceeds ``--tolerance``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("--model", required=True, help="released model (.safetensors)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"), dest="fmt",
                        help="onnx (ONNX Runtime and other ONNX runtimes) or torchscript (libtorch); --out must end in .onnx or "
                             ".torchscript")
    parser.add_argument("--out", required=True, help="output file (.onnx or .torchscript)")
    parser.add_argument("--height", type=int, help="input height in pixels (default: the model's)")
    parser.add_argument("--width", type=int, help="input width in pixels (default: the model's)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted relative difference to eager PyTorch (default 1e-4)")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with eager PyTorch")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    from kd_depth_core.inference.export import export_model, metadata_at_size, verify_export
    from kd_depth_core.models.io import load_model

    expected_suffix = ".onnx" if args.fmt == "onnx" else ".torchscript"
    if not args.out.endswith(expected_suffix):
        print(f"kd-depth export: --out {args.out}: a {args.fmt} export must be named *{expected_suffix}",
              file=sys.stderr)
        return 2
    if Path(args.out).exists() and not args.force:
        print(f"kd-depth export: --out {args.out} already exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        model, metadata = load_model(args.model, device="cpu")
    except (ValueError, FileNotFoundError) as error:
        print(f"kd-depth export: {error}", file=sys.stderr)
        return 2
    try:
        path = export_model(model, metadata, args.out, args.fmt, args.height, args.width)
    except (ValueError, RuntimeError) as error:  # e.g. a size too small for the network
        size = f"{args.height or metadata.input_height}x{args.width or metadata.input_width}"
        print(f"kd-depth export: export failed at {size} (HxW): {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    exported = metadata_at_size(metadata, args.height, args.width)
    print(f"wrote {path}: {exported.describe()}")
    if args.no_verify:
        return 0
    check = verify_export(path, model, metadata)
    status = "OK" if check.passed(args.tolerance) else "FAILED"
    print(f"verify vs eager (batch {check.batch}): max abs error {check.max_abs_error:.3g} m, "
          f"max rel error {check.max_rel_error:.3g} (tolerance {args.tolerance:g}) {status}")
    return 0 if status == "OK" else 1
