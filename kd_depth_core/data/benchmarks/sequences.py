"""Our own training sequences as an evaluation set: left images and depth of a split's sequences.

A dataset root holds sequence folders and ``splits/{train,val,test}.txt`` (see
docs/dataset_format.md); every sequence of the split must have depth. Names are the frame keys
``<sequence>/<index:06d>``; ``stride`` keeps every n-th frame; ``right=True`` adds the right image
(``meta['right']``) for stereo models, and then every sequence must have right images.
"""
from __future__ import annotations

import os
from pathlib import Path

from kd_depth_core.data.benchmarks.base import BenchmarkReader, Sample
from kd_depth_core.data.sequence import Sequence, SequenceError, read_split


class SequenceBenchmarkReader(BenchmarkReader):
    """Frames (left image, depth) of the sequences listed in ``splits/<split>.txt`` under ``root``."""

    dataset = "sequences"

    def __init__(self, root: str | os.PathLike, split: str = "test", *, stride: int = 1,
                 limit: int | None = None, right: bool = False) -> None:
        super().__init__(root, limit)
        if stride < 1:
            raise ValueError(f"stride: expected a positive integer, got {stride}")
        self.dataset = f"sequences {split}"
        self.sequences: dict[str, Sequence] = {}
        self.right = right
        subs = ("left", "right", "depth") if right else ("left", "depth")
        missing: list[tuple[str, str, Path]] = []
        for name in read_split(self.root, split):
            sequence = Sequence(self.root / name)
            if not sequence.has_depth:
                raise SequenceError(f"{sequence.path / 'meta.yaml'}: has_depth is false; evaluation needs "
                                    f"ground-truth depth in every sequence of split {split!r}")
            if right and not sequence.has_right:
                raise SequenceError(f"{sequence.path / 'meta.yaml'}: has_right is false; a stereo model needs the "
                                    f"right image in every sequence of split {split!r}")
            self.sequences[name] = sequence
            for index in range(0, len(sequence), stride):
                for sub in subs:
                    if not sequence.frame_path(sub, index).is_file():
                        missing.append((f"{name}/{index:06d}", sub, sequence.frame_path(sub, index)))
                self.items.append((name, index))
        self._finish(missing)

    def _name(self, item: tuple[str, int]) -> str:
        return f"{item[0]}/{item[1]:06d}"

    def _load(self, item: tuple[str, int]) -> Sample:
        name, index = item
        sequence = self.sequences[name]
        meta = {"sequence": name, "index": index, "K": sequence.camera.K.copy(),
                "stamp_ns": int(sequence.stamps_ns[index])}
        if self.right:
            meta["right"] = sequence.load_right(index)
            meta["baseline"] = sequence.camera.baseline
        return Sample(sequence.load_left(index), sequence.load_depth(index), self._name(item), meta)
