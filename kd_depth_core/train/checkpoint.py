"""Resumable training checkpoints: tensors and primitives only, written atomically.

A checkpoint is a `torch.save`d dict that `torch.load(path, weights_only=True)` loads (no pickled
objects). Keys (format version 1):

- `format` ("kd-depth-train-checkpoint"), `version` (1), `step` (optimizer steps done),
  `nonfinite_steps`, `world_size`
- `task`: the task's state_dict (minus `Task.checkpoint_exclude` prefixes, e.g. a frozen teacher)
- `optimizers`, `schedulers`, `scalers`: {phase: state_dict}
- `rng`: one entry per rank: {python, numpy, torch, cuda} generator states (see `rng_state`)
- `config`: the resolved TrainConfig as plain data (`TrainConfig.to_dict()`)

Files live in `<out_dir>/checkpoints/step_<step:08d>.pt`; `latest` there names the newest one.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_depth_core.utils.atomic import atomic_file, write_text_atomic

CHECKPOINT_FORMAT = "kd-depth-train-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a kd-depth training checkpoint."""


# --------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Generator states of python `random`, numpy's global generator, torch (CPU and every CUDA device).

    Only tensors and primitives, so the dict survives `torch.load(weights_only=True)`.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            torch.cuda.set_rng_state(cuda[0].cpu())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU + CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- files
def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    """`<out_dir>/checkpoints/step_<step:08d>.pt`."""
    return checkpoint_dir(out_dir) / f"step_{int(step):08d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Step checkpoints under `out_dir`, oldest first."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint: the one `latest` names if it exists, else the highest step; None if none."""
    pointer = checkpoint_dir(out_dir) / "latest"
    if pointer.is_file():
        candidate = checkpoint_dir(out_dir) / pointer.read_text(encoding="utf-8").strip()
        if candidate.is_file():
            return candidate
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write `state` (tensors and primitives) to `path` and point `latest` at it."""
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)
    write_text_atomic(path.parent / "latest", path.name + "\n")
    return path


def prune_checkpoints(out_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints (keep <= 0 keeps all); returns the deleted paths."""
    if keep <= 0:
        return []
    old = list_checkpoints(out_dir)[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def load_task_state(task: torch.nn.Module, task_state: dict[str, Any], source: str = "checkpoint") -> None:
    """Load a checkpoint's `task` entry into ``task``; keys under ``task.checkpoint_exclude`` (a frozen teacher,
    never saved) may be missing, every other key must match. A shape mismatch raises torch's RuntimeError."""
    exclude = tuple(getattr(task, "checkpoint_exclude", ()))
    result = task.load_state_dict(task_state, strict=not exclude)
    if exclude:
        missing = [k for k in result.missing_keys if not k.startswith(exclude)]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{source}: task weights do not match: missing {missing[:5]}, "
                                  f"unexpected {result.unexpected_keys[:5]}")


