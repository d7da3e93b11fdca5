"""`task=train`: fine-tune a VisionStack + attention-pooling head with Lightning, with checkpoints and resume.

`python -m vtlab +model=smolvlm_debug task=train logger=csv trainer.max_epochs=3` trains on the synthetic
glyph-count set; `data=folder data.root=PATH` on image folders. Checkpoints go to `<run dir>/checkpoints/`
(best by val_acc, last); `task.ckpt_path=PATH|last` resumes (architecture and freeze mode are checked first).
`results.json` holds the final val metrics, the best checkpoint and the train/val step throughput.
"""

from __future__ import annotations

import os
import time
from typing import Any

import lightning.pytorch as pl
import torch

from vtlab.api import build_stack
from vtlab.attention import check_backend, pinned
from vtlab.callbacks import ThroughputMeter
from vtlab.errors import ConfigError
from vtlab.lit import OptimSettings, VisionClassifier, architecture, check_architecture, load_checkpoint
from vtlab.run import RunContext
from vtlab.tasks._common import build_datamodule, metric, model_facts, publish, resolve_ckpt_path
from vtlab.trainer import build_trainer, checkpoint_callbacks, on_gpu, resolve_precision


class _LastValStep(pl.Callback):
    """Remembers the global step of the latest real validation (to know whether a final one is needed)."""

    def __init__(self) -> None:
        self.step = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step


def _saved_step(callback: Any) -> int:
    return int(getattr(callback, "_last_global_step_saved", -1))


def check(ctx: RunContext) -> None:
    """Refuse an SDPA backend the device lacks, and a fresh run into a directory holding an earlier run's
    checkpoints (it would overwrite them)."""
    check_backend(ctx.cfg.task.attention_backend, torch.device("cuda" if on_gpu(ctx.cfg.trainer.accelerator) else "cpu"))
    earlier = sorted((ctx.out_dir / "checkpoints").glob("*.ckpt"))
    if earlier and not ctx.cfg.task.ckpt_path and int(os.environ.get("LOCAL_RANK", 0)) == 0:  # ranks > 0 share it
        raise ConfigError(
            f"out_dir={ctx.out_dir} already holds checkpoints of an earlier run ({earlier[0].name}, ...); a fresh "
            f"run would overwrite them: resume with task.ckpt_path=last, or choose another out_dir"
        )


def train(ctx: RunContext, tracker: Any) -> tuple[dict[str, Any], pl.Trainer]:
    cfg, t = ctx.cfg, ctx.cfg.task
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    stack = build_stack(cfg)
    dm = build_datamodule(ctx, stack, t.batch_size, t.eval_batch_size)
    arch = architecture(cfg, dm.num_classes)
    ckpt_path = resolve_ckpt_path(t.ckpt_path, ctx.out_dir)
    if ckpt_path:
        ckpt = load_checkpoint(ckpt_path)
        check_architecture(ckpt, arch, ckpt_path)
        saved_freeze = ckpt.get("vtlab_train", {}).get("freeze")
        if saved_freeze is not None and saved_freeze != t.freeze:
            raise ConfigError(
                f"checkpoint {ckpt_path} was trained with task.freeze={saved_freeze}, this run has "
                f"task.freeze={t.freeze}; resume with task.freeze={saved_freeze} (the optimizer state depends on it)"
            )
        del ckpt
    optim = OptimSettings(lr=t.lr, tower_lr=t.tower_lr, weight_decay=t.weight_decay,
                          warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio)
    lit = VisionClassifier(stack, dm.num_classes, head=t.head, freeze=t.freeze, optim=optim, arch=arch)
    if t.compile:
        lit.compile_stack()
    meter, last_val = ThroughputMeter(), _LastValStep()
    ckpt_cbs = checkpoint_callbacks(ctx.out_dir / "checkpoints", t.keep_every_n_epochs)
    trainer = build_trainer(ctx, tracker, [*ckpt_cbs, meter, last_val])
    last_path = ctx.out_dir / "checkpoints" / "last.ckpt"
    with pinned(t.attention_backend):  # process-wide SDPA flags: compiled graphs, validation and ranks see them too
        start = time.perf_counter()
        trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path)
        fit_s = time.perf_counter() - start
        if not trainer.fast_dev_run and trainer.global_step > 0 and _saved_step(ckpt_cbs[1]) != trainer.global_step:
            trainer.save_checkpoint(last_path)  # stopped mid-epoch (max_steps / max_time): last.ckpt = final weights
        if last_val.step != trainer.global_step and not trainer.fast_dev_run:
            trainer.validate(lit, datamodule=dm, verbose=False)  # final metrics at the final weights
    m = trainer.callback_metrics
    best = ckpt_cbs[0]
    return {
        "task": "train",
        "status": "ok",
        **model_facts(ctx, stack, dm.num_classes),
        "freeze": t.freeze,
        "trainable_params": lit.trainable_parameters(),
        "precision": resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        "world_size": trainer.world_size,
        "compile": t.compile,
        "attention_backend": t.attention_backend,
        "resumed_from": ckpt_path,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val_acc": metric(m, "val_acc"),
        "val_loss": metric(m, "val_loss"),
        "train_loss": metric(m, "train_loss_epoch", "train_loss"),
        "train_acc": metric(m, "train_acc_epoch", "train_acc"),
        "best_val_acc": float(best.best_model_score) if best.best_model_score is not None else None,
        "best_ckpt": best.best_model_path or None,
        "last_ckpt": str(last_path) if last_path.exists() else None,
        **meter.summary(),
        "fit_s": fit_s,
        "overrides": ctx.overrides,
    }, trainer


def run(ctx: RunContext, tracker: Any) -> dict[str, Any]:
    result, trainer = train(ctx, tracker)
    if trainer.is_global_zero:
        ips = result["train_images_per_s"]
        publish(ctx, tracker, result, (
            f"train {result['run_name']}: {result['global_step']} steps, val_acc {result['val_acc']} "
            f"(chance {result['chance_acc']:.3f}), val_loss {result['val_loss']}, "
            f"{ips:.1f} train images/s" if ips else f"train {result['run_name']}: val_acc {result['val_acc']}"
        ))
    return result
