"""Parameter counts, FLOPs counted by tracing a real forward, and example inputs for any registered model.

FLOPs follow `torch.utils.flop_counter.FlopCounterMode`: one multiply-add = 2 FLOPs; convolutions,
matmuls and attention are counted, element-wise ops (activations, normalisation) are not.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def nearest_valid_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded to the nearest multiples of `multiple` (at least one multiple each)."""
    def snap(value: int) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    return snap(height), snap(width)


def example_inputs(model: nn.Module, height: int, width: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Random inputs in [0, 1], one (batch,C,height,width) tensor per name in `model.input_names`.

    C comes from `model.input_channels` (one per input) when the model has it, else 3 (RGB).
    """
    names = getattr(model, "input_names", ("image",))
    channels = getattr(model, "input_channels", (3,) * len(names))
    device = next(model.parameters()).device
    return tuple(torch.rand(batch, int(c), height, width, device=device) for c in channels)


@torch.no_grad()
def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one eval-mode forward of `model(*inputs)`, counted by tracing it."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_flops(model: nn.Module, height: int, width: int) -> tuple[int, tuple[int, int]]:
    """(FLOPs at batch 1, size used): the size is snapped to `model.size_multiple` when not a multiple."""
    size = nearest_valid_size(height, width, int(getattr(model, "size_multiple", 1)))
    return count_flops(model, example_inputs(model, *size)), size
