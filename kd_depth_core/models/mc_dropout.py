"""Monte Carlo dropout: dropout sites that stay active at inference, and the batched MC prediction.

A model marks its Monte Carlo sites with `MCDropout` (an `nn.Dropout`: it behaves normally in
`train()`/`eval()`). `mc_dropout_mode(model)` puts the model in eval mode (BatchNorm frozen,
other dropout off) and only the `MCDropout` sites in train mode. `mc_dropout_predict` runs the N
stochastic passes as ONE forward on the batch repeated N times: every copy draws its own dropout
mask, and since nothing else is stochastic or batch-dependent in eval mode, each copy is an
independent MC sample. It does not reproduce N separate forwards draw for draw under the same
RNG seed (the masks are drawn in a different order); the distribution is the same.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from kd_depth_core.geometry import disp_to_depth


class MCDropout(nn.Dropout):
    """Element-wise dropout marked as a Monte Carlo site (kept active by `mc_dropout_mode`).

    The mask is drawn as `rand >= p` rather than with `bernoulli_`: the same distribution, 1.5x faster on
    the CPU, where the draws were 9 % of a DPT-Hybrid training step.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))


def dropout_sites(model: nn.Module) -> list[MCDropout]:
    """The model's Monte Carlo dropout sites."""
    return [module for module in model.modules() if isinstance(module, MCDropout)]


def enable_mc_dropout(model: nn.Module) -> int:
    """Eval mode everywhere except the MC sites (train mode); returns the number of sites with p > 0."""
    sites = [site for site in dropout_sites(model) if site.p > 0]
    if not sites:
        raise ValueError(f"{type(model).__name__} has no Monte Carlo dropout sites with p > 0 "
                         "(MC sampling would give identical passes)")
    model.eval()
    for site in sites:
        site.train()
    return len(sites)


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`with mc_dropout_mode(model):` MC sampling inside; every module's train/eval flag restored after."""
    flags = {module: module.training for module in model.modules()}
    try:
        enable_mc_dropout(model)
        yield model
    finally:
        for module, training in flags.items():
            module.train(training)


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, image: torch.Tensor, num_samples: int, min_depth: float = 0.1,
                       max_depth: float = 100.0, *, max_batch: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over `num_samples` MC-dropout passes of the full-resolution depth.

    image: (B,3,H,W) in [0, 1]. Returns (mean depth, std depth), each (B,1,H,W) in metres; the std
    is the population std over samples (0 for a single sample). Sigmoid disparity is converted with
    `geometry.disp_to_depth(disp, min_depth, max_depth)` per sample before averaging.
    `max_batch`: most images per forward (memory cap); default all B*num_samples in one forward.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch = image.shape[0]
    per_forward = num_samples if max_batch is None else max(1, min(num_samples, max_batch // max(batch, 1)))
    depths = []
    with mc_dropout_mode(model):
        done = 0
        while done < num_samples:
            count = min(per_forward, num_samples - done)
            disp = model(image.repeat(count, 1, 1, 1))["disp"][0]
            depths.append(disp_to_depth(disp, min_depth, max_depth)[1].view(count, batch, *disp.shape[1:]))
            done += count
    std, mean = torch.std_mean(torch.cat(depths, dim=0), dim=0, correction=0)
    return mean, std
