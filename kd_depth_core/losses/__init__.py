"""Small pure loss functions; see photometric.py and smoothness.py."""
from kd_depth_core.losses.photometric import (
    MultiScaleReprojection,
    best_reprojection_error,
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
    "best_reprojection_error",
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
from kd_depth_core.losses.distillation import (  # noqa: E402  (distillation terms, issue 5)
    DEFAULT_SCALE_WEIGHTS,
    MultiScaleDistillation,
    confidence_weights,
    ensemble_residual,
    gaussian_nll,
    laplacian_nll,
    log_depth_loss,
    multiscale_distillation_loss,
)

__all__ += [
    "DEFAULT_SCALE_WEIGHTS",
    "MultiScaleDistillation",
    "confidence_weights",
    "ensemble_residual",
    "gaussian_nll",
    "laplacian_nll",
    "log_depth_loss",
    "multiscale_distillation_loss",
]
from kd_depth_core.losses.cross_task import masked_cross_entropy, pixel_accuracy  # noqa: E402  (X-Distill, issue 11)

__all__ += ["masked_cross_entropy", "pixel_accuracy"]
from kd_depth_core.losses.adversarial import (  # noqa: E402  (LUMDE, issue 10)
    adversarial_weight,
    discriminator_loss,
    generator_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from kd_depth_core.losses.structure import (  # noqa: E402  (LUMDE, issue 10)
    affinity_matrix,
    depth_structure_loss,
    grid_nodes,
    log_depth_structure,
    pairwise_affinity_loss,
)

__all__ += [
    "adversarial_weight",
    "affinity_matrix",
    "depth_structure_loss",
    "discriminator_loss",
    "generator_loss",
    "grid_nodes",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "log_depth_structure",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "pairwise_affinity_loss",
]
from kd_depth_core.losses.adu import (  # noqa: E402  (ADU-Depth, issue 9)
    attention_feature_loss,
    focal_depth_loss,
    focal_weight,
    inverse_variance_weights,
    spatial_attention,
    standardize_features,
)

__all__ += [
    "attention_feature_loss",
    "focal_depth_loss",
    "focal_weight",
    "inverse_variance_weights",
    "spatial_attention",
    "standardize_features",
]
