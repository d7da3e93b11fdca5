"""Builds the Lightning `Trainer` of the train/eval tasks from `trainer.*`, `logger.*` and `task.*`.

- precision `None`: bf16-mixed on a GPU, 32-true on CPU.
- loggers: Lightning's WandbLogger wrapping the job's one W&B run (opened by vtlab.tracking, finished by
  the task runner: never a second run), CSVLogger (`<run dir>/csv/metrics.csv`), or none. `wandb` is only
  imported when `logger=wandb`.
- checkpoints in `<run dir>/checkpoints/`: `best-epochE-stepS-val_accA.ckpt` (highest val_acc),
  `last.ckpt`, and optionally `epochN.ckpt` every `task.keep_every_n_epochs` epochs, each written by
  `AtomicCheckpointIO` (a temporary file in the same folder, fsync, rename: a kill or a full disk mid-write
  leaves the previous file whole; Lightning's own writer truncates the target first).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from vtlab.atomic import atomic_write
from vtlab.errors import ConfigError
from vtlab.measure.timing import on_gpu
from vtlab.models.sdpa import configure_attention, pinned
from vtlab.results.record import RunContext, process_rank
from vtlab.train.callbacks import LastValStep, ParamSummary, SamplerResume, ThroughputMeter


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO with an atomic write: `.<name>.<pid>.tmp` beside the target, fsync, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_write(path, lambda fh: torch.save(checkpoint, fh), "checkpoint")


def resolve_precision(precision: str | None, accelerator: str) -> str:
    if precision:
        return precision
    return "bf16-mixed" if on_gpu(accelerator) else "32-true"


def build_loggers(ctx: RunContext, tracker: Any) -> list[Any] | bool:
    lg = ctx.cfg.logger
    kind = str(lg.kind)
    if kind == "none" or (kind == "wandb" and (os.environ.get("WANDB_MODE") or lg.mode) == "disabled"):
        return False
    if kind == "wandb" and getattr(tracker, "run", None) is not None:
        return [WandbLogger(experiment=tracker.run, save_dir=str(ctx.out_dir))]
    if kind == "wandb" and process_rank() == 0:
        print(f"vtlab: W&B run unavailable; logging metrics to {ctx.out_dir}/csv/metrics.csv", file=sys.stderr)
    if process_rank() == 0:
        keep_earlier_metrics(ctx.out_dir / "csv")
    return [CSVLogger(save_dir=str(ctx.out_dir), name="csv", version="")]


def keep_earlier_metrics(csv_dir: Path) -> Path | None:
    """Lightning's CSV writer deletes an existing metrics.csv; move it to metrics.<k>.csv first (a resumed
    run or an eval into the same run directory keeps the earlier rows)."""
    old = csv_dir / "metrics.csv"
    if not old.is_file():
        return None
    k = 1
    while (csv_dir / f"metrics.{k}.csv").exists():
        k += 1
    kept = old.rename(csv_dir / f"metrics.{k}.csv")
    print(f"vtlab: kept the earlier {old} as {kept.name}", file=sys.stderr)
    return kept


def checkpoint_callbacks(ckpt_dir: Path, keep_every_n_epochs: int = 0) -> list[Callback]:
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-epoch{epoch}-step{step}-val_acc{val_acc:.4f}",
            auto_insert_metric_name=False,
            monitor="val_acc",
            mode="max",
            save_top_k=1,
            enable_version_counter=False,
        ),
        # Lightning 2.6's save_last only writes when a top-k file was written at that step, so a run whose
        # val_acc stops improving would keep a stale last.ckpt; this one rewrites last.ckpt every epoch.
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False),
    ]
    if keep_every_n_epochs > 0:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="epoch{epoch}",
                auto_insert_metric_name=False,
                every_n_epochs=keep_every_n_epochs,
                save_top_k=-1,
                mode="max",  # unused without a monitor; keeps the state key distinct from the last.ckpt callback
                enable_version_counter=False,
            )
        )
    return callbacks


def build_trainer(ctx: RunContext, tracker: Any, callbacks: list[Callback]) -> pl.Trainer:
    t = ctx.cfg.trainer
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=t.max_time,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        fast_dev_run=t.fast_dev_run,
        enable_progress_bar=t.enable_progress_bar,
        default_root_dir=str(ctx.out_dir),
        logger=build_loggers(ctx, tracker),
        callbacks=[*callbacks, ParamSummary()],  # Lightning's summary, without its "Total FLOPs: 0"
        plugins=[AtomicCheckpointIO()],
    )
    for key in ("val_check_interval", "limit_train_batches", "limit_val_batches"):
        value = getattr(t, key)
        if value is not None:
            kwargs[key] = value
    try:
        return pl.Trainer(**kwargs)
    except (ValueError, TypeError, MisconfigurationException) as exc:  # e.g. trainer.precision=foo
        raise ConfigError(f"trainer settings refused by Lightning: {' '.join(str(exc).split())}") from None


def fit_and_finish(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, ckpt_path: str | None,
                   last_callback: ModelCheckpoint, last_val: Any, last_path: Path) -> float:
    """`trainer.fit` (resuming from `ckpt_path`), then make the run's end whole: a run stopped mid-epoch
    (max_steps / max_time) still leaves last.ckpt at its final weights, and the final metrics are those of a
    validation at the final weights (`last_val`: vtlab.train.callbacks.LastValStep). Returns the fit seconds."""
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_s = time.perf_counter() - start
    saved = int(getattr(last_callback, "_last_global_step_saved", -1))
    if not trainer.fast_dev_run and trainer.global_step > 0 and saved != trainer.global_step:
        trainer.save_checkpoint(last_path)
    if last_val.step != trainer.global_step and not trainer.fast_dev_run:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return fit_s


def fit_run(ctx: RunContext, tracker: Any, module: pl.LightningModule, datamodule: Any,
            ckpt_path: str | None) -> tuple[pl.Trainer, dict[str, Any]]:
    """The fit of `task=train` and the VLM tasks: vtlab's checkpoints (best by val_acc, last, every n epochs),
    throughput meter, final-weights validation and resumable sampler, under `task.attention_backend` (process-wide
    SDPA flags: compiled graphs, validation and ranks see them too; and inside vtlab's attention layers, where
    `cudnn_safe` takes cuDNN at the shapes its backward is clean). Returns the trainer and the run's fit facts
    for results.json (best / last checkpoint, step throughput, fit seconds)."""
    t = ctx.cfg.task
    meter, last_val = ThroughputMeter(), LastValStep()
    ckpt_cbs = checkpoint_callbacks(ctx.out_dir / "checkpoints", t.keep_every_n_epochs)
    trainer = build_trainer(ctx, tracker, [*ckpt_cbs, meter, last_val, SamplerResume()])
    last_path = ctx.out_dir / "checkpoints" / "last.ckpt"
    configure_attention(module, t.attention_backend)  # vtlab's own attention layers (cudnn_safe: per shape)
    with pinned(t.attention_backend):
        fit_s = fit_and_finish(trainer, module, datamodule, ckpt_path, ckpt_cbs[1], last_val, last_path)
    best = ckpt_cbs[0]
    return trainer, {
        "best_val_acc": float(best.best_model_score) if best.best_model_score is not None else None,
        "best_ckpt": best.best_model_path or None,
        "last_ckpt": str(last_path) if last_path.exists() else None,
        **meter.summary(),
        "fit_s": fit_s,
    }
