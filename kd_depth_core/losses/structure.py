"""Pair-wise (structure) distillation: match the student's similarity structure to the teacher's.

Small pure functions on tensors. A map (B,C,H,W) is average-pooled to a fixed grid of G_h x G_w
cells (`F.adaptive_avg_pool2d`), each cell becomes a node vector, and the affinity of two nodes is
the cosine similarity of their vectors: an (N x N) matrix per image, N = G_h G_w. The loss is the
mean squared difference of the student's and the teacher's affinity matrices (structured
knowledge distillation, Liu et al. CVPR 2019). Memory and compute are set by the grid, not by the
image: the affinity matrix is (B, N, N) at any input size (a dense per-pixel one would be
(B, HW, HW)). Student and teacher maps may differ in channels and size (e.g. encoder features of
different networks): only the batch size must agree.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GridSize = int | tuple[int, int]


def _grid(grid: GridSize) -> tuple[int, int]:
    rows, cols = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if rows < 1 or cols < 1:
        raise ValueError(f"grid: expected a positive cell count (G or (G_h, G_w)), got {grid!r}")
    return rows, cols


def _check_maps(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected a (B,C,H,W) tensor, got {shape}")


def grid_nodes(x: torch.Tensor, grid: GridSize = 16, patch: int = 1) -> torch.Tensor:
    """Node vectors (B, G_h G_w, C patch^2) of a map (B,C,H,W) on a G_h x G_w grid.

    The map is average-pooled to (G_h patch, G_w patch); cell (i, j) keeps its patch x patch block of
    every channel as its vector (row-major cell order). ``patch`` > 1 gives single-channel maps
    (depth) a vector with inner structure; features use ``patch`` = 1 (their channels).
    """
    _check_maps("x", x)
    if patch < 1:
        raise ValueError(f"patch: expected an integer >= 1, got {patch}")
    rows, cols = _grid(grid)
    pooled = F.adaptive_avg_pool2d(x, (rows * patch, cols * patch))
    return F.unfold(pooled, kernel_size=patch, stride=patch).transpose(1, 2)


def affinity_matrix(nodes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every pair of node vectors: (B,N,D) -> (B,N,N) in [-1, 1] (1 on the diagonal).

    A zero vector has similarity 0 with everything (it is normalised with ``eps``).
    """
    if nodes.ndim != 3:
        raise ValueError(f"nodes: expected a (B,N,D) tensor, got {tuple(nodes.shape)}")
    unit = F.normalize(nodes, dim=-1, eps=eps)
    return unit @ unit.transpose(1, 2)


def pairwise_affinity_loss(student: torch.Tensor, teacher: torch.Tensor, grid: GridSize = 16,
                           patch: int = 1) -> torch.Tensor:
    """mean over images and node pairs of (A_student - A_teacher)^2, A = cosine affinity on the grid. Scalar.

    student (B,C_s,H_s,W_s), teacher (B,C_t,H_t,W_t): e.g. feature maps of the two networks. Values in
    [0, 4]; 0 when both give the same affinities (e.g. equal maps, or maps that differ by a positive
    factor per node). The teacher side carries no gradient.
    """
    _check_maps("student", student)
    _check_maps("teacher", teacher)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student, teacher: expected the same batch size, got {student.shape[0]} and "
                         f"{teacher.shape[0]}")
    if student.shape[1] * patch * patch < 2 or teacher.shape[1] * patch * patch < 2:
        raise ValueError(f"patch: a node needs at least 2 values for a meaningful cosine affinity; maps with "
                         f"{min(student.shape[1], teacher.shape[1])} channel(s) need patch >= 2, got {patch}")
    student_affinity = affinity_matrix(grid_nodes(student.float(), grid, patch))
    with torch.no_grad():
        teacher_affinity = affinity_matrix(grid_nodes(teacher.detach().float(), grid, patch))
    return (student_affinity - teacher_affinity).square().mean()


def log_depth_structure(depth: torch.Tensor, scale_invariant: bool = True) -> torch.Tensor:
    """Depth (B,1,H,W) metres -> log depth, minus each image's mean log depth when ``scale_invariant``.

    A global depth factor s adds log s to every pixel, so the centred map is unchanged by it.
    """
    _check_maps("depth", depth)
    if depth.shape[1] != 1:
        raise ValueError(f"depth: expected a (B,1,H,W) tensor, got {tuple(depth.shape)}")
    log_depth = torch.log(depth.float().clamp_min(1e-6))
    if scale_invariant:
        log_depth = log_depth - log_depth.mean(dim=(1, 2, 3), keepdim=True)
    return log_depth


def depth_structure_loss(student_depth: torch.Tensor, teacher_depth: torch.Tensor, grid: GridSize = 16,
                         patch: int = 4, scale_invariant: bool = True) -> torch.Tensor:
    """Pair-wise affinity loss between two depth maps (B,1,H,W) metres. Scalar in [0, 4].

    Nodes are the ``patch`` x ``patch`` sub-cells of centred log depth in each grid cell
    (:func:`pairwise_affinity_loss`). With ``scale_invariant`` each map is centred on its own mean
    log depth, so a student off by a global factor (a relative teacher, median scaling) is not
    penalised; without it both are centred on the teacher's mean, so a global factor s shifts
    every student node by log s and changes the angles (the loss keeps the scale).
    """
    student_log = log_depth_structure(student_depth, scale_invariant=False)
    teacher_log = log_depth_structure(teacher_depth.detach(), scale_invariant=False)
    teacher_mean = teacher_log.mean(dim=(1, 2, 3), keepdim=True)
    student_mean = student_log.mean(dim=(1, 2, 3), keepdim=True) if scale_invariant else teacher_mean
    return pairwise_affinity_loss(student_log - student_mean, teacher_log - teacher_mean, grid, patch)
