"""What the demo's stages share: where things go and what earlier stages produced."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoContext:
    """Where things go and what earlier stages produced."""

    out: Path
    preset: dict[str, Any]
    preset_name: str
    config_dir: Path
    device: str = "auto"
    progress: bool = True
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    @property
    def data_root(self) -> Path:
        return self.stage_dir("synth") / "street"
