"""`kd-depth train --config config/train/<name>.yaml [key=value ...]`: train any registered task.

The same command runs in one process or under `torchrun --nproc_per_node N` (one process per
GPU; multi-node with torchrun's --nnodes/--rdzv-endpoint). Outputs land in `train.out_dir`:
config.yaml, log.jsonl, tensorboard/, checkpoints/, and model.safetensors at the end.
`train.resume=auto` continues from the newest checkpoint there.

Python: `train_from_config(load_train_config(path, overrides))` does the same and returns a TrainResult.
"""
from __future__ import annotations

import argparse
import logging
import sys

from torch.utils.data import Dataset

from kd_depth_core.config import (
    ConfigError,
    TrainConfig,
    dump_yaml,
    load_train_config,
    load_yaml_mapping,
    name_the_override,
)
from kd_depth_core.train.tasks import Task

log = logging.getLogger("kd_depth_core.train")


def build_datasets(cfg: TrainConfig, task: Task) -> tuple[Dataset, Dataset | None]:
    """Training and validation `SequenceDataset`s from `cfg.data` (+ the task's `dataset_options()`).

    Validation uses `data.val_split` with ground-truth depth; it is left out (with a log line) when
    that split is empty, missing or has no depth.
    """
    from kd_depth_core.data.dataset import SequenceDataset
    from kd_depth_core.data.sequence import SequenceError

    data = cfg.data
    if not data.root:
        raise ConfigError(f"{cfg.source}: data.root: expected the folder of training sequences "
                          f"(e.g. data.root=/data/my_robot; make one with `kd-depth synth` or `kd-depth convert-bag`)")
    options = {"offsets": data.offsets, "stereo": data.stereo, **task.dataset_options()}
    ground_truth = [k for k in ("load_depth", "load_semantic") if options.get(k)]
    if not 0.0 <= data.flip <= 1.0 or (data.flip > 0 and (not data.stereo or ground_truth)):
        raise ConfigError(f"{cfg.source}: data.flip: expected a probability in [0, 1] of training on the mirrored "
                          f"right view, which needs data.stereo: true and a task without ground truth; got "
                          f"{data.flip!r} (stereo: {data.stereo}, task {cfg.task.name!r} loads: "
                          f"{', '.join(ground_truth) or 'no ground truth'})")
    train = SequenceDataset(data.root, split=data.split, size=data.size, augment=data.augment, seed=cfg.train.seed,
                            flip=data.flip, **options)
    val = None
    if data.val_split and cfg.train.val_every > 0:
        try:
            val = SequenceDataset(data.root, split=data.val_split, size=data.size, augment=False, load_depth=True,
                                  **{**options, "offsets": ()})
        except (SequenceError, FileNotFoundError, ValueError) as error:
            log.warning("validation disabled: %s", error)
    return train, val


def train_from_config(cfg: TrainConfig):
    """Initialise (distributed) processes, build the task and data, train; returns a `TrainResult`."""
    from kd_depth_core.train.checkpoint import seed_everything
    from kd_depth_core.train.distributed import cleanup, init_distributed
    from kd_depth_core.train.tasks import create_task
    from kd_depth_core.train.trainer import Trainer

    env = init_distributed(cfg.train.device)
    try:
        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        task = create_task(cfg.task.name, cfg)
        train, val = build_datasets(cfg, task)
        if env.is_main:
            log.info("task %s, model %s, %d training samples%s, %d process(es) on %s", cfg.task.name,
                     cfg.model.name, len(train), f", {len(val)} validation" if val is not None else "",
                     env.world_size, env.device)
        return Trainer(cfg, task, train, val, env).fit()
    finally:
        cleanup(env)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML (see config/train/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. data.root=/data/seqs optim.lr=2e-4 train.resume=auto")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _file_mapping(path) -> dict:
    """The config file's mapping before overrides ({} when it cannot be read: the error said so already)."""
    try:
        return load_yaml_mapping(path)
    except ConfigError:
        return {}


def run(args: argparse.Namespace) -> int:
    import os

    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        result = train_from_config(cfg)
    except ConfigError as error:  # a task's error about a key set on the command line names the override
        message = name_the_override(str(error), str(args.config), _file_mapping(args.config), args.overrides)
        print(f"{getattr(args, 'prog', 'kd-depth train')}: {message}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"trained {result.step} steps ({result.nonfinite_steps} skipped as non-finite); "
              f"checkpoint: {result.checkpoint}; model: {result.model_path or 'not exported'}")
        if result.val_metrics:
            print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in result.val_metrics.items()))
    return 0
