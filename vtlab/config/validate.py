"""`validate(cfg)`: every rule a config must satisfy, checked before anything is built or a tracker opens.

Order: each group's own checks (vtlab.config.schema, beside its fields), then the rules that need the
registries (the family, its tiling scheme), then the device-dependent ones (an SDPA backend the device lacks,
a CUDA device that is not there), then the connector budget (`tokens` / `factor`, resolved in place) against the
patch grid, which raises `InvalidCellError` (inside a `-m` sweep such a cell is recorded as skipped), and last a
closed-form lower bound of the memory the run needs (`memory_estimate`: parameters, optimizer state when
training, one batch of pixels and one hidden state) against the device's memory, so sizes that cannot fit
(model.input_size=100000, task.batch_size=1000000000, model.num_layers=1000000) are one line instead of an
allocator crash. Everything else is a `ConfigError` naming the key, the value and what is valid.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vtlab.config.schema import FIT_TASKS, TaskName, VTLabConfig, patch_grid, resolve_budget
from vtlab.errors import ConfigError
from vtlab.families import get_family
from vtlab.families.tiler import check_tiling
from vtlab.measure.timing import on_gpu, resolve_device
from vtlab.models.sdpa import check_backend


def task_device(cfg: VTLabConfig) -> torch.device:
    """The device a task will run on: `task.device` for profile / bench, the trainer's accelerator otherwise."""
    if cfg.task.name in (*FIT_TASKS, TaskName.eval):
        return torch.device("cuda" if on_gpu(cfg.trainer.accelerator) else "cpu")
    return resolve_device(cfg.task.device)


def memory_estimate(cfg: VTLabConfig) -> dict[str, int]:
    """A lower bound, in bytes, of what a run of `cfg` must hold at once (fp32; activations of one layer only)."""
    m = cfg.model
    side = m.input_size or m.image_size
    tokens = (side // m.patch_size) ** 2
    h, i, c = m.hidden_size, m.intermediate_size, m.num_channels
    params = c * m.patch_size**2 * h + (m.image_size // m.patch_size) ** 2 * h + m.num_layers * (4 * h * h + 2 * h * i + 9 * h)
    training = cfg.task.name in FIT_TASKS
    full = str(getattr(cfg.task, "freeze", "tower")) == "none" or "tower" in getattr(cfg.task, "train", ())
    state = 4 if training and full else 1  # + grads + 2 AdamW moments
    batch = max(cfg.task.batch_size, getattr(cfg.task, "throughput_batch_size", None) or 0,
                getattr(cfg.task, "eval_batch_size", None) or 0)
    return {"parameters": 4 * params * state, "pixels": 4 * batch * c * side * side, "hidden": 4 * batch * tokens * h}


def device_memory(device: torch.device) -> int | None:
    """Bytes the device holds; None for a CUDA device this machine lacks (Lightning names the accelerator then)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory if torch.cuda.is_available() else None
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: VTLabConfig) -> None:
    device = task_device(cfg)
    parts = memory_estimate(cfg)
    need, have = sum(parts.values()), device_memory(device)
    if have is not None and need > have:
        gib = 2**30
        detail = ", ".join(f"{k} {v / gib:.1f}" for k, v in parts.items())
        raise ConfigError(
            f"this run cannot fit: it needs at least {need / gib:.1f} GiB ({detail} GiB; model.input_size="
            f"{cfg.model.input_size or cfg.model.image_size}, model.num_layers={cfg.model.num_layers}, "
            f"task.batch_size={cfg.task.batch_size}) but the {device.type} device has {have / gib:.1f} GiB"
        )


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
    check_memory(cfg)


__all__ = ["ConfigError", "validate"]
