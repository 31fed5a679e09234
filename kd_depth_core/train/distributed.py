"""Single-process or torch.distributed training from the same command.

Under `torchrun --nproc_per_node N` (or any launcher setting RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT) the process group is initialised from `env://`: NCCL on CUDA, Gloo on
the CPU. Without those variables everything runs in one process and the collectives below are
no-ops, so callers never branch on "is this distributed?".
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank among `world_size`, its GPU index, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""  # "" when not distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer") from exc


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU when CUDA is available, else the CPU; 'cuda' fails clearly without CUDA."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device: expected 'auto', 'cpu' or 'cuda', got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: 'cuda' requested but torch.cuda.is_available() is False")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Initialise torch.distributed from the environment when WORLD_SIZE > 1; else a one-process DistEnv."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    torch_device = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistEnv(device=torch_device)
    if not 0 <= rank < world_size:
        raise ValueError(f"environment: RANK={rank} is outside 0..WORLD_SIZE-1 ({world_size - 1})")
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=torch_device if torch_device.type == "cuda" else None)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device, backend=backend)


def current_env() -> DistEnv:
    """The DistEnv of an already initialised process group (one process when there is none).

    For code that is not handed the trainer's env (e.g. a task opening a shared cache).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, backend=backend)


def cleanup(env: DistEnv) -> None:
    """Tear the process group down (safe to call when not distributed)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in one process)."""
    if env.distributed:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_true(flag: bool, env: DistEnv) -> bool:
    """True only when `flag` is True on every rank (so all ranks take the same branch)."""
    if not env.distributed:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not env.distributed or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= env.world_size
    return {k: float(v) for k, v in zip(keys, tensor.tolist())}


def gather_to_main(obj: Any, env: DistEnv) -> list[Any] | None:
    """Collect one picklable object per rank on rank 0 (list indexed by rank); None on other ranks.

    The objects travel between our own processes only; nothing is unpickled from files.
    """
    if not env.distributed:
        return [obj]
    out: list[Any] | None = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank."""
    if not env.distributed:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap `module` in DistributedDataParallel when distributed and it has trainable parameters.

    DDP synchronises the gradients of every parameter with requires_grad (frozen teachers are
    left alone) and broadcasts rank 0's weights and buffers at construction.
    """
    if not env.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module
