"""`validate(cfg)`: every rule a config must satisfy, checked before anything is built or a tracker opens.

Order: each group's own checks (vtlab.config.schema, beside its fields), then the rules that need the
registries (the family, its tiling scheme), then the device-dependent ones (an SDPA backend the device lacks,
a CUDA device that is not there), then the connector budget (`tokens` / `factor`, resolved in place) against the patch grid, which raises
`InvalidCellError` (inside a `-m` sweep such a cell is recorded as skipped). Everything else is a `ConfigError`
naming the key, the value and what is valid.
"""

from __future__ import annotations

from typing import Any

import torch

from vtlab.config.schema import TaskName, VTLabConfig, patch_grid, resolve_budget
from vtlab.errors import ConfigError
from vtlab.families import get_family
from vtlab.families.tiler import check_tiling
from vtlab.measure.timing import on_gpu, resolve_device
from vtlab.models.sdpa import check_backend


def task_device(cfg: VTLabConfig) -> torch.device:
    """The device a task will run on: `task.device` for profile / bench, the trainer's accelerator otherwise."""
    if cfg.task.name in (TaskName.train, TaskName.eval):
        return torch.device("cuda" if on_gpu(cfg.trainer.accelerator) else "cpu")
    return resolve_device(cfg.task.device)


def validate(cfg: Any) -> None:
    """Raise ConfigError (or InvalidCellError) for the first rule `cfg` (a VTLabConfig) breaks."""
    if not isinstance(cfg, VTLabConfig):
        raise TypeError(f"validate() takes a VTLabConfig (vtlab.to_config), got {type(cfg).__name__}")
    cfg.check()
    m = cfg.model
    get_family(m.family).check(cfg)
    check_tiling(m, m.input_size or m.image_size, patch_grid(m))
    backend = getattr(cfg.task, "attention_backend", None)
    if backend is not None:
        check_backend(backend, task_device(cfg))
    elif cfg.task.name in (TaskName.profile, TaskName.bench):
        resolve_device(cfg.task.device)
    resolve_budget(cfg)


__all__ = ["ConfigError", "validate"]
