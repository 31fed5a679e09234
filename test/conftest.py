"""Shared test setup: ROS 2 isolation for every test run and small helpers."""
from __future__ import annotations

import os
import random

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
