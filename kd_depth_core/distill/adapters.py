"""Feature adapters: map a student's encoder features onto a teacher's, stage by stage (training only).

Stages are paired by stride (`feature_info` 'reduction', docs/architecture.md): a pairing
(student_reduction, teacher_reduction) takes the student's first feature map at that stride and
the teacher's first at its stride. Each adapter is a 1x1 convolution (student channels -> teacher
channels) followed by a bilinear resize to the teacher map's size, so strides and input sizes may
differ between the two networks.

    pairs = pair_stages(student.feature_info, teacher.feature_info)          # every shared stride >= 4
    adapters = FeatureAdapters(student.feature_info, teacher.feature_info, pairs)
    adapted = adapters(student_features, [teacher_features[j].shape[-2:] for j in adapters.teacher_indices])
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FeatureInfo = Sequence[dict[str, int]]
StagePair = tuple[int, int]


def _stride_index(info: FeatureInfo) -> dict[int, int]:
    """reduction -> index of the first feature map at that stride."""
    index: dict[int, int] = {}
    for i, stage in enumerate(info):
        index.setdefault(int(stage["reduction"]), i)
    return index


def pair_stages(student_info: FeatureInfo, teacher_info: FeatureInfo,
                pairs: Sequence[Sequence[int]] | None = None, min_reduction: int = 4) -> list[StagePair]:
    """Validated (student_reduction, teacher_reduction) pairings.

    `pairs` None or empty: every stride both networks have, >= `min_reduction` (the stride-2 maps
    are large and low-level), in increasing order. Otherwise each pairing must name a stride the
    student has and one the teacher has; the error lists the strides available.
    """
    student_strides, teacher_strides = _stride_index(student_info), _stride_index(teacher_info)
    if not pairs:
        chosen = [(r, r) for r in sorted(student_strides) if r in teacher_strides and r >= min_reduction]
        if not chosen:
            raise ValueError(f"no stride >= {min_reduction} shared by the student (strides {sorted(student_strides)}) "
                             f"and the teacher (strides {sorted(teacher_strides)}); give the pairs explicitly")
        return chosen
    chosen = []
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{k}]: expected [student_reduction, teacher_reduction], got {list(pair)}")
        student_r, teacher_r = int(pair[0]), int(pair[1])
        if student_r not in student_strides:
            raise ValueError(f"pairs[{k}]: the student has no feature map at stride {student_r}; "
                             f"its strides: {sorted(student_strides)}")
        if teacher_r not in teacher_strides:
            raise ValueError(f"pairs[{k}]: the teacher has no feature map at stride {teacher_r}; "
                             f"its strides: {sorted(teacher_strides)}")
        chosen.append((student_r, teacher_r))
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"pairs: a pairing is repeated: {[list(p) for p in chosen]}")
    return chosen


class FeatureAdapter(nn.Module):
    """(B,C_s,h,w) -> (B,C_t,H_t,W_t): 1x1 conv to the teacher's channels, then bilinear resize."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(int(student_channels), int(teacher_channels), kernel_size=1)

    def forward(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = self.proj(features)
        size = (int(size[0]), int(size[1]))
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class FeatureAdapters(nn.Module):
    """One `FeatureAdapter` per stage pairing (see the module docstring).

    Attributes: `pairs` [(student_reduction, teacher_reduction)], `student_indices` and
    `teacher_indices` (positions in the two feature lists), `teacher_channels`.
    """

    def __init__(self, student_info: FeatureInfo, teacher_info: FeatureInfo,
                 pairs: Sequence[Sequence[int]] | None = None, min_reduction: int = 4) -> None:
        super().__init__()
        self.pairs = pair_stages(student_info, teacher_info, pairs, min_reduction)
        student_strides, teacher_strides = _stride_index(student_info), _stride_index(teacher_info)
        self.student_indices = [student_strides[s] for s, _ in self.pairs]
        self.teacher_indices = [teacher_strides[t] for _, t in self.pairs]
        self.teacher_channels = [int(teacher_info[j]["num_chs"]) for j in self.teacher_indices]
        self.adapters = nn.ModuleList(
            FeatureAdapter(int(student_info[i]["num_chs"]), c)
            for i, c in zip(self.student_indices, self.teacher_channels))

    def __len__(self) -> int:
        return len(self.adapters)

    def forward(self, student_features: Sequence[torch.Tensor],
                teacher_sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The student's full feature list -> one teacher-shaped map per pairing (teacher_sizes[k] = (H_t, W_t))."""
        if len(teacher_sizes) != len(self.adapters):
            raise ValueError(f"teacher_sizes: expected {len(self.adapters)} sizes (one per pairing {self.pairs}), "
                             f"got {len(teacher_sizes)}")
        needed = max(self.student_indices) + 1
        if len(student_features) < needed:
            raise ValueError(f"student_features: expected at least {needed} maps (feature_info order), "
                             f"got {len(student_features)}")
        return [adapter(student_features[i], size)
                for adapter, i, size in zip(self.adapters, self.student_indices, teacher_sizes)]

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}"
