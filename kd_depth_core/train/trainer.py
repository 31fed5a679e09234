"""The training loop, method-agnostic: data, optimizers, AMP, DDP, logging, validation, checkpoints.

Everything method-specific lives in the task (docs/architecture.md, "Task contract"). Per step,
for each phase in `task.phases`: zero grads, `out = task(batch, phase=phase, step=step)`,
backward, clip, step that phase's optimizer. A non-finite loss (or gradient norm) on any rank
skips that phase's update on every rank: gradients are zeroed, nothing is stepped, and the step
is counted in `nonfinite_steps` and logged.

Reproducibility: the data order of epoch e is a function of (seed, e) only, and a resumed run
starts that epoch's order at the first unseen batch; the RNG states of python/numpy/torch of
every rank are saved, so a resumed run continues exactly like an uninterrupted one (bitwise on
the CPU with `num_workers=0`; with worker processes a dataset that seeds its augmentation per
sample and epoch keeps that property — see `set_epoch`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kd_depth_core.config import ConfigError, OptimConfig, TrainConfig, dump_yaml
from kd_depth_core.train import checkpoint as ckpt
from kd_depth_core.train.distributed import (
    DistEnv,
    all_mean,
    all_true,
    barrier,
    gather_to_main,
    wrap_ddp,
)
from kd_depth_core.train.tasks import Task
from kd_depth_core.utils.atomic import write_text_atomic

log = logging.getLogger("kd_depth_core.train")


# --------------------------------------------------------------------------- data order
class ResumableSampler(DistributedSampler):
    """DistributedSampler (order from seed + epoch, shards per rank) that can start mid-epoch.

    `set_epoch(epoch, start=k)` skips the first k indices of this rank's epoch order without
    loading them. Always drops the tail so every rank sees the same number of samples.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch to `device`; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


