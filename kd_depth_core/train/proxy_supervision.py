"""SGBM proxy supervision as a part a task holds: the teachers' (`self_supervised`) and every student's.

The idea of monoResMatch and Depth Hints, in our own code (`losses/proxy.py` has the pure terms): the
dataset attaches each frame's cached OpenCV SGBM disparity (`classical.proxy_cache.ProxySource`, computed
once per frame); the term pulls the predicted log depth toward it at every output scale, but per pixel
only where the proxy is confident *and* its own stereo photometric error is lower than the prediction's.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from kd_depth_core import geometry
from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.losses import stereo_photometric_error
from kd_depth_core.losses.proxy import proxy_depth, proxy_loss, proxy_mask


class ProxyTerms(NamedTuple):
    loss: torch.Tensor  # scalar, unweighted
    fraction: torch.Tensor  # share of the pixels the proxy supervised (logged as proxy_fraction)


class ProxySupervision:
    """The SGBM proxy term of a depth network with sigmoid disparities in [min_depth, max_depth] metres.

    Args:
        cfg: the training config (needs ``data.stereo``; the default cache is ``<train.out_dir>/proxy_cache``).
        sgbm: `classical.sgbm.SGBMSettings` fields (``task.kwargs.proxy_sgbm``); ``min_depth`` defaults to the
            network's, so the number of disparities searched follows the rig.
        cache_dir: the per-frame SGBM cache ("" = the default).
        where: the config path named in errors, e.g. ``"<file>: task.kwargs"``.
    """

    def __init__(self, cfg: TrainConfig, sgbm: Mapping[str, Any], cache_dir: str, min_depth: float,
                 max_depth: float, ssim_weight: float = 0.85, where: str = "task.kwargs") -> None:
        from kd_depth_core.classical.proxy_cache import ProxySource
        from kd_depth_core.classical.sgbm import SGBMSettings

        if not cfg.data.stereo:
            raise ConfigError(f"{where}.proxy_weight: SGBM proxy supervision needs the right images; set "
                              f"data.stereo: true, or task.kwargs.proxy_weight=0")
        try:
            settings = SGBMSettings(**{"min_depth": min_depth, **dict(sgbm)})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}.proxy_sgbm: {error}") from None
        self.source = ProxySource(settings, cache_dir or str(Path(cfg.train.out_dir) / "proxy_cache"))
        self.min_depth, self.max_depth, self.ssim_weight = float(min_depth), float(max_depth), ssim_weight

    @property
    def settings(self):
        """The `SGBMSettings` of the proxy the dataset attaches."""
        return self.source.settings

    def dataset_options(self) -> dict[str, Any]:
        """Ask the dataset for ``proxy_disparity`` (B,1,H,W) px of the unaugmented pair."""
        return {"proxy": self.source}

    def terms(self, batch: dict[str, Any], disps: list[torch.Tensor],
              prediction_error: torch.Tensor | None = None) -> ProxyTerms:
        """The proxy term of the sigmoid disparities `disps` (float32, every output scale).

        prediction_error (B,1,H,W): the prediction's best reprojection error over its photometric sources;
        None (a network trained without a photometric term) = its own stereo error, scale 0, computed here.
        """
        if "proxy_disparity" not in batch:
            raise ValueError("batch has no 'proxy_disparity': build the dataset with task.dataset_options()")
        target = batch["image"].float()
        K, baseline = batch["K"].float(), batch["baseline"].float()
        hint, confident = proxy_depth(batch["proxy_disparity"].float(), K[:, 0, 0] * baseline)
        depths = [geometry.disp_to_depth(full_resolution(d, target.shape[-2:]), self.min_depth, self.max_depth)[1]
                  for d in disps]
        with torch.no_grad():
            right = batch["image_right"].float()
            hint_error = stereo_photometric_error(hint, target, right, K, baseline, self.ssim_weight)
            if prediction_error is None:
                prediction_error = stereo_photometric_error(depths[0].detach(), target, right, K, baseline,
                                                            self.ssim_weight)
            mask = proxy_mask(confident, hint_error, prediction_error)
        return ProxyTerms(proxy_loss(depths, hint, mask), mask.float().mean())


def full_resolution(disp: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """`disp` (B,1,h,w) bilinearly upsampled to `size` (H, W) (unchanged when it is already that size)."""
    if tuple(disp.shape[-2:]) == tuple(size):
        return disp
    return F.interpolate(disp, size=tuple(size), mode="bilinear", align_corners=False)
