"""Pieces shared by `task=train` and `task=eval`: data module, classifier construction, result rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vtlab.data import VtlabDataModule
from vtlab.data.transforms import preset_transform
from vtlab.errors import ConfigError
from vtlab.run import RunContext
from vtlab.stack import VisionStack


def build_datamodule(ctx: RunContext, stack: VisionStack, batch_size: int, eval_batch_size: int | None = None) -> VtlabDataModule:
    """The data module, already set up so that bad data fails before the Trainer starts."""
    transform = preset_transform(ctx.cfg.model, stack.input_size)
    dm = VtlabDataModule(ctx.cfg.data, stack.input_size, batch_size, eval_batch_size, transform)
    dm.setup()
    return dm


def resolve_ckpt_path(value: str | None, out_dir: Path) -> str | None:
    """`task.ckpt_path`: None, a path, or `last` (= `<run dir>/checkpoints/last.ckpt`)."""
    if not value:
        return None
    path = out_dir / "checkpoints" / "last.ckpt" if value == "last" else Path(value).expanduser()
    if not path.is_file():
        hint = " (ckpt_path=last looks in <out_dir>/checkpoints/; set out_dir=RUN_DIR)" if value == "last" else ""
        raise ConfigError(f"task.ckpt_path={value}: no checkpoint file at {path}{hint}")
    return str(path)


def model_facts(ctx: RunContext, stack: VisionStack, num_classes: int) -> dict[str, Any]:
    return {
        "run_name": ctx.run_name,
        "model": ctx.model_choice,
        "factor": ctx.cfg.connector.factor,
        "grid": list(stack.grid),
        "patches": stack.num_patches,
        "tokens": stack.num_tokens,
        "text_hidden": stack.text_hidden,
        "input_size": stack.input_size,
        "num_classes": num_classes,
        "chance_acc": 1.0 / num_classes,
        "data": getattr(ctx.cfg.data.kind, "value", ctx.cfg.data.kind),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def metric(metrics: dict[str, Any], *names: str) -> float | None:
    for name in names:
        if name in metrics:
            return float(metrics[name])
    return None


def publish(ctx: RunContext, tracker: Any, result: dict[str, Any], summary: str) -> Path:
    """Write `results.json` (with the config), print a one-line summary and the path, log to the tracker."""
    path = ctx.write_json("results.json", result | {"config": ctx.config_dict()})
    print(summary)
    print(f"results: {path}")
    tracker.log_result(result)
    return path