def init_from_model(task: torch.nn.Module, path: str | os.PathLike, where: str = "train.init_from") -> list[str]:
    """Start the task's deployed network (`task.deploy_model()`) from a released file or a checkpoint: fine-tuning.

    `path` is a released model file (`.safetensors`: the network only) or a training checkpoint (`.pt`,
    `init_from_checkpoint`: the network and every part the two tasks share, e.g. a monocular run's pose
    network). Only weights are loaded; the optimizer, schedule and step start afresh. The file's tensors
    must match the network's keys and shapes exactly, and a depth network's sigmoid disparity must mean
    the same depths (the file's depth range equals the task's `min_depth`/`max_depth`). Errors are
    one-line `CheckpointError`s that start with `where` and name the file. Returns the parts loaded.
    """
    if Path(path).suffix == ".pt":
        return init_from_checkpoint(task, path, where)
    from kd_depth_core.models.io import ModelFileError, read_checked

    try:
        tensors, metadata = read_checked(path)
    except (ModelFileError, FileNotFoundError) as error:
        raise CheckpointError(f"{where}: {error}") from None
    network = task.deploy_model()
    state = network.state_dict()
    missing = [k for k in state if k not in tensors]
    unexpected = [k for k in tensors if k not in state]
    reshaped = [k for k in state if k in tensors and tuple(tensors[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or reshaped:
        found = (f"missing {len(missing)} (e.g. {missing[0]})" if missing else
                 f"unexpected {len(unexpected)} (e.g. {unexpected[0]})" if unexpected else
                 f"{len(reshaped)} of another shape (e.g. {reshaped[0]})")
        raise CheckpointError(f"{where}: {path} holds a {metadata.model_name} {metadata.model_kwargs} whose weights do "
                              f"not fit this run's {type(network).__name__} ({found}); set model.name/model.kwargs to "
                              "the file's")
    _check_depth_range(task, (metadata.min_depth, metadata.max_depth), path, where)
    with torch.no_grad():
        network.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()})
    return ["network"]


def _check_depth_range(task: torch.nn.Module, file_range: tuple[float | None, float | None], path: Any,
                       where: str) -> None:
    task_range = (getattr(task, "min_depth", None), getattr(task, "max_depth", None))
    if None not in task_range and None not in file_range and not np.allclose(task_range, file_range):
        raise CheckpointError(f"{where}: {path} predicts depth {file_range[0]:g}-{file_range[1]:g} m, this "
                              f"task {task_range[0]:g}-{task_range[1]:g} m; set the task's min_depth/max_depth to the "
                              "file's so its disparities keep their meaning")


def _fits(module_state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> bool:
    return (bool(module_state) and tensors.keys() == module_state.keys()
            and all(tuple(tensors[k].shape) == tuple(v.shape) for k, v in module_state.items()))


def _under(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def init_from_checkpoint(task: torch.nn.Module, path: str | os.PathLike, where: str = "train.init_from") -> list[str]:
    """Start a task from another run's training checkpoint (`.pt`); returns the parts loaded, e.g.
    ``["network (from depth_net)", "pose_net"]``.

    The deployed network starts from the checkpoint's one part whose keys and shapes are exactly the
    network's, whatever the source task called it (`depth_net` of a self-supervised run, `student` of a
    distillation). Every other part of this task found in the checkpoint under the same name with the
    same keys and shapes (a pose network) starts from it too; the rest (a translator, adapters) stays as
    initialised. The source's depth range (stored in the checkpoint; in an older one, where its config
    gives one) must equal this task's.
    """
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"{where}: {error}") from None
    tensors = state["task"]
    network = task.deploy_model()
    wanted = network.state_dict()
    prefixes = sorted({k.split(".", 1)[0] for k in tensors})
    source = next((p for p in prefixes if _fits(wanted, _under(tensors, p))), None)
    if source is None:
        raise CheckpointError(f"{where}: {path} holds no network that fits this run's {type(network).__name__} "
                              f"(its parts: {', '.join(prefixes) or 'none'}); set model.name/model.kwargs to the "
                              "source run's")
    _check_depth_range(task, _checkpoint_depth_range(state), path, where)
    loads = {"network": (network, _under(tensors, source))}
    for name, module in task.named_children():
        part = _under(tensors, name)
        if module is not network and _fits(module.state_dict(), part):
            loads[name] = (module, part)
    with torch.no_grad():
        for module, part in loads.values():
            own = module.state_dict()
            module.load_state_dict({k: v.to(own[k].dtype) for k, v in part.items()})
    return [f"network (from {source})" if name == "network" else name for name in loads]


def _checkpoint_depth_range(state: dict[str, Any]) -> tuple[float | None, float | None]:
    """The source network's depth range (m), as the trainer stores it (`depth_range`, task defaults included).
    A checkpoint written before that key existed gives it only where its config set `task.kwargs.min_depth`/
    `max_depth`; otherwise (None, None): not checked."""
    stored = state.get("depth_range")
    if isinstance(stored, (list, tuple)) and len(stored) == 2:
        return float(stored[0]), float(stored[1])
    config = state["config"] if isinstance(state["config"], dict) else {}
    kwargs = (config.get("task") or {}).get("kwargs") or {}
    return kwargs.get("min_depth"), kwargs.get("max_depth")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with `torch.load(weights_only=True)` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise CheckpointError(f"{path}: cannot load as a weights-only checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a kd-depth training checkpoint (format {found!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r} is not supported "
                              f"(expected {CHECKPOINT_VERSION})")
    for key in ("step", "task", "optimizers", "config"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return state