# --------------------------------------------------------------------------- optimizers
def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then constant / step decay / cosine."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.scheduler == "step":
        return optim.gamma ** (step // max(optim.step_size, 1))
    if optim.scheduler == "cosine":
        span = max(max_steps - optim.warmup_steps, 1)
        progress = min(max(step - optim.warmup_steps, 0) / span, 1.0)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_optimizer(params: list[nn.Parameter], optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over `params` at base rate `lr`."""
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


_RESUME_FREE_KEYS = {"train.resume", "train.max_steps", "train.progress", "train.log_every", "train.image_every",
                     "train.val_every", "train.val_batches", "train.ckpt_every", "train.keep_checkpoints",
                     "data.num_workers", "train.init_from"}


def config_changes(old: Any, new: Any, ignore: frozenset[str] | set[str] = _RESUME_FREE_KEYS,
                   prefix: str = "") -> list[str]:
    """'key: old -> new' for every dotted leaf key that differs between two resolved configs.

    ``ignore``: dotted keys left out (default: those that may change on resume; ``()`` = none, for
    error messages). A missing side is None.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            out += config_changes(old.get(key), new.get(key), ignore, path)
        return out
    return [] if old == new or prefix in ignore else [f"{prefix}: {old!r} -> {new!r}"]


@dataclass
class TrainResult:
    """What a finished `Trainer.fit()` reports."""

    step: int
    nonfinite_steps: int
    history: list[dict[str, float]] = field(default_factory=list)  # rank-mean losses per log event
    last_losses: dict[str, float] = field(default_factory=dict)  # this rank's parts of the last step
    val_metrics: dict[str, float] = field(default_factory=dict)  # the last validation
    checkpoint: Path | None = None
    model_path: Path | None = None


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `train.amp` gives on `device`, or None (float32).

    CUDA: bf16 or fp16. CPU: bf16 only, and only where oneDNN has native bf16 kernels (AVX512-BF16 or AMX),
    where it makes a DPT-Hybrid forward + backward 1.7x faster; elsewhere bf16 is emulated and slower.
    """
    if amp == "none":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and amp == "bf16" and torch.backends.mkldnn.is_available() \
            and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Runs `cfg.train.max_steps` steps of `task` over `train_dataset`; see the module docstring."""

    def __init__(self, cfg: TrainConfig, task: Task, train_dataset: Dataset, val_dataset: Dataset | None = None,
                 env: DistEnv | None = None) -> None:
        self.cfg, self.env = cfg, env or DistEnv()
        self.device = self.env.device
        self.task = task.to(self.device)
        if cfg.train.channels_last:  # 4-D weights NHWC; activations follow them through every convolution
            self.task = self.task.to(memory_format=torch.channels_last)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.out_dir = Path(cfg.train.out_dir)
        self.nonfinite_steps = 0
        self._checkpoint_exclude = tuple(getattr(task, "checkpoint_exclude", ()))

        # One optimizer (+ scheduler, + fp16 scaler) per phase, over that phase's parameters only.
        self.phases = list(task.phases)
        if not self.phases:
            raise ValueError(f"{type(task).__name__}.phases is empty; expected at least one phase")
        unknown = sorted(set(cfg.optim.phase_lr) - set(self.phases))
        if unknown:
            raise ConfigError(f"{cfg.source}: optim.phase_lr.{unknown[0]}: unknown phase; "
                              f"phases of task {cfg.task.name!r}: {', '.join(self.phases)}")
        self.phase_params: dict[str, list[nn.Parameter]] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        for phase in self.phases:
            params = [p for p in task.parameters_for(phase) if p.requires_grad]
            if not params:
                raise ValueError(f"{type(task).__name__}.parameters_for({phase!r}) has no trainable parameters")
            self.phase_params[phase] = params
            self.optimizers[phase] = build_optimizer(params, cfg.optim, cfg.optim.phase_lr.get(phase, cfg.optim.lr))
            self.schedulers[phase] = torch.optim.lr_scheduler.LambdaLR(
                self.optimizers[phase], lambda s: lr_factor(s, cfg.optim, cfg.train.max_steps))

        # Mixed precision: CUDA (bf16, fp16), and bf16 on CPUs with native bf16 arithmetic (AVX512-BF16, AMX).
        self.amp_dtype = amp_dtype(cfg.train.amp, self.device)
        if cfg.train.amp != "none" and self.amp_dtype is None and self.env.is_main:
            log.warning("train.amp=%s ignored: on %s mixed precision needs CUDA, or bf16 on a CPU with native "
                        "bf16 (AVX512-BF16 or AMX); training in float32", cfg.train.amp, self.device)
        self.scalers = ({p: torch.amp.GradScaler("cuda") for p in self.phases}
                        if self.amp_dtype == torch.float16 else {})

        self.model = wrap_ddp(self.task, self.env, find_unused_parameters=bool(task.find_unused_parameters))

        # Data.
        batch_size = cfg.data.batch_size
        self.sampler = ResumableSampler(train_dataset, self.env.world_size, self.env.rank, shuffle=True,
                                        seed=cfg.train.seed)
        self.steps_per_epoch = self.sampler.num_samples // batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{cfg.source}: data.batch_size: the training split has {len(train_dataset)} samples, "
                              f"fewer than data.batch_size ({batch_size}) x processes ({self.env.world_size}); "
                              "lower data.batch_size or add sequences to the split")
        self.loader_generator = torch.Generator()
        self.train_loader = DataLoader(train_dataset, batch_size=batch_size, sampler=self.sampler, drop_last=True,
                                       num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                                       generator=self.loader_generator)
        self.val_loader = None
        if val_dataset is not None and self.env.is_main:
            self.val_loader = DataLoader(val_dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=cfg.data.num_workers, generator=torch.Generator())

        self.writer = None
        self._val_note_given = False
        self.train_focal_px: float | None = None  # fx of the training camera at the training width
        self.train_baseline_m: float | None = None  # stereo baseline of the training rig (metres), None = unknown

    # ----------------------------------------------------------------------- state
    def _task_state(self) -> dict[str, torch.Tensor]:
        state = self.task.state_dict()
        return {k: v for k, v in state.items() if not k.startswith(self._checkpoint_exclude)} \
            if self._checkpoint_exclude else state

    def state_dict(self, step: int, rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint contents (tensors and primitives only)."""
        return {
            "step": int(step),
            "nonfinite_steps": int(self.nonfinite_steps),
            "world_size": int(self.env.world_size),
            "task_name": self.cfg.task.name,
            "task": self._task_state(),
            "optimizers": {p: o.state_dict() for p, o in self.optimizers.items()},
            "schedulers": {p: s.state_dict() for p, s in self.schedulers.items()},
            "scalers": {p: s.state_dict() for p, s in self.scalers.items()},
            "rng": rng_per_rank,
            "config": self.cfg.to_dict(),
            # the deployed network's depth range (m), defaults included: a later `train.init_from` checks it
            "depth_range": [float(self.task.min_depth), float(self.task.max_depth)],
        }

    def load_state(self, state: dict[str, Any], source: str = "checkpoint") -> int:
        """Restore a checkpoint's task, optimizer, scheduler, scaler and this rank's RNG state; return its step."""
        try:
            ckpt.load_task_state(self.task, state["task"], source)
        except RuntimeError as error:
            saved = state.get("config")
            changed = config_changes(saved, self.cfg.to_dict(), ignore=frozenset()) if isinstance(saved, dict) else []
            raise ckpt.CheckpointError(
                f"{source}: the checkpoint does not fit this task's networks (written with another config"
                f"{': ' + ', '.join(changed[:6]) if changed else ''}). Resume with the config it was written with, "
                f"or start afresh with another train.out_dir or train.resume=''. ({str(error).splitlines()[0]})"
            ) from None
        for kind, current in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            saved = state.get(kind, {})
            if set(saved) != set(current):
                raise ckpt.CheckpointError(f"{source}: {kind} for phases {sorted(saved)} but the task has "
                                           f"{sorted(current)}")
            for phase, obj in current.items():
                obj.load_state_dict(saved[phase])
        for phase, scaler in self.scalers.items():  # fp16 loss scales; absent when the saved run was not fp16
            if phase in state.get("scalers", {}):
                scaler.load_state_dict(state["scalers"][phase])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        rng = state.get("rng") or []
        if len(rng) == self.env.world_size:
            ckpt.set_rng_state(rng[self.env.rank])
        else:
            ckpt.seed_everything(self.cfg.train.seed + self.env.rank + int(state["step"]))
            if self.env.is_main:
                log.warning("%s: saved with %d process(es), resuming with %d: RNG streams are re-seeded, "
                            "so the run continues correctly but not bit-for-bit", source, len(rng),
                            self.env.world_size)
        return int(state["step"])

    def _resume_path(self) -> Path | None:
        resume = self.cfg.train.resume
        if not resume:
            return None
        if resume == "auto":
            return ckpt.latest_checkpoint(self.out_dir)
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"{self.cfg.source}: train.resume: checkpoint {path} not found")
        return path

    def save(self, step: int) -> Path | None:
        """Write a checkpoint from rank 0 (every rank must call this: RNG states are gathered)."""
        rngs = gather_to_main(ckpt.rng_state(), self.env)
        path = None
        if self.env.is_main:
            path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.out_dir, step), self.state_dict(step, rngs or []))
            ckpt.prune_checkpoints(self.out_dir, self.cfg.train.keep_checkpoints)
        barrier(self.env)
        return path

    # ----------------------------------------------------------------------- one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """All phases of one step; returns the loss parts (prefixed "<phase>/" when there are several)."""
        parts: dict[str, float] = {}
        skipped = []
        for phase in self.phases:
            optimizer, params = self.optimizers[phase], self.phase_params[phase]
            scaler = self.scalers.get(phase)
            self.task.zero_grad(set_to_none=True)
            with self._autocast():
                out = self.model(batch, phase=phase, step=step)
            loss = out.get("loss") if isinstance(out, dict) else None
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise TypeError(f"{type(self.task).__name__}.forward(phase={phase!r}) must return a dict with a "
                                f"scalar tensor 'loss'; got {type(out).__name__}")
            if not loss.requires_grad:
                raise RuntimeError(f"{type(self.task).__name__}.forward(phase={phase!r}): 'loss' has no gradient "
                                   f"(no trainable parameter reaches it)")
            finite = all_true(bool(torch.isfinite(loss.detach())), self.env)
            # Backward even for a non-finite loss: every DDP forward needs its backward on every rank.
            (scaler.scale(loss) if scaler else loss).backward()
            if finite:
                if scaler:
                    scaler.unscale_(optimizer)
                max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                if scaler:  # fp16: the scaler skips inf/NaN gradients itself and lowers its scale
                    scaler.step(optimizer)
                    scaler.update()
                elif torch.isfinite(grad_norm):
                    optimizer.step()
                else:
                    finite = False
            if not finite:
                self.task.zero_grad(set_to_none=True)
                skipped.append(phase)
                continue
            prefix = f"{phase}/" if len(self.phases) > 1 else ""
            for name, value in out.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    parts[prefix + name] = float(value.detach())
            parts[prefix + "grad_norm"] = float(grad_norm)
        for scheduler in self.schedulers.values():
            with warnings.catch_warnings():  # "scheduler stepped before optimizer" after a skipped first step
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
        if skipped:
            self.nonfinite_steps += 1
            if self.env.is_main:
                log.warning("step %d: non-finite loss or gradient in phase(s) %s; update skipped "
                            "(%d skipped so far)", step, ", ".join(skipped), self.nonfinite_steps)
        return parts

    # ----------------------------------------------------------------------- validation and visuals
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Depth metrics (eval.metrics.compute_depth_metrics) of `task.predict_depth` on the validation set.

        Runs on rank 0 only; returns {} when there is nothing to validate.
        """
        if self.val_loader is None:
            return {}
        from kd_depth_core.eval.metrics import DepthMetricsAccumulator

        accumulator = DepthMetricsAccumulator()
        was_training = self.task.training
        self.task.eval()
        try:
            for index, batch in enumerate(self.val_loader):
                if 0 < self.cfg.train.val_batches <= index:
                    break
                if "depth_gt" not in batch:
                    self._note_once("validation skipped: the validation set has no ground-truth depth")
                    return {}
                batch = move_to_device(batch, self.device)
                depth = self.task.predict_depth(batch)
                if depth is None:
                    self._note_once(f"validation skipped: task {self.cfg.task.name!r} does not predict depth")
                    return {}
                accumulator.update(batch["depth_gt"], depth.float(), min_depth=self.task.min_depth,
                                   max_depth=self.task.max_depth, median_scaling=self.task.scale_kind != "metric",
                                   names=batch.get("frame_key"), skip_empty=True)
        finally:
            self.task.train(was_training)
        return accumulator.mean() if len(accumulator) else {}

    def _note_once(self, message: str) -> None:
        if not self._val_note_given:
            log.info(message)
            self._val_note_given = True

    @torch.no_grad()
    def _log_visuals(self, batch: dict[str, Any], step: int) -> None:
        was_training = self.task.training
        self.task.eval()
        try:
            panels = self.task.visuals(batch)
        finally:
            self.task.train(was_training)
        for name, image in panels.items():
            image = image.detach().float().clamp(0, 1).cpu()
            self.writer.add_image(name, image[0] if image.ndim == 4 else image, step)

    # ----------------------------------------------------------------------- the loop
    def _batches(self, start_step: int) -> Iterator[dict[str, Any]]:
        """Training batches from step `start_step` on, epoch after epoch, in the deterministic order."""
        epoch, offset = divmod(start_step, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch, offset * self.cfg.data.batch_size)
            self.loader_generator.manual_seed(self.cfg.train.seed * 100_003 + epoch)  # worker seeds
            if hasattr(self.train_dataset, "set_epoch"):
                self.train_dataset.set_epoch(epoch)
            yield from self.train_loader
            epoch, offset = epoch + 1, 0

    def _open_outputs(self) -> None:
        if not self.env.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out_dir / "config.yaml", dump_yaml(self.cfg))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def _write_log(self, record: dict[str, Any]) -> None:
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def fit(self) -> TrainResult:
        """Train to `train.max_steps` (resuming first when `train.resume` says so); export at the end."""
        from tqdm.auto import tqdm

        cfg, env = self.cfg, self.env
        tcfg = cfg.train
        resume_path = self._resume_path()
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed training size: let cuDNN pick its fastest kernels
        ckpt.seed_everything(tcfg.seed + env.rank)
        step = 0
        if resume_path is not None:
            state = ckpt.load_checkpoint(resume_path, map_location=self.device)
            step = self.load_state(state, str(resume_path))
            if env.is_main:
                log.info("resumed from %s at step %d", resume_path, step)
                changed = config_changes(state["config"], cfg.to_dict())
                if changed:
                    log.warning("config differs from the checkpoint's: %s", "; ".join(changed[:10]))
        else:
            if tcfg.resume == "auto" and env.is_main:
                log.info("train.resume=auto: no checkpoint in %s; starting fresh", ckpt.checkpoint_dir(self.out_dir))
            if tcfg.init_from:  # every rank loads the same file, so the replicas start equal
                parts = ckpt.init_from_model(self.task, tcfg.init_from, f"{cfg.source}: train.init_from")
                if env.is_main:
                    log.info("%s initialised from %s (optimizer and step start afresh)", ", ".join(parts),
                             tcfg.init_from)
        self._open_outputs()
        result = TrainResult(step=step, nonfinite_steps=self.nonfinite_steps)
        window: dict[str, list[float]] = defaultdict(list)
        window_start = time.perf_counter()
        bar = tqdm(total=tcfg.max_steps, initial=step, desc="train", dynamic_ncols=True,
                   disable=not (env.is_main and tcfg.progress))
        self.task.train()
        try:
            batches = self._batches(step)
            first_step = step
            while step < tcfg.max_steps:
                batch = move_to_device(next(batches), self.device)
                if self.train_focal_px is None and isinstance(batch.get("K"), torch.Tensor):
                    self.train_focal_px = float(batch["K"][0, 0, 0])
                if self.train_baseline_m is None and step == first_step and isinstance(batch.get("baseline"),
                                                                                      torch.Tensor):
                    baseline = float(batch["baseline"][0])  # 0 = unknown (docs/architecture.md)
                    self.train_baseline_m = baseline if baseline > 0 else None
                parts = self.train_step(batch, step)
                result.last_losses = parts
                for name, value in parts.items():
                    window[name].append(value)
                step += 1
                bar.update(1)
                if tcfg.log_every > 0 and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
                    means = all_mean({k: sum(v) / len(v) for k, v in window.items()}, env)
                    elapsed = time.perf_counter() - window_start
                    record = {"step": step, **means, "nonfinite_steps": self.nonfinite_steps,
                              "steps_per_s": len(next(iter(window.values()), [])) / max(elapsed, 1e-9)}
                    for phase, sched in self.schedulers.items():
                        record[f"lr/{phase}"] = sched.get_last_lr()[0]
                    result.history.append(record)
                    if env.is_main:
                        for name, value in record.items():
                            if name != "step":
                                self.writer.add_scalar(f"train/{name}", value, step)
                        self._write_log(record)
                        if "loss" in means:
                            bar.set_postfix(loss=f"{means['loss']:.4f}")
                    window.clear()
                    window_start = time.perf_counter()
                if env.is_main and tcfg.image_every > 0 and step % tcfg.image_every == 0:
                    self._log_visuals(batch, step)
                if tcfg.val_every > 0 and step % tcfg.val_every == 0 and self.val_dataset is not None:
                    if env.is_main:
                        result.val_metrics = self.validate()
                        for name, value in result.val_metrics.items():
                            self.writer.add_scalar(f"val/{name}", value, step)
                        if result.val_metrics:
                            self._write_log({"step": step, **{f"val/{k}": v for k, v in result.val_metrics.items()}})
                    barrier(env)
                if (tcfg.ckpt_every > 0 and step % tcfg.ckpt_every == 0) or step == tcfg.max_steps:
                    result.checkpoint = self.save(step)
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.flush()
        result.step, result.nonfinite_steps = step, self.nonfinite_steps
        if env.is_main:
            result.model_path = self.export()
            self.writer.close()
        barrier(env)
        return result

    def export(self) -> Path | None:
        """Save `task.deploy_model()` with `models.io.save_model` as `<out_dir>/model.safetensors`.

        Skipped (with a warning) when the deploy network was not built by `models.create_model`.
        """
        from kd_depth_core.models.io import save_model

        model = self.task.deploy_model()
        if not hasattr(model, "model_spec"):
            log.warning("deploy model %s was not built by models.create_model (no model_spec): not exported; "
                        "the training checkpoint holds its weights", type(model).__name__)
            return None
        path = self.out_dir / "model.safetensors"
        save_model(path, model, self.task.deploy_metadata(focal_length_px=self.train_focal_px,
                                                          baseline_m=self.train_baseline_m))
        log.info("exported %s", path)
        return path
