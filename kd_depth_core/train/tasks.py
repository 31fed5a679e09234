"""The task contract (docs/architecture.md, "Task contract") and the task registry.

A task owns the networks and the losses of one training method; the trainer only runs the loop.

    @register_task("my_method")
    class MyTask(Task):
        @dataclass
        class Options:            # validated from `task.kwargs` of the config
            weight: float = 1.0

        def __init__(self, cfg: TrainConfig, options: Options): ...
        def forward(self, batch, phase="main", step=0): return {"loss": ..., "part": ...}
        def deploy_model(self): return self.student

    task = create_task("my_method", cfg)   # cfg: TrainConfig
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from kd_depth_core.config import ConfigError, TrainConfig, parse_section

ScaleKind = Literal["metric", "relative"]


class Task(nn.Module):
    """Base class: one training method. Subclasses set `Options` and implement `forward`/`deploy_model`.

    Attributes a subclass may set:
    - `phases`: one optimizer per phase, stepped in this order every step (GAN: generator, discriminator).
    - `find_unused_parameters`: passed to DDP; needed when a phase's forward leaves trainable
      parameters unused (default: True when there is more than one phase).
    - `scale_kind`: "metric" or "relative" (median-scaled at validation).
    - `min_depth`, `max_depth`: depth range in metres of the deployed network's disparity output.
    - `deploy_stereo`, `deploy_has_uncertainty`: the deployed network takes (left, right) / returns log_sigma.
    - `checkpoint_exclude`: state_dict key prefixes left out of training checkpoints (e.g. a frozen,
      separately stored teacher: ("teacher.",)); they are rebuilt by the task's constructor.
    """

    @dataclass
    class Options:
        """No options by default."""

    phases: ClassVar[list[str]] = ["main"]
    scale_kind: ScaleKind = "relative"
    min_depth: float = 0.1
    max_depth: float = 100.0
    deploy_stereo: bool = False
    deploy_has_uncertainty: bool = False
    checkpoint_exclude: tuple[str, ...] = ()

    @property
    def find_unused_parameters(self) -> bool:
        return len(self.phases) > 1

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Task:
        """Validate `cfg.task.kwargs` against `cls.Options` and build the task."""
        options = parse_section(cls.Options, dict(cfg.task.kwargs), f"{cfg.source}: task.kwargs")
        return cls(cfg, options)

    def __init__(self, cfg: TrainConfig | None = None, options: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.options = options if options is not None else self.Options()

    def parameters_for(self, phase: str) -> Iterable[nn.Parameter]:
        """Trainable parameters stepped by `phase`'s optimizer (default: every trainable one)."""
        if phase not in self.phases:
            raise KeyError(f"{type(self).__name__}: unknown phase {phase!r}; phases: {', '.join(self.phases)}")
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        """Return {'loss': scalar tensor, <part>: scalar tensor, ...} for one phase of one step."""
        raise NotImplementedError

    def dataset_options(self) -> dict[str, Any]:
        """Extra `SequenceDataset` keyword arguments this task needs (e.g. {"load_semantic": True})."""
        return {}

    def deploy_model(self) -> nn.Module:
        """The network that is exported (no teacher, adapters, pose net or discriminators)."""
        raise NotImplementedError

    def deploy_metadata(self, focal_length_px: float | None = None, baseline_m: float | None = None) -> Any:
        """`models.io.ModelMetadata` saved with the exported network (input size, depth range, scale kind).

        `focal_length_px`: the training camera's fx at the training width (the trainer passes the
        first training batch's K[0, 0]); `baseline_m`: the training rig's stereo baseline in metres
        (the first training batch's `baseline` when > 0; None = unknown). The deploy model must come
        from `models.create_model`.
        """
        from kd_depth_core.models.io import ModelMetadata

        if self.cfg is None:
            raise RuntimeError(f"{type(self).__name__}: deploy_metadata needs the training config")
        height, width = self.cfg.data.size
        return ModelMetadata.from_model(
            self.deploy_model(), input_height=int(height), input_width=int(width),
            min_depth=float(self.min_depth), max_depth=float(self.max_depth), scale_kind=self.scale_kind,
            focal_length_px=focal_length_px, baseline_m=baseline_m, stereo=bool(self.deploy_stereo),
            has_uncertainty=bool(self.deploy_has_uncertainty), training_config=self.cfg.to_dict())

    @torch.no_grad()
    def predict_depth(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Depth (B,1,H,W) in metres for validation, or None when the task cannot predict depth."""
        return None

    @torch.no_grad()
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Image panels for TensorBoard: name -> (3,H,W) or (1,H,W) float in [0, 1]."""
        return {}


def to_panel(rgb: np.ndarray) -> torch.Tensor:
    """A TensorBoard image panel for `Task.visuals`: (H,W,3) uint8 -> (3,H,W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255.0


# --------------------------------------------------------------------------- registry
_TASKS: dict[str, type[Task]] = {}

# Modules that register tasks when imported; `create_task` imports them lazily, in order, until the
# requested task is registered (a module that does not exist yet is skipped).
TASK_MODULES: list[str] = [
    "kd_depth_core.train.self_supervised",
    "kd_depth_core.train.segmentation_task",
    "kd_depth_core.train.supervised",
    "kd_depth_core.distill",
    "kd_depth_core.distill.kd_ms_dpt",
    "kd_depth_core.distill.lumde",
    "kd_depth_core.distill.adu_depth",
    "kd_depth_core.distill.xdistill",
    "kd_depth_core.distill.foundation",
]


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a Task subclass available to `create_task(name, cfg)`."""

    def decorator(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}): expected a Task subclass, got {cls!r}")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"register_task({name!r}): {cls.__name__}.Options must be a dataclass")
        existing = _TASKS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"task {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        _TASKS[name] = cls
        return cls

    return decorator


def _import_task_modules(until: str | None = None) -> list[str]:
    """Import TASK_MODULES (stopping once task `until` is registered); returns their import errors."""
    errors = []
    for module in TASK_MODULES:
        if until is not None and until in _TASKS:
            break
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name and module.startswith(exc.name):
                continue  # that module is not part of this installation
            errors.append(f"{module}: {exc}")
    return errors


def list_tasks(module_prefix: str = "") -> list[str]:
    """Names of all registered tasks; with ``module_prefix``, those whose class lives under it
    (e.g. ``kd_depth_core.distill`` for the distillation methods)."""
    _import_task_modules()
    return sorted(name for name, cls in _TASKS.items() if cls.__module__.startswith(module_prefix))


def create_task(name: str, cfg: TrainConfig) -> Task:
    """Build the registered task `name` from the full training config (options from `cfg.task.kwargs`)."""
    errors = _import_task_modules(until=name)
    if name not in _TASKS:
        detail = f" (modules that failed to import: {'; '.join(errors)})" if errors else ""
        raise ConfigError(f"{cfg.source}: task.name: unknown task {name!r}; registered tasks: "
                          f"{', '.join(sorted(_TASKS)) or '(none)'}{detail}")
    return _TASKS[name].from_config(cfg)
