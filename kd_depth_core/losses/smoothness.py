"""Edge-aware disparity smoothness (Monodepth2): penalise disparity gradients except at image edges."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_SMOOTHNESS_WEIGHT = 1e-3
"""Weight the caller applies to :func:`edge_aware_smoothness` (Monodepth2), divided by 2^scale per scale."""


def edge_aware_smoothness(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Unweighted smoothness loss (scalar) of disparity (B,1,H,W) guided by image (B,C,H,W) in [0, 1].

    Disparity is divided by its per-image mean first (scale invariant); the loss is
    mean |d_x disp| * exp(-mean_c |d_x image|) + the same along y. Constant disparity gives 0.
    """
    if disp.ndim != 4 or disp.shape[1] != 1:
        raise ValueError(f"disp: expected shape (B,1,H,W), got {tuple(disp.shape)}")
    if image.ndim != 4 or image.shape[0] != disp.shape[0] or image.shape[-2:] != disp.shape[-2:]:
        raise ValueError(f"image: expected shape (B,C,{disp.shape[-2]},{disp.shape[-1]}) matching disp, "
                         f"got {tuple(image.shape)}")
    disp = disp / (disp.mean((2, 3), keepdim=True) + 1e-7)
    grad_disp_x = (disp[..., :, :-1] - disp[..., :, 1:]).abs()
    grad_disp_y = (disp[..., :-1, :] - disp[..., 1:, :]).abs()
    grad_image_x = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    grad_image_y = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (grad_disp_x * torch.exp(-grad_image_x)).mean() + (grad_disp_y * torch.exp(-grad_image_y)).mean()


def multiscale_smoothness(disps: list[torch.Tensor], image: torch.Tensor,
                          weight: float = DEFAULT_SMOOTHNESS_WEIGHT) -> torch.Tensor:
    """Mean over scales of ``weight / 2^s * edge_aware_smoothness(disps[s], image resized to disps[s])``.

    disps: list of (B,1,H/2^s,W/2^s); image (B,C,H,W) full resolution (area-downsampled per scale).
    Add to :func:`~kd_depth_core.losses.photometric.multiscale_reprojection_loss` for Monodepth2's total.
    """
    if not disps:
        raise ValueError("disps: expected a non-empty list of (B,1,h,w) disparities")
    terms = []
    for scale, disp in enumerate(disps):
        guide = image if disp.shape[-2:] == image.shape[-2:] else F.interpolate(image, size=disp.shape[-2:], mode="area")
        terms.append(edge_aware_smoothness(disp, guide) * (weight / 2 ** scale))
    return torch.stack(terms).mean()
