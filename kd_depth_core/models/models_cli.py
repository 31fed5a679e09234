"""`kd-depth models`: list the registered models with family, parameters, GFLOPs and description."""
from __future__ import annotations

import argparse
import sys

from kd_depth_core.models import create_model, list_families, list_models, model_info
from kd_depth_core.models.flops import count_parameters, model_flops


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=list_families(), help="only models of this family")
    parser.add_argument("--height", type=int, default=192, help="input height for the FLOP count (pixels)")
    parser.add_argument("--width", type=int, default=640, help="input width for the FLOP count (pixels)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (it runs one forward each)")


def run(args: argparse.Namespace) -> int:
    if args.height < 1 or args.width < 1:
        print(f"kd-depth models: --height/--width: expected positive pixels, got {args.height}x{args.width}",
              file=sys.stderr)
        return 2
    print(f"{'model':<28}{'family':<16}{'params (M)':>11}{'GFLOPs':>9}  {'size (WxH)':<11} description")
    failures: list[str] = []
    snapped = False
    for name in list_models(args.family):
        info = model_info(name)
        model = create_model(name)
        params = count_parameters(model) / 1e6
        if args.no_flops:
            gflops, size_text = "-", "-"
        else:
            try:
                flops, (height, width) = model_flops(model, args.height, args.width)
            except (RuntimeError, ValueError, TypeError) as error:  # inputs this tool cannot guess
                gflops, size_text = "-", "-"
                failures.append(f"{name}: FLOPs not counted ({type(error).__name__}: {str(error).splitlines()[0]})")
            else:
                gflops = f"{flops / 1e9:.2f}"
                star = (height, width) != (args.height, args.width)
                snapped |= star
                size_text = f"{width}x{height}" + ("*" if star else "")
        print(f"{name:<28}{info['family']:<16}{params:>11.2f}{gflops:>9}  {size_text:<11} {info['description']}")
    if not args.no_flops:
        print(f"\nGFLOPs at batch 1, one multiply-add = 2 FLOPs, counted by tracing a forward at "
              f"{args.width}x{args.height}" + ("; * = snapped to the model's size multiple (model.size_multiple)."
                                             if snapped else "."))
    for line in failures:
        print(line)
    return 0
