"""Atomic outputs honour the umask (0644/0755 under 022, 0600/0700 under 077)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

SCRIPT = r"""
import os, stat, sys
from pathlib import Path
from kd_depth_core.utils.atomic import commit_dir, temporary_dir_for, write_text_atomic
root = Path(sys.argv[1])
write_text_atomic(root / "a.txt", "x")
tmp = temporary_dir_for(root / "seq")
write_text_atomic(tmp / "b.txt", "y")
commit_dir(tmp, root / "seq")
for p in (root / "a.txt", root / "seq", root / "seq" / "b.txt"):
    print(oct(stat.S_IMODE(os.stat(p).st_mode)))
"""


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_outputs_follow_umask(tmp_path, umask, file_mode, dir_mode):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True, preexec_fn=lambda: os.umask(umask))
    modes = [int(m, 8) for m in out.stdout.split()]
    assert modes == [file_mode, dir_mode, file_mode]


def test_in_process_umask_022(tmp_path):
    from kd_depth_core.utils.atomic import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "m.bin", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.bin").st_mode) == 0o644
