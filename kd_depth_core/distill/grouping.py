"""Class grouping for cross-task distillation (X-Distill): segmentation classes -> depth-meaningful groups.

A grouping is a YAML file (shipped ones: `kd_depth_core/resources/groupings/<name>.yaml`):

    name: cityscapes
    classes: [road, sidewalk, ...]       # the segmentation teacher's classes, in id order
    ignore_index: 255                    # label id meaning "no label" (optional, default 255)
    groups:                              # group name -> member classes; group ids follow this order
      ground: [road, sidewalk, terrain]
      ...

Every class must be mapped to exactly one group; errors name the file, the class and the groups.

    grouping = load_grouping("synthetic")                # a shipped name, or a path to a YAML file
    groups = grouping.group_labels(label_map)            # (..., H, W) class ids -> group ids (LUT)
    probs = grouping.group_probabilities(class_logits)   # (B,C,H,W) logits -> (B,G,H,W) probabilities
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml

GROUPINGS_DIR = Path(__file__).resolve().parents[1] / "resources" / "groupings"
"""Folder of the shipped groupings (`<name>.yaml`)."""

DEFAULT_IGNORE_INDEX = 255
_KEYS = ("name", "description", "classes", "ignore_index", "groups")

LabelMap = TypeVar("LabelMap", np.ndarray, torch.Tensor)


class GroupingError(ValueError):
    """A class grouping is malformed or does not fit its classes; the message names file, class and group."""


@dataclass(frozen=True)
class ClassGrouping:
    """Validated mapping of `class_names` (ids 0..C-1) to `group_names` (ids 0..G-1).

    `class_to_group[c]` is the group id of class c; label ids outside 0..C-1 (e.g. `ignore_index`)
    map to `ignore_index`.
    """

    name: str
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    class_to_group: tuple[int, ...]
    ignore_index: int = DEFAULT_IGNORE_INDEX
    source: str = "<memory>"

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_mapping(cls, data: Any, source: str = "<memory>") -> ClassGrouping:
        """Validate a parsed YAML mapping (see the module docstring); raises GroupingError naming `source`."""
        if not isinstance(data, Mapping):
            raise GroupingError(f"{source}: expected a mapping with keys {', '.join(_KEYS)}, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in _KEYS)
        if unknown:
            raise GroupingError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str) or not name:
            raise GroupingError(f"{source}: name: expected a non-empty string, got {name!r}")
        classes = data.get("classes")
        if not isinstance(classes, list) or not classes:
            raise GroupingError(f"{source}: classes: expected a non-empty list of class names in id order, "
                                f"got {classes!r}")
        for index, class_name in enumerate(classes):
            if not isinstance(class_name, str) or not class_name:
                raise GroupingError(f"{source}: classes[{index}]: expected a non-empty string, got {class_name!r}")
            if classes.index(class_name) != index:
                raise GroupingError(f"{source}: classes: class {class_name!r} is listed twice "
                                    f"(ids {classes.index(class_name)} and {index})")
        ignore_index = data.get("ignore_index", DEFAULT_IGNORE_INDEX)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < len(classes) \
                or ignore_index > 65535:
            raise GroupingError(f"{source}: ignore_index: expected an integer in {len(classes)}..65535 (not a "
                                f"class id), got {ignore_index!r}")
        groups = data.get("groups")
        if not isinstance(groups, Mapping) or not groups:
            raise GroupingError(f"{source}: groups: expected a mapping of group name -> list of classes, "
                                f"got {groups!r}")
        owner: dict[str, str] = {}
        for group, members in groups.items():
            if not isinstance(group, str) or not group:
                raise GroupingError(f"{source}: groups: group names must be non-empty strings, got {group!r}")
            if not isinstance(members, list) or not members:
                raise GroupingError(f"{source}: groups.{group}: expected a non-empty list of class names, "
                                    f"got {members!r}")
            for member in members:
                if member not in classes:
                    raise GroupingError(f"{source}: groups.{group}: unknown class {member!r}; classes: "
                                        f"{', '.join(classes)}")
                if member in owner:
                    where = f"twice in group {group!r}" if owner[member] == group else \
                        f"in groups {owner[member]!r} and {group!r}"
                    raise GroupingError(f"{source}: class {member!r} is mapped more than once ({where}); map "
                                        "every class to exactly one group")
                owner[member] = group
        unmapped = [c for c in classes if c not in owner]
        if unmapped:
            raise GroupingError(f"{source}: class {unmapped[0]!r} is not mapped to any group"
                                f"{f' (nor are {unmapped[1:]})' if len(unmapped) > 1 else ''}; groups: "
                                f"{', '.join(groups)}")
        group_names = tuple(groups)
        return cls(name=name, class_names=tuple(classes), group_names=group_names,
                   class_to_group=tuple(group_names.index(owner[c]) for c in classes), ignore_index=ignore_index,
                   source=source)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def members(self, group: str) -> tuple[str, ...]:
        """Class names of `group`."""
        if group not in self.group_names:
            raise KeyError(f"{self.source}: unknown group {group!r}; groups: {', '.join(self.group_names)}")
        index = self.group_names.index(group)
        return tuple(c for c, g in zip(self.class_names, self.class_to_group) if g == index)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (round-trips through `from_mapping`)."""
        return {"name": self.name, "classes": list(self.class_names), "ignore_index": self.ignore_index,
                "groups": {g: list(self.members(g)) for g in self.group_names}}

    # ----------------------------------------------------------------------- checks
    def check_class_names(self, names: Sequence[str], what: str) -> None:
        """Raise GroupingError unless `names` (e.g. a teacher's or a dataset's classes) equal this grouping's."""
        names = tuple(str(n) for n in names)
        if names == self.class_names:
            return
        for index, (ours, theirs) in enumerate(zip(self.class_names, names)):
            if ours != theirs:
                raise GroupingError(f"{what}: class id {index} is {theirs!r} but grouping {self.source} has "
                                    f"{ours!r}; the grouping's classes must list the same classes in the same order")
        longer, extra = ((what, names[len(self.class_names):]) if len(names) > len(self.class_names)
                         else (f"grouping {self.source}", self.class_names[len(names):]))
        raise GroupingError(f"{what}: {len(names)} classes but grouping {self.source} has {self.num_classes}; "
                            f"{longer} also lists {', '.join(repr(c) for c in extra)}")

    # ----------------------------------------------------------------------- label maps
    def lookup_table(self) -> np.ndarray:
        """int64 LUT of length max(C, ignore_index + 1): class id -> group id, other ids -> ignore_index."""
        table = np.full(max(self.num_classes, self.ignore_index + 1), self.ignore_index, dtype=np.int64)
        table[:self.num_classes] = self.class_to_group
        return table

    def group_labels(self, label_map: LabelMap) -> LabelMap:
        """Class-id map (any shape, integer numpy array or tensor) -> group-id map (int64, same kind/device).

        `ignore_index` and every id outside 0..C-1 become `ignore_index`.
        """
        table = self.lookup_table()
        if isinstance(label_map, torch.Tensor):
            if label_map.is_floating_point() or label_map.is_complex():
                raise TypeError(f"label_map: expected an integer tensor of class ids, got {label_map.dtype}")
            labels = label_map.long()
            lut = torch.from_numpy(table).to(labels.device)
            inside = (labels >= 0) & (labels < len(table))
            return torch.where(inside, lut[labels.clamp(0, len(table) - 1)], self.ignore_index)
        labels = np.asarray(label_map)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"label_map: expected an integer array of class ids, got {labels.dtype}")
        labels = labels.astype(np.int64)
        inside = (labels >= 0) & (labels < len(table))
        return np.where(inside, table[np.clip(labels, 0, len(table) - 1)], self.ignore_index)

    def membership(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(C, G) one-hot matrix: row c has a 1 in column class_to_group[c]."""
        matrix = torch.zeros(self.num_classes, self.num_groups, dtype=dtype, device=device)
        matrix[torch.arange(self.num_classes), torch.tensor(self.class_to_group)] = 1
        return matrix

    def group_probabilities(self, class_logits: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) class logits -> (B,G,H,W) group probabilities (softmax summed over each group's classes)."""
        if class_logits.ndim != 4 or class_logits.shape[1] != self.num_classes:
            raise ValueError(f"class_logits: expected shape (B,{self.num_classes},H,W) for grouping {self.name!r}, "
                             f"got {tuple(class_logits.shape)}")
        probs = torch.softmax(class_logits.float(), dim=1)
        return torch.einsum("bchw,cg->bghw", probs, self.membership(probs.device))


# --------------------------------------------------------------------------- loading
def list_groupings() -> list[str]:
    """Names of the shipped groupings."""
    return sorted(p.stem for p in GROUPINGS_DIR.glob("*.yaml"))


def grouping_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a shipped grouping name (e.g. "cityscapes") or an explicit path."""
    text = str(name_or_path)
    if text and "/" not in text and os.sep not in text and not text.endswith((".yaml", ".yml")):
        path = GROUPINGS_DIR / f"{text}.yaml"
        if not path.is_file():
            raise GroupingError(f"grouping {text!r}: no shipped grouping of that name; shipped: "
                                f"{', '.join(list_groupings())} (or pass the path of a YAML file)")
        return path
    path = Path(name_or_path)
    if not path.is_file():
        raise GroupingError(f"grouping file {path} not found (shipped groupings: {', '.join(list_groupings())})")
    return path


def load_grouping(name_or_path: str | os.PathLike) -> ClassGrouping:
    """Load and validate a grouping: a shipped name ("synthetic", "cityscapes") or a YAML path."""
    path = grouping_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise GroupingError(f"{path}: not valid YAML ({error})") from error
    return ClassGrouping.from_mapping(data, str(path))
