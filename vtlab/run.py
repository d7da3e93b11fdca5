"""The context one job runs in: its typed config, output directory, name, and sweep membership.

Run names come from the config (`smolvlm-f4`), never from timestamps alone; inside a `-m` sweep the group
is the sweep directory's name so that W&B groups one sweep's cells together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vtlab.config import VTLabConfig


@dataclass
class RunContext:
    cfg: VTLabConfig
    raw: DictConfig  # the composed config (for logging it whole)
    out_dir: Path
    model_choice: str
    is_sweep: bool = False
    sweep_dir: Path | None = None
    job_num: int | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def run_name(self) -> str:
        """`smolvlm-f4`, or `smolvlm-f4-1536x2048` with an input image size (task=profile / bench)."""
        name = f"{self.model_choice}-f{self.cfg.connector.factor}"
        from vtlab.tiling.plan import image_size_of

        size = image_size_of(getattr(getattr(self.cfg, "data", None), "image_size", None))
        task = getattr(getattr(self.cfg.task, "name", None), "value", None)
        if size is not None and task in ("profile", "bench"):
            name += f"-{size[0]}x{size[1]}"
        return name

    @property
    def group(self) -> str | None:
        if self.cfg.logger.group:
            return self.cfg.logger.group
        return self.sweep_dir.name if self.sweep_dir is not None else None

    def config_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.raw, resolve=True, throw_on_missing=False)  # type: ignore[return-value]

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        tmp.replace(path)
        return path
