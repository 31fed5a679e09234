"""`kd-depth distill --config config/train/distill_ms_dpt.yaml [key=value ...]`: distil a teacher into a student.

The same trainer and the same code path as `kd-depth train` (`train.train_cli`), for configs whose
`task.name` is a distillation task (kd_ms_dpt, ...): the teacher comes from the task's
`teacher_path`, the student from `model`. Runs in one process or under `torchrun`; the released
student lands in `<train.out_dir>/model.safetensors`.
"""
from __future__ import annotations

import argparse
import sys

from kd_depth_core.train import train_cli


def distillation_tasks() -> list[str]:
    """Names of the registered tasks that live in `kd_depth_core.distill`."""
    import kd_depth_core.distill  # noqa: F401  (registers the distillation tasks)
    from kd_depth_core.train.tasks import list_tasks

    return list_tasks(module_prefix="kd_depth_core.distill")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_cli.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kd_depth_core.config import ConfigError, load_train_config

    try:
        name = load_train_config(args.config, args.overrides).task.name
    except ConfigError as error:
        print(f"kd-depth distill: {error}", file=sys.stderr)
        return 2
    known = distillation_tasks()
    if name not in known:
        print(f"kd-depth distill: {args.config}: task.name: {name!r} is not a distillation task; expected one of "
              f"{', '.join(known)} (train other tasks with `kd-depth train`)", file=sys.stderr)
        return 2
    return train_cli.run(args)
