"""Classical-stereo proxy supervision (the idea of monoResMatch and Depth Hints, in our own code).

A sparse, confidence-masked SGBM disparity (`classical.sgbm`) supervises the predicted depth, but
per pixel only where the proxy explains the stereo pair better than the prediction does: where
the proxy's own photometric error (left image rebuilt from the right with the proxy depth) is
lower than the prediction's best reprojection error. A wrong hint is therefore ignored, and a
prediction that already beats the hint is left to the photometric loss.
"""
from __future__ import annotations

import torch


def proxy_depth(disparity: torch.Tensor, fx_baseline: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Proxy disparity (B,1,H,W) px, 0 = none, and fx·B (B,) px·m -> (depth (B,1,H,W) m, confident bool).

    Depth is 1 m where there is no proxy (a placeholder that is always masked out).
    """
    confident = disparity > 0
    depth = fx_baseline.view(-1, 1, 1, 1) / disparity.clamp(min=1e-3)
    return torch.where(confident, depth, torch.ones_like(depth)), confident


def proxy_mask(confident: torch.Tensor, proxy_error: torch.Tensor, prediction_error: torch.Tensor) -> torch.Tensor:
    """Pixels (B,1,H,W) bool the proxy supervises: confident and photometrically better than the prediction."""
    return confident & (proxy_error < prediction_error)


def proxy_loss(depths: list[torch.Tensor], target_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over scales of the masked mean |log depth − log proxy depth| (a robust L1 in log space).

    depths: full-resolution depth (B,1,H,W) m per scale; target_depth (B,1,H,W) m; mask (B,1,H,W) bool.
    0 (with a gradient path) when no pixel is masked in.
    """
    weight = mask.to(target_depth.dtype)
    count = weight.sum().clamp(min=1.0)
    log_target = torch.log(target_depth)
    terms = [((torch.log(depth) - log_target).abs() * weight).sum() / count for depth in depths]
    return torch.stack(terms).mean()
