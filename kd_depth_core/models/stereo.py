"""Stereo teacher that matches: a cost volume, soft-argmin disparity in pixels, image-guided refinement.

`model(left, right)` on a rectified pair (right camera at +x):
1. one timm backbone on left and right (batched together);
2. a correlation volume at stride `match_reduction` (default 4) over `max_disparity / r + 1` candidates
   (r px apart), beside a classical block-matching volume on the images (`block_matching_volume`) over
   1-px candidates, which the matching logits also start from, so the untrained network already
   matches like block matching;
3. a small 2D U-Net aggregates the volume with the left image's deeper context features into
   matching logits; a softmax over candidates gives a soft-argmin disparity (subpixel, in
   full-resolution pixels) and the spread of the matching distribution;
4. StereoNet-style refinement, one residual step per factor 2 up to full resolution, guided by
   the left image (and the backbone's left features at that stride); each step first matches again
   locally on the images at its own resolution (`local_matching_cost`: the mean absolute difference
   over a small window for the right image sampled at `local_offsets` around the upsampled
   disparity) and moves the disparity to the soft-argmin of that cost, so the subpixel detail and
   the edges the stride-4 volume pooled away come back from the images, coarse to fine.

With `classical_prior` the network is guided by classical stereo (the idea of Guided Stereo
Matching, Poggi et al., CVPR 2019, with OpenCV SGBM as the source of the hints): SGBM with its
left-right check (`classical.sgbm`, no learning, no gradient) runs on the pair, and every
refinement step moves its disparity toward SGBM's (by two learned gates, for the pixels that pass
the left-right check and for the row-filled rest, both starting at 0.95) and sees SGBM's disparity
and confidence as inputs. The untrained network is then
the SGBM baseline (holes filled row-wise); training learns where to leave it: it fills SGBM's
holes from context and corrects it where the images disagree. SGBM runs on the CPU, outside any exported graph.

The disparity becomes depth through the rig, Z = fx·B / d (`rig` buffer: fx·B per pixel of input
width, and the depth range), so there is no sigmoid range to initialise: the untrained network
already outputs plausible matches. The training task sets the rig from the data (`set_rig`); it
is saved with the weights. Outputs follow the depth-model contract of docs/architecture.md
(`disp` in the sigmoid parametrisation of `geometry.disp_to_depth` over the rig's depth range)
plus `disparity` (4 scales, full-resolution pixels) and `log_sigma`. `return_features=True` adds the
left features, with the matching probabilities appended at the matching stride (the 3D-aware
features ADU-Depth distils), described by `feature_info`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_depth_core.classical.sgbm import SGBMSettings, fill_rows, sgbm_disparity

from .encoders import TimmEncoder, check_image
from .registry import register_model

NUM_SCALES = 4
DEFAULT_RIG = (0.58 * 0.54, 0.1, 100.0)
"""fx·B per pixel of width (KITTI-like: fx 0.58·W, 0.54 m), min and max depth (m); replaced by `set_rig`."""


def correlation_volume(left: torch.Tensor, right: torch.Tensor, num_disparities: int) -> torch.Tensor:
    """(B,C,H,W) left and right features -> (B,D,H,W) with D = num_disparities.

    volume[:, d, v, u] = mean_c left[:, c, v, u] * right[:, c, v, u - d] (0 where u - d < 0):
    a left pixel u sees the right pixel u - d (docs/architecture.md).
    """
    if left.shape != right.shape:
        raise ValueError(f"left and right features differ in shape: {tuple(left.shape)} vs {tuple(right.shape)}")
    width = left.shape[-1]
    slices = []
    for d in range(num_disparities):
        shifted = F.pad(right, (d, 0))[..., :width] if d else right
        slices.append((left * shifted).mean(dim=1))
    return torch.stack(slices, dim=1)


def box_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of (B,C,H,W) over a `block` x `block` window (odd), the window clipped at the borders
    (`F.avg_pool2d(..., count_include_pad=False)`). On the CPU, without gradients and outside tracing
    it is OpenCV's running-sum box filter (about 18x faster at 9 x 9); avg_pool2d elsewhere."""
    if x.device.type != "cpu" or x.requires_grad or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return F.avg_pool2d(x, block, stride=1, padding=block // 2, count_include_pad=False)
    import cv2

    maps = x.detach().float().contiguous().numpy().reshape(-1, *x.shape[-2:])
    count = cv2.blur(np.ones(x.shape[-2:], np.float32), (block, block), borderType=cv2.BORDER_CONSTANT)
    out = np.stack([cv2.blur(m, (block, block), borderType=cv2.BORDER_CONSTANT) for m in maps]) / count
    return torch.from_numpy(out.reshape(x.shape)).to(x.dtype)


def block_matching_volume(left: torch.Tensor, right: torch.Tensor, candidates: int, step: int, stride: int,
                          block: int) -> torch.Tensor:
    """Classical block matching on the images: (B,3,H,W) left and right in [0, 1] -> (B,D,H/stride,W/stride).

    The mean absolute difference over a `block` x `block` window is computed for every integer
    disparity; candidate k (k·step px, D = `candidates`) keeps the best of the disparities it stands
    for, [k·step - step/2, k·step + step/2), so no match falls between candidates; the volume is then
    pooled to `stride` and standardised along the candidates (higher = better match). Not learned and
    without gradients: it gives the untrained network block matching's answer (SGBM without the
    semi-global smoothing), and the aggregation learns the rest.
    """
    with torch.no_grad():
        width, half = left.shape[-1], step // 2
        best = left.new_full((left.shape[0], candidates, *left.shape[-2:]), float("inf"))
        for d in range((candidates - 1) * step + step - half):
            shifted = F.pad(right, (d, 0, 0, 0), mode="replicate")[..., :width] if d else right
            sad = box_mean((left - shifted).abs().mean(1, keepdim=True), block)
            k = min((d + half) // step, candidates - 1)
            best[:, k:k + 1] = torch.minimum(best[:, k:k + 1], sad)
        cost = F.avg_pool2d(best, stride)
        return -(cost - cost.mean(1, keepdim=True)) / (cost.std(1, keepdim=True) + 1e-3)


def local_matching_cost(left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor, offsets: torch.Tensor,
                        block: int) -> torch.Tensor:
    """Local block matching around a disparity: (B,3,h,w) left and right, (B,1,h,w) disparity in pixels of
    this resolution, (K,) offsets (px) -> (B,K,h,w) cost.

    cost[:, k, v, u] = mean absolute difference over a `block` x `block` window between the left image
    and the right image sampled (bilinear, border) at u - (disparity + offsets[k]): a pixel u of the left
    image sees u - d in the right one. The disparity is treated as given (no gradient through the
    sampling positions), as in coarse-to-fine matching.
    """
    batch, _, height, width = left.shape
    disparity = disparity.detach()
    columns = torch.arange(width, device=left.device, dtype=left.dtype).view(1, 1, width)
    rows = torch.linspace(-1.0, 1.0, height, device=left.device, dtype=left.dtype).view(1, height, 1)
    rows = rows.expand(batch, height, width)
    costs = []
    for offset in offsets:
        x = columns - (disparity[:, 0] + offset)
        grid = torch.stack([2.0 * x / max(width - 1, 1) - 1.0, rows], dim=-1)
        warped = F.grid_sample(right, grid, mode="bilinear", padding_mode="border", align_corners=True)
        sad = (left - warped).abs().mean(1, keepdim=True)
        costs.append(F.avg_pool2d(sad, block, stride=1, padding=block // 2, count_include_pad=False))
    return torch.cat(costs, 1)


def sgbm_hints(left: torch.Tensor, right: torch.Tensor, focal_baseline: float, settings: SGBMSettings
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,3,H,W) pair in [0, 1] -> SGBM's left disparity (B,1,H,W) px and its confidence (B,1,H,W) in {0, 1}.

    OpenCV SGBM with the left-right check (`classical.sgbm`), on the CPU; the pixels that fail the
    check (occlusions, no texture) are filled row-wise from the background side (`fill_rows`), as the
    SGBM baseline does, and are 0 in the confidence; 0 px where no row neighbour exists."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        raise RuntimeError("stereo_teacher with classical_prior runs OpenCV SGBM outside the graph and cannot be "
                           "exported; serve it with the PyTorch backend, or train with model.kwargs.classical_prior=false")
    pair = [(x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for x in (left, right)]
    sparse = [sgbm_disparity(l_image, r_image, settings, fx=float(focal_baseline), baseline=1.0)[0]
              for l_image, r_image in zip(*pair)]
    return hints_from_disparity(torch.from_numpy(np.stack(sparse))[:, None].to(left))


def hints_from_disparity(disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SGBM's confident disparity (B,1,H,W) px, 0 elsewhere (e.g. the training proxy) -> (the same with the
    holes filled row-wise by `fill_rows`, the confidence in {0, 1})."""
    sparse = disparity.detach().float().cpu().numpy()[:, 0]
    filled = np.stack([fill_rows(d, d > 0) for d in sparse])
    return (torch.from_numpy(filled)[:, None].to(disparity), (disparity > 0).to(disparity))


def pool_hints(hint: torch.Tensor, confidence: torch.Tensor, size: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hints (B,1,H,W) px and their confidence -> both averaged over the cells of `size`."""
    if tuple(hint.shape[-2:]) == tuple(size):
        return hint, confidence
    return F.adaptive_avg_pool2d(hint, size), F.adaptive_avg_pool2d(confidence, size)


def resample_candidates(volume: torch.Tensor, candidates: int) -> torch.Tensor:
    """(B,D,h,w) over D evenly spaced disparities -> (B,candidates,h,w) over the same range (linear)."""
    if volume.shape[1] == candidates:
        return volume
    batch, count, height, width = volume.shape
    flat = volume.permute(0, 2, 3, 1).reshape(-1, 1, count)
    flat = F.interpolate(flat, size=candidates, mode="linear", align_corners=True)
    return flat.reshape(batch, height, width, candidates).permute(0, 3, 1, 2)


def soft_argmin(logits: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Matching logits (B,D,H,W) over disparity `candidates` (D,) -> (expected disparity, std), each (B,1,H,W).

    The expectation under softmax(logits) over the candidate axis: differentiable and subpixel. Computed in
    float32 under autocast too: bf16's 8-bit mantissa would round a 60-px disparity to 0.25 px.
    """
    prob = torch.softmax(logits.float(), dim=1)
    values = candidates.view(1, -1, 1, 1).to(prob)
    mean = (prob * values).sum(1, keepdim=True)
    var = (prob * (values - mean) ** 2).sum(1, keepdim=True)
    return mean, var.clamp(min=0).sqrt()


def _conv(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.1, inplace=True))


class CostAggregation(nn.Module):
    """(volume (B,D,h,w), left context per level) -> matching logits (B,D,h,w): a 2D U-Net over the volume.

    `context_channels[0]` is the left feature width at the volume's stride, the next ones at 2x, 4x, ...
    (one level per deeper backbone stride).
    """

    def __init__(self, candidates: int, context_channels: Sequence[int], width: int,
                 volume_channels: int | None = None) -> None:
        super().__init__()
        volume_channels = candidates if volume_channels is None else int(volume_channels)
        self.stem = _conv(volume_channels + context_channels[0], width)
        self.down = nn.ModuleList()
        self.merge = nn.ModuleList()
        for channels in context_channels[1:]:
            self.down.append(_conv(width, width, stride=2))
            self.merge.append(_conv(width + channels, width))
        self.up = nn.ModuleList(_conv(width, width) for _ in context_channels[1:])
        self.head = nn.Sequential(_conv(width, width, dilation=2), nn.Conv2d(width, candidates, 3, padding=1))

    def forward(self, volume: torch.Tensor, context: Sequence[torch.Tensor]) -> torch.Tensor:
        """`volume` (B,`volume_channels`,h,w): the learned volume, then the classical one if any."""
        x = self.stem(torch.cat([volume, context[0]], 1))
        skips = [x]
        for down, merge, ctx in zip(self.down, self.merge, context[1:]):
            x = down(x)
            x = merge(torch.cat([x, F.interpolate(ctx, size=x.shape[-2:], mode="nearest")], 1))
            skips.append(x)
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip)
        return self.head(x)


class Refinement(nn.Module):
    """One StereoNet step at `stride`: upsampled disparity + left image (+ left features) -> disparity (px).

    With `local_offsets` (px at this stride) the step first matches locally on the images
    (`local_matching_cost`) and moves the disparity to the soft-argmin of that cost (temperature
    `exp(log_local_scale)`, learned; a flat cost, as on a textureless wall, moves nothing); the cost
    also feeds the learned residual, which starts at zero.
    """

    def __init__(self, guide_channels: int, width: int, stride: int = 1, local_offsets: Sequence[float] = (),
                 local_block: int = 5, prior: bool = False) -> None:
        super().__init__()
        self.stride = int(stride)
        self.prior = bool(prior)
        if self.prior:  # how far the disparity moves to a classical hint, confident / filled: sigmoid(3) = 0.95
            self.prior_gate = nn.Parameter(torch.tensor([3.0, 3.0]))
        self.local_block = int(local_block)
        self.register_buffer("local_offsets", torch.tensor(list(local_offsets), dtype=torch.float32),
                             persistent=False)
        local = len(self.local_offsets)
        if local:
            self.log_local_scale = nn.Parameter(torch.tensor(4.6))  # exp -> 100 per unit of mean abs difference
        self.body = nn.Sequential(_conv(1 + 3 + guide_channels + local + 2 * self.prior, width),
                                  _conv(width, width, dilation=2),
                                  _conv(width, width, dilation=4), _conv(width, width))
        self.residual = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)

    def forward(self, disparity: torch.Tensor, image: torch.Tensor, guide: torch.Tensor | None,
                disparity_scale: float, right: torch.Tensor | None = None,
                hints: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`disparity` (B,1,h,w) in full-resolution px; `image`/`right` the pair at this step's resolution;
        `hints`: classical disparity (full-resolution px) and its confidence at this resolution."""
        extra = []
        if self.prior:
            if hints is None:
                raise ValueError("Refinement with a classical prior needs the hints")
            hint, confidence = hints
            gate = torch.sigmoid(self.prior_gate)
            weight = (gate[0] * confidence + gate[1] * (1 - confidence)) * (hint > 0).to(hint)
            disparity = disparity + weight * (hint - disparity)
            extra = [hint / disparity_scale, confidence]
        if len(self.local_offsets):
            if right is None:
                raise ValueError("Refinement with local matching needs the right image")
            cost = local_matching_cost(image, right, disparity / self.stride, self.local_offsets, self.local_block)
            cost = cost.float()  # float32 under autocast: the shift is a subpixel correction
            prob = torch.softmax(-self.log_local_scale.exp() * (cost - cost.amin(1, keepdim=True)), dim=1)
            shift = (prob * self.local_offsets.view(1, -1, 1, 1).to(prob)).sum(1, keepdim=True)
            disparity = F.relu(disparity + shift * self.stride)
            extra.append(10.0 * (cost - cost.mean(1, keepdim=True)))
        inputs = [disparity / disparity_scale, image] + ([guide] if guide is not None else []) + extra
        hidden = self.body(torch.cat(inputs, 1))
        return F.relu(disparity + self.residual(hidden)), hidden


class StereoEncoder(TimmEncoder):
    """The timm backbone shared by left and right. `backbone_feature_info` is the backbone's own
    contract; `feature_info` that of the features the network returns (`return_features=True`): the
    left features with the matching probabilities (`candidates` channels) appended at stride
    `match_reduction`."""

    def __init__(self, backbone: str, *, match_reduction: int, candidates: int,
                 weights_path: str | os.PathLike | None = None) -> None:
        super().__init__(backbone, weights_path=weights_path)
        self.backbone_feature_info = [dict(i) for i in self.feature_info]
        reductions = [int(i["reduction"]) for i in self.backbone_feature_info]
        if match_reduction not in reductions:
            raise ValueError(f"match_reduction {match_reduction} is not among backbone {backbone!r} feature strides "
                             f"{reductions}")
        self.match_index = reductions.index(match_reduction)
        self.feature_info = [dict(i) for i in self.backbone_feature_info]
        self.feature_info[self.match_index]["num_chs"] += int(candidates)


class StereoMatchNet(nn.Module):
    """`model(left, right, return_features=False)`, each (B,3,H,W) in [0, 1] (rectified pair, right at +x).

    Returns {'disparity': 4 scales (B,1,H/2^s,W/2^s) of left disparity in full-resolution pixels,
    'disp': the same in the sigmoid parametrisation over the rig's depth range, 'log_sigma'?: (B,1,H,W),
    'features'?: left features per `feature_info`}. See the module docstring.
    """

    input_names: tuple[str, ...] = ("left", "right")

    def __init__(self, backbone: str, *, match_reduction: int = 4, max_disparity: int = 192, match_channels: int = 32,
                 aggregation_channels: int = 64, refine_channels: int = 32, uncertainty: bool = True,
                 context_levels: int = 0, block_matching: int = 9, local_matching: int = 0, local_block: int = 5,
                 classical_prior: bool = False, prior_upsample: int = 2,
                 weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.classical_prior = bool(classical_prior)
        self.prior_upsample = int(prior_upsample)
        SGBMSettings(upsample=self.prior_upsample)  # checks it
        if local_matching < 0:
            raise ValueError(f"local_matching: expected 0 (off) or a search radius in pixels, got {local_matching}")
        if local_block < 1 or local_block % 2 == 0:
            raise ValueError(f"local_block: expected an odd window size in pixels, got {local_block}")
        if max_disparity < match_reduction:
            raise ValueError(f"max_disparity: expected >= match_reduction ({match_reduction}) pixels, "
                             f"got {max_disparity}")
        self.match_reduction = int(match_reduction)
        self.max_disparity = int(max_disparity)
        self.block_matching = int(block_matching)
        if self.block_matching < 0 or (self.block_matching and self.block_matching % 2 == 0):
            raise ValueError(f"block_matching: expected 0 (off) or an odd block size, got {block_matching}")
        # learned features can only shift by whole feature pixels (r px); the block-matching volume, on the
        # images, resolves every pixel, so with it the matching logits are over 1-px candidates
        self.disparity_step = 1 if self.block_matching else self.match_reduction
        learned = self.max_disparity // self.match_reduction + 1
        candidates = (learned - 1) * self.match_reduction // self.disparity_step + 1
        self.encoder = StereoEncoder(backbone, match_reduction=self.match_reduction, candidates=candidates,
                                     weights_path=weights_path)
        info = self.encoder.backbone_feature_info
        reductions = [int(i["reduction"]) for i in info]
        self.match_index = self.encoder.match_index
        # candidate disparities in full-resolution pixels (the volume samples every r-th)
        self.learned_candidates = learned
        self.register_buffer("candidates", torch.arange(candidates, dtype=torch.float32) * self.disparity_step,
                             persistent=False)
        self.register_buffer("rig", torch.tensor(DEFAULT_RIG, dtype=torch.float32))
        self.match_proj = nn.Conv2d(int(info[self.match_index]["num_chs"]), int(match_channels), 1)
        # context: the left features at the matching stride and the deeper ones (last of each stride)
        deeper = sorted({len(reductions) - 1 - reductions[::-1].index(r) for r in reductions
                         if r > self.match_reduction})
        context = [self.match_index] + (deeper[:context_levels - 1] if context_levels > 0 else deeper)
        self.context_index = context
        self.context_proj = nn.ModuleList(nn.Conv2d(int(info[i]["num_chs"]), aggregation_channels // 2, 1)
                                          for i in context)
        self.aggregation = CostAggregation(candidates, [aggregation_channels // 2] * len(context),
                                           int(aggregation_channels),
                                           volume_channels=candidates * (2 if self.block_matching else 1))
        if self.block_matching:
            # logits = learned + bm_scale * block-matching score: the untrained net starts at block matching
            self.bm_scale = nn.Parameter(torch.tensor(10.0))
        # refinement strides r/2, ..., 1, guided by the left feature at that stride when the backbone has one
        self.refine_strides = []
        stride = self.match_reduction
        while stride > 1:
            stride //= 2
            self.refine_strides.append(stride)
        self.guide_index = {s: reductions.index(s) for s in self.refine_strides if s in reductions}
        # local matching: offsets -radius..radius in half pixels of each step's resolution
        self.local_matching = int(local_matching)
        offsets = [k / 2 for k in range(-2 * self.local_matching, 2 * self.local_matching + 1)] if local_matching else []
        self.refinements = nn.ModuleList(
            Refinement(int(info[self.guide_index[s]]["num_chs"]) if s in self.guide_index else 0, int(refine_channels),
                       stride=s, local_offsets=offsets, local_block=local_block, prior=self.classical_prior)
            for s in self.refine_strides)
        self.has_uncertainty = bool(uncertainty)
        if self.has_uncertainty:
            self.sigma_head = nn.Conv2d(int(refine_channels), 1, 3, padding=1)
            nn.init.zeros_(self.sigma_head.weight)
            nn.init.zeros_(self.sigma_head.bias)
        self.feature_info = self.encoder.feature_info
        self.size_multiple = max(max(reductions), self.match_reduction * 4)
        self.decoder = nn.ModuleList([self.aggregation, self.refinements])  # the part after the encoder

    @torch.no_grad()
    def set_rig(self, fx: float, baseline: float, width: int, min_depth: float, max_depth: float) -> None:
        """Rig of the training data: fx (px) at `width` (px), baseline (m); the depth range (m) of `disp`."""
        if not (fx > 0 and baseline > 0 and width > 0 and 0 < min_depth < max_depth):
            raise ValueError(f"set_rig: expected fx, baseline, width > 0 and 0 < min_depth < max_depth, got "
                             f"{fx}, {baseline}, {width}, {min_depth}, {max_depth}")
        self.rig.copy_(torch.tensor([fx * baseline / width, min_depth, max_depth]))

    @property
    def onnx_exportable(self) -> bool:
        """False with `classical_prior`: SGBM runs outside the graph (`inference.predictor` serves it with torch)."""
        return not self.classical_prior

    def prior_settings(self) -> SGBMSettings:
        """The SGBM settings of the classical prior (`classical_prior`), at the rig's nearest depth."""
        return SGBMSettings(min_depth=float(self.rig[1]), upsample=self.prior_upsample)

    def focal_baseline(self, width: int) -> float:
        """fx·B (px·m) at an input `width` (px): disparity d px <-> depth fx·B / d m."""
        return float(self.rig[0]) * width

    def disparity_to_disp(self, disparity: torch.Tensor, width: int) -> torch.Tensor:
        """Disparity (px at input `width`) -> the sigmoid parametrisation of `geometry.disp_to_depth`."""
        focal_baseline, min_depth, max_depth = self.rig[0] * width, self.rig[1], self.rig[2]
        inverse_depth = (disparity / focal_baseline).clamp(min=1.0 / max_depth)
        return (inverse_depth - 1.0 / max_depth) / (1.0 / min_depth - 1.0 / max_depth)

    def forward(self, left: torch.Tensor, right: torch.Tensor, return_features: bool = False,
                hints: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """`hints`: (disparity px, confidence), each (B,1,H,W), to use instead of running SGBM (classical_prior)."""
        check_image(left, "left", 3, self.size_multiple)
        check_image(right, "right", 3, self.size_multiple)
        if left.shape != right.shape:
            raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} must have the same shape")
        batch, width = left.shape[0], left.shape[-1]
        features = self.encoder(torch.cat([left, right], 0))
        lefts = [f[:batch] for f in features]
        proj = self.match_proj(features[self.match_index])
        volume = correlation_volume(proj[:batch], proj[batch:], self.learned_candidates)
        volume = resample_candidates(volume, len(self.candidates))
        context = [p(lefts[i]) for p, i in zip(self.context_proj, self.context_index)]
        if self.block_matching:
            classical = block_matching_volume(left, right, len(self.candidates), self.disparity_step,
                                              self.match_reduction, self.block_matching)
            logits = self.aggregation(torch.cat([volume, classical], 1), context) + self.bm_scale * classical
        else:
            logits = self.aggregation(volume, context)
        disparity, spread = soft_argmin(logits, self.candidates)
        if self.classical_prior and hints is None:
            hints = sgbm_hints(left, right, self.focal_baseline(width), self.prior_settings())
        by_stride = {self.match_reduction: disparity}
        hidden = None
        for stride, refine in zip(self.refine_strides, self.refinements):
            size = (left.shape[-2] // stride, width // stride)
            up = F.interpolate(disparity, size=size, mode="bilinear", align_corners=False)
            image = F.adaptive_avg_pool2d(left, size) if stride > 1 else left
            other = (F.adaptive_avg_pool2d(right, size) if stride > 1 else right) if self.local_matching else None
            guide = lefts[self.guide_index[stride]] if stride in self.guide_index else None
            at_stride = pool_hints(*hints, size) if self.classical_prior else None
            disparity, hidden = refine(up, image, guide, float(self.max_disparity), right=other, hints=at_stride)
            by_stride[stride] = disparity
        scales = []
        for s in range(NUM_SCALES):
            stride = 2 ** s
            if stride in by_stride:
                scales.append(by_stride[stride])
            else:  # coarser than the volume: pool it
                coarse = by_stride[self.match_reduction]
                scales.append(F.avg_pool2d(coarse, stride // self.match_reduction))
        out = {"disparity": scales, "disp": [self.disparity_to_disp(d, width) for d in scales]}
        if self.has_uncertainty:
            # sigma_Z ~ Z * sigma_d / d (first order), from the spread of the matching distribution,
            # corrected by a learned head (zero at initialisation). All detached from the disparity path:
            # the uncertainty's loss trains the head only and never moves the depth (a gradient through
            # d here would push disparities wherever the NLL likes a smaller sigma)
            focal_baseline = self.rig[0] * width
            full = torch.maximum(scales[0].detach(), focal_baseline / self.rig[2])
            spread_full = F.interpolate(spread.detach(), size=full.shape[-2:], mode="bilinear", align_corners=False)
            correction = self.sigma_head(hidden.detach()) if hidden is not None else 0.0
            out["log_sigma"] = torch.log(focal_baseline / full) + torch.log(spread_full + 0.25) - torch.log(full) \
                + correction
        if return_features:
            lefts[self.match_index] = torch.cat([lefts[self.match_index], torch.softmax(logits, 1)], 1)
            out["features"] = lefts
        return out


@register_model("stereo_teacher", family="stereo_teacher",
                description="stereo teacher: timm CNN on left/right, cost volume, soft-argmin disparity, refinement")
def stereo_teacher(*, backbone: str = "resnet34", cost_volume_reductions: Sequence[int] = (4,),
                   max_disparity: int = 192, match_channels: int = 32, aggregation_channels: int = 64,
                   refine_channels: int = 32, uncertainty: bool = True, context_levels: int = 0,
                   block_matching: int = 9, local_matching: int = 0, local_block: int = 5,
                   classical_prior: bool = False, prior_upsample: int = 2,
                   weights_path: str | os.PathLike | None = None) -> StereoMatchNet:
    """`max_disparity`: full-resolution pixels searched at the training width (fx·B / nearest depth).
    The matching stride is the smallest of `cost_volume_reductions`; `context_levels`: backbone strides
    (from the matching one down) whose left features guide the aggregation, 0 = all; `block_matching`:
    the window (px, odd) of the classical block-matching volume added to the learned one, 0 = off;
    `local_matching`: the search radius (px, in half-pixel steps) of the local matching in every
    refinement step, 0 = off; `local_block`: its window (px, odd); `classical_prior`: guide the
    refinement with OpenCV SGBM's disparities (run on the CPU, not exportable), matched on the pair
    enlarged `prior_upsample` times (`classical.sgbm.SGBMSettings.upsample`)."""
    return StereoMatchNet(backbone, match_reduction=int(min(cost_volume_reductions)), max_disparity=max_disparity,
                          match_channels=match_channels, aggregation_channels=aggregation_channels,
                          refine_channels=refine_channels, uncertainty=uncertainty, context_levels=context_levels,
                          block_matching=block_matching, local_matching=local_matching, local_block=local_block,
                          classical_prior=classical_prior, prior_upsample=prior_upsample, weights_path=weights_path)
