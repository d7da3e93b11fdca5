"""`task=eval`: load a `task=train` checkpoint and report val loss, accuracy and throughput (images/s); a
`task=align|finetune` (VLM) checkpoint is recognised by its `vtlab_arch` and evaluated by generation instead
(vtlab.tasks.vlm_eval: exact match per question type, answer perplexity, predictions.jsonl).

`task.dtype=fp8` (CUDA sm89+, classifier checkpoints) evaluates the same checkpoint with the tower blocks' Linears
as e4m3 GEMMs (vtlab.models.fp8, `task.fp8_scaling`): the accuracy side of fp8's cost/quality trade, next to
the speed side that `task=bench task.dtype=fp8` measures. Otherwise the numerics are `trainer.precision`'s.

The checkpoint must match the architecture the current config describes; if it does not, the run stops
with the list of differing config fields. `results.json` in the run directory holds the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from vtlab.api import build_stack
from vtlab.config.schema import ANSWER_KINDS
from vtlab.errors import ArchitectureMismatchError, ConfigError
from vtlab.measure.timing import on_gpu
from vtlab.models.fastpaths import configure_fast_paths
from vtlab.models.fp8 import check_fp8, to_fp8
from vtlab.results.record import RESULTS, RunContext
from vtlab.tasks import vlm_eval
from vtlab.tasks.common import classifier_facts, metric, publish
from vtlab.tasks.datamodule import build_datamodule
from vtlab.train.callbacks import ThroughputMeter
from vtlab.train.checkpoint import architecture, check_architecture, checkpoint_kind, load_checkpoint, resolve_ckpt_path
from vtlab.train.module import VisionClassifier
from vtlab.train.trainer import build_trainer, resolve_precision


def _task_of(results: Path) -> str | None:
    try:
        return json.loads(results.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def check(ctx: RunContext) -> None:
    """Refuse a missing task.ckpt_path, and an out_dir whose results.json belongs to another task."""
    if not ctx.cfg.task.ckpt_path:
        raise ConfigError("task=eval needs task.ckpt_path=PATH (a best-*.ckpt or last.ckpt written by task=train)")
    previous = ctx.out_dir / RESULTS
    if previous.is_file() and _task_of(previous) != "eval" and not ctx.cfg.overwrite:
        raise ConfigError(
            f"out_dir={ctx.out_dir} holds another task's results.json (e.g. the training run's), which task=eval "
            f"would overwrite; evaluate into another out_dir (task.ckpt_path=PATH takes the checkpoint from anywhere)"
        )
    path = resolve_ckpt_path(ctx.cfg.task.ckpt_path, ctx.out_dir)
    dtype = _dtype_name(ctx.cfg.task)
    if dtype not in ("auto", "fp8"):
        raise ConfigError(f"task.dtype={dtype}: task=eval runs at trainer.precision (e.g. trainer.precision=bf16-mixed); "
                          f"task.dtype takes auto or fp8 here")
    ckpt = load_checkpoint(path)
    if checkpoint_kind(ckpt) == "vlm":
        if dtype == "fp8":
            raise ConfigError(f"task.dtype=fp8 evaluates task=train (classifier) checkpoints; {path} is a VLM "
                              f"checkpoint (task=align / finetune); use task.dtype=auto")
        vlm_eval.check(ctx, ckpt, path)
        return
    if dtype == "fp8":
        check_fp8(_eval_device(ctx.cfg))
    if ctx.cfg.data.kind in ANSWER_KINDS:
        raise ConfigError(f"task.ckpt_path={path} is a task=train (classifier) checkpoint, but data.kind="
                          f"{ctx.cfg.data.kind} has text answers; evaluate it on its classes (data=synthetic / "
                          f"data=folder), or give a task=align / task=finetune checkpoint")
    for key in ("adapters", "blind"):
        if getattr(ctx.cfg.task, key) is not None:
            raise ConfigError(f"task.{key}={getattr(ctx.cfg.task, key)} is for VLM checkpoints (task=align / "
                              f"finetune); {path} is a task=train (classifier) checkpoint")


def _dtype_name(task: Any) -> str:
    return str(getattr(task.dtype, "value", task.dtype))


def _eval_device(cfg: Any) -> torch.device:
    """Where the eval trainer runs (its accelerator), CUDA only where there is one."""
    return torch.device("cuda" if on_gpu(cfg.trainer.accelerator) and torch.cuda.is_available() else "cpu")


def _to_fp8(cfg: Any, stack: torch.nn.Module, dm: Any) -> dict[str, Any]:
    """The tower's Linears as fp8 GEMMs (in place); static scales calibrated on the first validation batch, on the
    eval device and at the eval precision."""
    scaling = str(cfg.task.fp8_scaling)
    if scaling != "static":
        return to_fp8(stack, scaling, [], "")
    images = next(iter(dm.val_dataloader()))[0]
    device = _eval_device(cfg)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    autocast = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0])
    stack.to(device)
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        return to_fp8(stack, scaling, [images.to(device)], f"first validation batch ({len(images)} images)")


def evaluate(ctx: RunContext, tracker: Any) -> tuple[dict[str, Any], pl.Trainer]:
    cfg, t = ctx.cfg, ctx.cfg.task
    path = resolve_ckpt_path(t.ckpt_path, ctx.out_dir)
    ckpt = load_checkpoint(path)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    stack = build_stack(cfg, load_weights=False)
    dm = build_datamodule(ctx, stack, t.batch_size, train=False)  # eval reads only the val split
    check_architecture(ckpt, architecture(cfg, dm.num_classes), path)
    freeze = ckpt.get("vtlab_train", {}).get("freeze", "none")
    lit = VisionClassifier(stack, dm.num_classes, head=ckpt["vtlab_arch"].get("head", "attention_pool"), freeze=freeze)
    try:
        lit.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ArchitectureMismatchError(f"checkpoint {path} does not fit the model: {exc}") from None
    del ckpt
    # before fp8: its conversion turns the epilogue and the residual stream off in the blocks it converts
    configure_fast_paths(stack, patch_gemm=t.patch_gemm, fused_gelu=t.fused_gelu, residual_gemm=t.residual_gemm)
    fp8_info = _to_fp8(cfg, stack, dm) if _dtype_name(t) == "fp8" else None
    if t.compile:
        lit.compile_stack()
    meter = ThroughputMeter(skip=t.warmup_batches)
    trainer = build_trainer(ctx, tracker, [meter])
    out = trainer.validate(lit, datamodule=dm, verbose=False)
    m = out[0] if out else {}
    return {
        **ctx.header(),
        **classifier_facts(stack, dm.num_classes, cfg.data.kind),
        "ckpt_path": path,
        "precision": resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        "world_size": trainer.world_size,
        "compile": t.compile,
        "fp8": fp8_info,
        "val_acc": metric(m, "val_acc"),
        "val_loss": metric(m, "val_loss"),
        "images_per_s": meter.summary()["val_images_per_s"],
        "val_images": len(dm.val_set),
        "overrides": ctx.overrides,
    }, trainer


def run(ctx: RunContext, tracker: Any) -> dict[str, Any]:
    path = resolve_ckpt_path(ctx.cfg.task.ckpt_path, ctx.out_dir)
    ckpt = load_checkpoint(path)
    if checkpoint_kind(ckpt) == "vlm":
        return vlm_eval.run(ctx, tracker, ckpt, path)
    del ckpt
    result, trainer = evaluate(ctx, tracker)
    if trainer.is_global_zero:
        ips = result["images_per_s"]
        publish(ctx, tracker, result, (
            f"eval {ctx.run_name} on {result['val_images']} images: val_acc {result['val_acc']:.4f} "
            f"(chance {result['chance_acc']:.3f}), val_loss {result['val_loss']:.4f}, "
            + (f"{ips:.1f} images/s" if ips else "throughput n/a (too few batches)")
        ))
    return result
