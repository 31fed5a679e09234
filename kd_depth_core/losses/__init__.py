"""Small pure loss functions; see photometric.py and smoothness.py."""
from kd_depth_core.losses.photometric import (
    MultiScaleReprojection,
    min_reprojection_loss,
    multiscale_reprojection_loss,
    photometric_error,
    ssim_dissimilarity,
    stereo_photometric_error,
    warp_right_to_left,
    warp_sources,
)
from kd_depth_core.losses.smoothness import DEFAULT_SMOOTHNESS_WEIGHT, edge_aware_smoothness, multiscale_smoothness

__all__ = [
    "DEFAULT_SMOOTHNESS_WEIGHT",
    "MultiScaleReprojection",
    "edge_aware_smoothness",
    "min_reprojection_loss",
    "multiscale_reprojection_loss",
    "multiscale_smoothness",
    "photometric_error",
    "ssim_dissimilarity",
    "stereo_photometric_error",
    "warp_right_to_left",
    "warp_sources",
]
