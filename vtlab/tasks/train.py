"""`task=train`: fine-tune a VisionStack + attention-pooling head with Lightning, with checkpoints and resume.

`python -m vtlab +model=smolvlm_debug task=train logger=csv trainer.max_epochs=3` trains on the synthetic
glyph-count set; `data=folder data.root=PATH` on image folders. Checkpoints go to `<run dir>/checkpoints/`
(best by val_acc, last); `task.ckpt_path=PATH|last` resumes (architecture and freeze mode are checked first).
`results.json` holds the final val metrics, the best checkpoint and the train/val step throughput.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from vtlab.api import build_stack
from vtlab.models.fastpaths import configure_fast_paths, fast_paths
from vtlab.results.record import RunContext, process_rank
from vtlab.tasks.common import classifier_facts, metric, publish
from vtlab.tasks.datamodule import build_datamodule
from vtlab.train.checkpoint import architecture, check_fresh_run, check_resume, load_checkpoint, resolve_ckpt_path
from vtlab.train.module import OptimSettings, VisionClassifier
from vtlab.train.trainer import fit_run, resolve_precision


def check(ctx: RunContext) -> None:
    """Refuse a fresh run into a directory holding an earlier run's checkpoints or results.json (it would
    overwrite them), unless overwrite=true."""
    if not ctx.cfg.overwrite:
        check_fresh_run(ctx.out_dir, ctx.cfg.task.ckpt_path, process_rank())


def train(ctx: RunContext, tracker: Any) -> tuple[dict[str, Any], pl.Trainer]:
    cfg, t = ctx.cfg, ctx.cfg.task
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    stack = build_stack(cfg)
    dm = build_datamodule(ctx, stack, t.batch_size, t.eval_batch_size)
    arch = architecture(cfg, dm.num_classes)
    ckpt_path = resolve_ckpt_path(t.ckpt_path, ctx.out_dir)
    if ckpt_path:
        check_resume(load_checkpoint(ckpt_path), arch, ckpt_path, freeze=str(t.freeze))
    optim = OptimSettings(lr=t.lr, tower_lr=t.tower_lr, weight_decay=t.weight_decay,
                          warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio)
    # the inference paths (fused_gelu, residual_gemm) act in the no-grad CUDA forwards: a frozen tower, validation
    configure_fast_paths(stack, patch_gemm=t.patch_gemm, fused_gelu_train=t.fused_gelu_train,
                         activation_checkpointing=t.activation_checkpointing, fused_gelu=t.fused_gelu,
                         residual_gemm=t.residual_gemm, fused_norm=t.fused_norm,
                         gelu_kernel=t.gelu_kernel)
    if t.frozen_tower_bf16:  # the schema has checked freeze and the reduction
        stack.freeze_tower_in(torch.bfloat16)
    lit = VisionClassifier(stack, dm.num_classes, head=t.head, freeze=t.freeze, optim=optim, arch=arch,
                           compile_optimizer=t.compile_optimizer)
    if t.compile:
        lit.compile_stack()
    trainer, fitted = fit_run(ctx, tracker, lit, dm, ckpt_path)
    m = trainer.callback_metrics
    return {
        **ctx.header(),
        **classifier_facts(stack, dm.num_classes, cfg.data.kind),
        "freeze": str(t.freeze),
        "trainable_params": lit.trainable_parameters(),
        "precision": resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        "world_size": trainer.world_size,
        "compile": t.compile,
        "compile_optimizer": t.compile_optimizer,
        "frozen_tower_dtype": str(stack.frozen_tower_dtype).removeprefix("torch.") if stack.frozen_tower_dtype else None,
        "fast_paths": fast_paths(stack, next(stack.parameters()).device),
        "attention_backend": str(t.attention_backend),
        "resumed_from": ckpt_path,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val_acc": metric(m, "val_acc"),
        "val_loss": metric(m, "val_loss"),
        "train_loss": metric(m, "train_loss_epoch", "train_loss"),
        "train_acc": metric(m, "train_acc_epoch", "train_acc"),
        **fitted,
        "overrides": ctx.overrides,
    }, trainer


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "n/a"


def summary_line(run_name: str, result: dict[str, Any]) -> str:
    """The one line a training run ends with: every field, `n/a` where a short run has no value."""
    return (f"train {run_name}: {result['global_step']} steps, val_acc {_num(result['val_acc'], '.4f')} "
            f"(chance {_num(result['chance_acc'], '.3f')}), val_loss {_num(result['val_loss'], '.4f')}, "
            f"{_num(result.get('train_images_per_s'), '.1f')} train images/s")


def run(ctx: RunContext, tracker: Any) -> dict[str, Any]:
    result, trainer = train(ctx, tracker)
    if trainer.is_global_zero:
        publish(ctx, tracker, result, summary_line(ctx.run_name, result))
    return result
