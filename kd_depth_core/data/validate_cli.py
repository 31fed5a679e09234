"""`kd-depth validate PATH...`: check training sequences or whole dataset roots.

A dataset root's sequences that are in no ``splits/*.txt`` file are listed in a warning (training and
evaluation would silently ignore them) with the two ways to add them; the exit status stays 0 for that.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kd_depth_core.data.sequence import (
    SPLIT_NAMES,
    SequenceError,
    list_sequences,
    read_split,
    unsplit_sequences,
    validate_sequence,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, help="a sequence folder or a dataset root")
    parser.add_argument("--quick", action="store_true", help="check metadata and index only, do not decode images")


def _targets(path: Path) -> tuple[list[Path], list[str]]:
    """Sequence folders to check under `path`, and problems with its split files."""
    if (path / "meta.yaml").is_file():
        return [path], []
    if not path.is_dir():
        raise SequenceError(f"{path}: no such folder")
    problems = []
    if (path / "splits").is_dir():
        for split in SPLIT_NAMES:
            if (path / "splits" / f"{split}.txt").is_file():
                try:
                    read_split(path, split)
                except SequenceError as exc:
                    problems.append(str(exc))
    names = list_sequences(path)
    if not names:
        raise SequenceError(f"{path}: neither a sequence (no meta.yaml) nor a dataset root (no sequence folders)")
    return [path / n for n in names], problems


def _warn_unsplit(root: Path, shown: int = 20) -> None:
    """Warn about sequences of ``root`` that no split lists, and say how to add them."""
    names = unsplit_sequences(root)
    if not names:
        return
    listed = ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")
    print(f"WARNING {len(names)} sequence(s) under {root} are in no split, so training and evaluation ignore "
          f"them: {listed}. Add them to {root / 'splits' / 'train.txt'} (one name per line; or val.txt / "
          f"test.txt), or run `kd-depth convert-bag BAG --out {root} --split train`, which appends every "
          "sequence in no split to that split.")


def run(args: argparse.Namespace) -> int:
    failures = 0
    for path in args.paths:
        try:
            sequences, problems = _targets(path)
        except SequenceError as exc:
            print(f"ERROR {exc}")
            failures += 1
            continue
        for problem in problems:
            print(f"ERROR {problem}")
            failures += 1
        for seq_path in sequences:
            try:
                seq = validate_sequence(seq_path, deep=not args.quick)
            except SequenceError as exc:
                print(f"ERROR {exc}")
                failures += 1
            else:
                parts = ["left"] + ["right"] * seq.has_right + ["depth"] * seq.has_depth + ["semantic"] * seq.has_semantic
                print(f"ok    {seq_path}  {len(seq)} frames, {seq.camera.width}x{seq.camera.height}, {'+'.join(parts)}")
        if (path / "splits").is_dir():
            _warn_unsplit(path)
    if failures:
        print(f"{failures} problem(s) found. Fix or re-create the named files (e.g. re-run `kd-depth convert-bag` "
              "or `kd-depth synth` with --force).")
        return 1
    print("all sequences valid")
    return 0
