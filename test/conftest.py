"""Shared test setup: ROS 2 isolation for every test run and small helpers."""
from __future__ import annotations

import os
import random

import pytest

# Every test run gets its own DDS domain and stays on loopback, so parallel runs never meet.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 101)))
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
# Two pytest-xdist workers share two cores: one math thread each (children inherit it too).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KD_DEPTH_NO_DOWNLOAD", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: two threads on a shared 2-core machine spin against each
    other (10-100x slower on tiny tensors). Modules ask for it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
