"""`task=align` and `task=finetune`: LLaVA's two training stages on a data set with text answers, with Lightning.

Mirrors LLaVA's llava/train/train.py: stage 1 (`task=align`, `--tune_mm_mlp_adapter`) trains the connector
with the tower and the LM frozen; stage 2 (`task=finetune`) trains `task.train` (default connector + LM),
each side whole or with peft LoRA adapters (`task.lora_lm.r`, `task.lora_tower.r`), one learning rate per
part. Both are this one module (align is finetune with `train=[connector]` and no LoRA: AlignTaskConfig).

    python -m vtlab +model=smolvlm_debug task=align data=vqa logger=csv trainer.max_epochs=3
    python -m vtlab +model=smolvlm_debug task=finetune data=vqa task.lora_lm.r=8 task.train=[connector,lm]

Everything `task=train` has: loggers (W&B offline, csv), progress bars, rank-zero writing and DDP
(vtlab.train.trainer), checkpoints in `<run dir>/checkpoints/` (best by val_acc, last; `task.ckpt_path=PATH|last`
resumes exactly, after the architecture and the parts trained are checked), bf16-mixed on GPU,
`task.compile` (the vision side), `task.gradient_checkpointing`. LoRA adapters are saved with peft's
`save_pretrained` into `<run dir>/adapters/{lm,tower}`; `task.adapters=DIR` starts from saved ones. Controls:
`task.blind=true` (no image tokens), `model.tower_kind=pixels` (no tower). `results.json` holds the final val
metrics (loss, greedy exact match overall and per question type), chance levels, the control and the rows skipped.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from vtlab.api import build_vlm_from_config
from vtlab.data.vqa_batch import VQACollator, VQADataModule, fitting_rows
from vtlab.errors import ConfigError
from vtlab.results.record import RunContext, process_rank
from vtlab.tasks.common import metric, publish
from vtlab.tasks.vlm_common import (
    check_vocabulary,
    report_skipped,
    skipped_rows,
    vlm_facts,
    vocabulary_of,
    vqa_splits,
)
from vtlab.train.checkpoint import check_fresh_run, check_resume, load_checkpoint, resolve_ckpt_path, vlm_architecture
from vtlab.train.lora import apply_lora, check_targets, load_adapters, lora_settings, meta_sides, save_adapters
from vtlab.train.module import OptimSettings
from vtlab.train.trainer import fit_run, resolve_precision
from vtlab.train.vlm_module import VLMModule


def check(ctx: RunContext) -> None:
    """Refusals before any tracker opens: a fresh run over an earlier one, LoRA targets the model lacks, a
    vocabulary larger than text.vocab_size, a missing checkpoint or adapters folder."""
    cfg, t = ctx.cfg, ctx.cfg.task
    if not cfg.overwrite:
        check_fresh_run(ctx.out_dir, t.ckpt_path, process_rank())
    lora = lora_settings(t)
    if lora:
        sides = meta_sides(cfg)
        for side in lora:
            check_targets(side, getattr(t, f"lora_{side}"), sides[side])
    check_vocabulary(cfg, vocabulary_of(*vqa_splits(cfg)))
    resolve_ckpt_path(t.ckpt_path, ctx.out_dir)
    adapters = getattr(t, "adapters", None)
    if adapters and not lora:
        raise ConfigError(f"task.adapters={adapters} needs LoRA on the side(s) it holds: set task.lora_lm.r / "
                          f"task.lora_tower.r as in the run that wrote it")


def fit(ctx: RunContext, tracker: Any) -> tuple[dict[str, Any], pl.Trainer]:
    cfg, t = ctx.cfg, ctx.cfg.task
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set, val_set = vqa_splits(cfg)
    words = vocabulary_of(train_set, val_set)
    vlm = build_vlm_from_config(cfg, extra_words=words)
    lora = lora_settings(t)
    apply_lora(vlm, lora)
    if getattr(t, "adapters", None):
        load_adapters(vlm, t.adapters)
    collator = VQACollator(vlm, blind=t.blind)
    train_rows, val_rows = fitting_rows(train_set, collator, vlm.context), fitting_rows(val_set, collator, vlm.context)
    skipped = skipped_rows(train=train_rows, val=val_rows)
    report_skipped(skipped, vlm.context)
    if len(train_rows.indices) < t.batch_size or not val_rows.indices:
        raise ConfigError(f"data.kind={cfg.data.kind}: {len(train_rows.indices)} train / {len(val_rows.indices)} val "
                          f"rows fit the LM's context text.max_position_embeddings={vlm.context} (skipped: {skipped}); "
                          f"a run needs task.batch_size={t.batch_size} train rows and one val row")
    dm = VQADataModule(train_rows, val_rows, collator, t.batch_size, t.eval_batch_size, cfg.data.num_workers,
                       cfg.data.seed)
    arch = vlm_architecture(cfg, lora)
    parts = t.trainable()
    ckpt_path = resolve_ckpt_path(t.ckpt_path, ctx.out_dir)
    if ckpt_path:
        check_resume(load_checkpoint(ckpt_path), arch, ckpt_path, train=parts)
    optim = OptimSettings(lr=t.lr, lm_lr=getattr(t, "lm_lr", 0.0), tower_lr=getattr(t, "tower_lr", 0.0),
                          weight_decay=t.weight_decay, warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio)
    meta = {"task": str(t.name), "blind": bool(t.blind), "words": words}
    lit = VLMModule(vlm, parts, optim, arch, meta, compile_optimizer=t.compile_optimizer)
    if t.gradient_checkpointing:
        lit.gradient_checkpointing()
    if t.compile:
        lit.compile_vision()
    trainer, fitted = fit_run(ctx, tracker, lit, dm, ckpt_path)
    adapters = save_adapters(vlm, ctx.out_dir / "adapters") if trainer.is_global_zero else {}
    m = trainer.callback_metrics
    by_type = {k.removeprefix("val_acc_"): float(v) for k, v in sorted(m.items()) if k.startswith("val_acc_")}
    return {
        **ctx.header(),
        **vlm_facts(cfg, vlm, val_rows, t.blind),
        "train": parts,
        "lora": lora,
        "adapters": adapters or None,
        "trainable_params": lit.trainable_parameters(),
        "precision": resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        "world_size": trainer.world_size,
        "compile": t.compile,
        "gradient_checkpointing": t.gradient_checkpointing,
        "resumed_from": ckpt_path,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val_acc": metric(m, "val_acc"),
        "val_acc_by_type": by_type,
        "val_loss": metric(m, "val_loss"),
        "train_loss": metric(m, "train_loss_epoch"),
        "train_acc": metric(m, "train_acc_epoch"),
        "rows": skipped,
        **fitted,
        "overrides": ctx.overrides,
    }, trainer


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "n/a"


def run(ctx: RunContext, tracker: Any) -> dict[str, Any]:
    result, trainer = fit(ctx, tracker)
    if trainer.is_global_zero:
        types = ", ".join(f"{q} {_num(a, '.3f')}" for q, a in result["val_acc_by_type"].items())
        publish(ctx, tracker, result, (
            f"{result['task']} {ctx.run_name}: {result['global_step']} steps, val_acc {_num(result['val_acc'], '.4f')} "
            f"(chance {_num(result['chance_acc'], '.3f')}; {types}), val_loss {_num(result['val_loss'], '.4f')}, "
            f"control {result['control']}"))
    return result
