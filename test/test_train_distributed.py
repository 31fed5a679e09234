"""Two-process DDP training (torchrun, Gloo on the CPU): identical weights on both ranks, one checkpoint.

This file is also the worker script: `torchrun ... test_train_distributed.py <out_dir>`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


class _Data(Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.x[index].sum()}


def _worker(out_dir: str) -> None:
    from kd_depth_core.config import TrainConfig, config_from_dict
    from kd_depth_core.train import checkpoint as ckpt
    from kd_depth_core.train.distributed import cleanup, init_distributed
    from kd_depth_core.train.tasks import Task
    from kd_depth_core.train.trainer import Trainer

    class Task2(Task):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))

        def forward(self, batch, phase="main", step=0):
            return {"loss": ((self.net(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()}

        def deploy_model(self):
            return self.net

    env = init_distributed("cpu")
    cfg = config_from_dict(TrainConfig, {
        "data": {"batch_size": 3, "num_workers": 0},
        "model": {"name": "toy"}, "task": {"name": "toy"},
        "optim": {"lr": 0.01},
        "train": {"max_steps": 5, "log_every": 1, "val_every": 0, "image_every": 0, "ckpt_every": 0,
                  "out_dir": out_dir, "progress": False},
    }, "ddp.yaml")
    torch.manual_seed(100 + env.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    task = Task2(cfg)
    result = Trainer(cfg, task, _Data(), env=env).fit()
    torch.save({"weights": task.state_dict(), "world_size": env.world_size, "backend": env.backend,
                "step": result.step, "checkpoints": [p.name for p in ckpt.list_checkpoints(out_dir)]},
               Path(out_dir) / f"rank{env.rank}.pt")
    cleanup(env)


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed next to this python")
def test_two_process_ddp_run(tmp_path):
    out_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", __file__, str(out_dir)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    assert ranks[0]["step"] == ranks[1]["step"] == 5
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    initial = nn.Linear(4, 8)
    torch.manual_seed(100)
    assert not torch.equal(ranks[0]["weights"]["net.0.weight"], nn.Linear(4, 8).weight)  # it trained
    del initial
    files = sorted(p.name for p in (out_dir / "checkpoints").iterdir() if p.suffix == ".pt")
    assert files == ["step_00000005.pt"], files
    state = torch.load(out_dir / "checkpoints" / files[0], weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG state is kept
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(state["task"][name], value)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _worker(sys.argv[1])
