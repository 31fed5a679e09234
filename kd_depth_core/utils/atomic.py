"""Atomic writes: write under a temporary name in the same folder, then rename.

A crash or an interrupt never leaves a half-written file or folder under the final name.
Results get the modes a plain `open`/`mkdir` would give (0644/0755 under umask 022), not the
0600/0700 of `tempfile`, so another user (the robot's) can read them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `path`; on success fsync and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the caller asked for, not the hidden temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        os.chmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def temporary_dir_for(final: str | os.PathLike) -> Path:
    """A fresh, hidden temporary folder beside `final` (same file system, so rename is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(final)) from None
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def commit_dir(tmp: str | os.PathLike, final: str | os.PathLike, overwrite: bool = False) -> Path:
    """Rename the finished folder `tmp` onto `final`; with `overwrite`, replace an existing one."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists (pass --force / overwrite=True to replace it)")
        trash = temporary_dir_for(final)
        os.replace(final, trash / "old")
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final
