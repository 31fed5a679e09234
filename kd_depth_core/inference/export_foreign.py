"""Export a kd-depth network as a *foreign* relative-disparity ONNX file with its model card.

This makes a stand-in for a foundation model (e.g. a big teacher trained on the synthetic world's exact
depth, config/train/teacher_supervised.yaml) with the contract public Depth Anything exports have, so the
"bring your own teacher" path (``distill_foundation``, ``DepthPredictor(..., model_card=...)``) can be run
and benchmarked without a download:

- input ``input_name`` (default ``image``): RGB scaled to ``value_range`` and normalised with ``mean``/``std``
  (default ImageNet), (B,3,H,W); fixed H×W (the model's size) or, with ``size_multiple``, dynamic H and W
  (the network then runs at its own size inside the graph and the output is resized back);
- output ``output_name`` (default ``disparity``): ``disparity_scale · (1 / depth) + disparity_shift``,
  (B,H,W) (or (B,1,H,W) with ``keep_channel``), no kd-depth metadata — relative disparity by contract.

    python -m kd_depth_core.inference.export_foreign runs/teacher/model.safetensors --out teacher.onnx
    # writes teacher.onnx and teacher.card.yaml (kind relative_disparity)
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.inference.foreign import card_from_dict
from kd_depth_core.models.io import ModelMetadata
from kd_depth_core.utils.atomic import write_bytes_atomic, write_text_atomic

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17


class ForeignDisparityModule(nn.Module):
    """Normalised image (B,3,H,W) -> ``scale / depth + shift`` (B,H,W) or (B,1,H,W); see the module docstring.

    ``network_size`` (H, W): resize the de-normalised image to this size before the network and the output
    back to the input's size (dynamic-size exports); None = the network runs at the input size.
    """

    def __init__(self, model: nn.Module, min_depth: float, max_depth: float, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 value_range: tuple[float, float] = (0.0, 1.0), disparity_scale: float = 1.0,
                 disparity_shift: float = 0.0, network_size: tuple[int, int] | None = None,
                 keep_channel: bool = False) -> None:
        super().__init__()
        self.model = model
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.mean_values, self.std_values = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.low, self.span = float(value_range[0]), float(value_range[1] - value_range[0])
        self.scale, self.shift = float(disparity_scale), float(disparity_shift)
        self.network_size = None if network_size is None else (int(network_size[0]), int(network_size[1]))
        self.keep_channel = bool(keep_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = ((x * self.std + self.mean) - self.low) / self.span  # back to RGB in [0, 1]
        if self.network_size is not None:
            rgb = F.interpolate(rgb, size=self.network_size, mode="bilinear", align_corners=False)
        disp = self.model(rgb)["disp"][0].float()
        inverse_depth, _ = geometry.disp_to_depth(disp, self.min_depth, self.max_depth)  # 1/m
        out = self.scale * inverse_depth + self.shift
        if self.network_size is not None:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out if self.keep_channel else out[:, 0]


def foreign_onnx_bytes(module: ForeignDisparityModule, size: tuple[int, int], input_name: str = "image",
                       output_name: str = "disparity", dynamic_size: bool = False) -> bytes:
    """ONNX bytes of ``module`` traced at ``size`` (H, W), batch dynamic (and H, W with ``dynamic_size``)."""
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    out_axes = {0: "batch", **({1: "height", 2: "width"} if not module.keep_channel else {2: "height", 3: "width"})} \
        if dynamic_size else {0: "batch"}
    example = torch.rand(1, 3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch's TorchScript-exporter deprecation notices
        torch.onnx.export(module.eval(), (example,), buffer, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: axes, output_name: out_axes}, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = "relative disparity (foreign-model contract; see its model card)"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def card_for(module: ForeignDisparityModule, size_multiple: int | None = None, licence: str = "",
             provenance: str = "", default_size: tuple[int, int] | None = None) -> dict:
    """The model card (plain data) describing an export of ``module``: only what the file cannot say."""
    card = {"kind": "relative_disparity",
            "input": {"layout": "NCHW", "channel_order": "RGB", "value_range": [module.low, module.low + module.span],
                      "mean": list(module.mean_values), "std": list(module.std_values)},
            "output": {"valid_range": [0.0, None]},
            "licence": licence, "provenance": provenance}
    if size_multiple:
        card["input"]["size_multiple"] = int(size_multiple)
        if default_size is not None:
            card["input"]["default_size"] = [int(default_size[0]), int(default_size[1])]
    return card


def export_foreign(model: nn.Module, metadata: ModelMetadata, path: str | os.PathLike, *,
                   input_name: str = "image", output_name: str = "disparity", size: tuple[int, int] | None = None,
                   size_multiple: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   value_range: tuple[float, float] = (0.0, 1.0), disparity_scale: float = 1.0,
                   disparity_shift: float = 0.0, keep_channel: bool = False, provenance: str = "") -> tuple[Path, Path]:
    """Write ``path`` (.onnx) and its card ``<stem>.card.yaml`` beside it (both atomically); returns both paths.

    ``size``: the traced (H, W) (default: the metadata's input size). ``size_multiple``: export dynamic H and
    W that must be multiples of it (the network runs at the metadata's size inside); None = fixed size.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: expected an '.onnx' output path")
    if metadata.stereo:
        raise ValueError(f"{metadata.model_name}: a stereo model cannot be exported as a monocular foreign model")
    if not disparity_scale > 0 or disparity_shift < 0:
        raise ValueError(f"disparity_scale must be > 0 and disparity_shift >= 0, got {disparity_scale}, "
                         f"{disparity_shift}")
    network_size = (metadata.input_height, metadata.input_width)
    size = tuple(size) if size is not None else network_size
    if size_multiple and (size[0] % size_multiple or size[1] % size_multiple):
        raise ValueError(f"size {list(size)}: expected multiples of size_multiple={size_multiple}")
    module = ForeignDisparityModule(model.float().cpu().eval(), metadata.min_depth, metadata.max_depth, mean, std,
                                    value_range, disparity_scale, disparity_shift,
                                    network_size=network_size if (size_multiple or size != network_size) else None,
                                    keep_channel=keep_channel)
    blob = foreign_onnx_bytes(module, size, input_name, output_name, dynamic_size=bool(size_multiple))
    card = card_for(module, size_multiple, licence="your own model", default_size=size if size_multiple else None,
                    provenance=provenance or f"kd-depth export_foreign of {metadata.describe()}")
    card_from_dict(card, source="export_foreign card")  # the card we write must be one we accept
    card_path = path.with_name(path.stem + ".card.yaml")
    write_bytes_atomic(path, blob)
    write_text_atomic(card_path, "# Model card written by kd-depth export_foreign (inference/foreign.py explains "
                                 "the fields)\n" + yaml.safe_dump(card, sort_keys=False))
    return path, card_path


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="released model (.safetensors), e.g. runs/teacher_supervised/model.safetensors")
    parser.add_argument("--out", required=True, help="output .onnx (the card is written beside it as <stem>.card.yaml)")
    parser.add_argument("--input-name", default="image", help="name of the ONNX input (default: %(default)s)")
    parser.add_argument("--output-name", default="disparity", help="name of the ONNX output (default: %(default)s)")
    parser.add_argument("--height", type=int, help="traced input height (default: the model's)")
    parser.add_argument("--width", type=int, help="traced input width (default: the model's)")
    parser.add_argument("--size-multiple", type=int, default=0,
                        help="export dynamic H and W that must be multiples of this (e.g. 14); 0 = fixed size")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file and its card")


def run(args: argparse.Namespace) -> int:
    from kd_depth_core.models.io import load_model

    out = Path(args.out)
    card = out.with_name(out.stem + ".card.yaml")
    existing = [path for path in (out, card) if path.exists()]
    if existing and not args.force:
        print(f"kd-depth export-foreign: --out {out}: {existing[0]} already exists; pass --force to replace it",
              file=sys.stderr)
        return 2
    try:
        model, metadata = load_model(args.model)
        size = None
        if args.height or args.width:
            size = (args.height or metadata.input_height, args.width or metadata.input_width)
        onnx_path, card_path = export_foreign(model, metadata, args.out, input_name=args.input_name,
                                              output_name=args.output_name, size=size,
                                              size_multiple=args.size_multiple or None,
                                              provenance=f"kd-depth export_foreign of {args.model}")
    except (ValueError, FileNotFoundError) as error:
        print(f"kd-depth export-foreign: {error}", file=sys.stderr)
        return 2
    print(f"wrote {onnx_path} and its card {card_path} (relative_disparity)")
    return 0


if __name__ == "__main__":  # python -m kd_depth_core.inference.export_foreign MODEL --out FILE.onnx
    cli = argparse.ArgumentParser(prog="python -m kd_depth_core.inference.export_foreign", description=__doc__)
    add_arguments(cli)
    sys.exit(run(cli.parse_args()))
