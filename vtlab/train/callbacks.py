"""Lightning callbacks of the train/eval tasks: step throughput (images/s) for train and validation, and a
model summary without Lightning's FLOPs column (it counts FLOPs only from an `example_input_array`, which
vtlab's modules do not set, so it printed "Total FLOPs: 0"; vtlab's own FLOPs are in task=profile/bench).

The clock is read around each batch (after a device synchronise), skipping the first `skip` batches of
every epoch and validation run (compilation, cudnn autotune, worker start-up), so the figure is steady-state step throughput
including forward, backward and the optimizer step. Per-process images are multiplied by the world size.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class ParamSummary(ModelSummary):
    """Lightning's model summary (modules, parameters, train/eval mode), one log line each, without FLOPs."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        columns = {name: values for name, values in summary_data if name != "FLOPs"}
        for i, name in enumerate(columns.get("Name", [])):
            parts = [f"{key.lower()} {values[i]}" for key, values in columns.items() if key not in (" ", "Name")]
            rank_zero_info(f"module {name}: " + ", ".join(parts))
        rank_zero_info(
            f"parameters: {get_human_readable_count(trainable_parameters)} trainable, "
            f"{get_human_readable_count(total_parameters - trainable_parameters)} frozen, "
            f"{model_size:.3f} MB; modules in train mode {total_training_modes['train']}, "
            f"eval mode {total_training_modes['eval']}"
        )


def _sync(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class _Meter:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self.start = 0.0

    def rate(self, world: int) -> float | None:
        return self.images * world / self.seconds if self.seconds > 0 else None


class ThroughputMeter(pl.Callback):
    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.train = _Meter()
        self.val = _Meter()
        self.world = 1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.world = trainer.world_size

    def _start(self, meter: _Meter, module: pl.LightningModule) -> None:
        _sync(module)
        meter.start = time.perf_counter()

    def _end(self, meter: _Meter, module: pl.LightningModule, batch: Any, index: int) -> None:
        _sync(module)
        if index >= self.skip:
            meter.seconds += time.perf_counter() - meter.start
            meter.images += int(batch[1].shape[0])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[override]
        self._start(self.train, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        self._end(self.train, pl_module, batch, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[override]
        self._start(self.val, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[override]
        if not trainer.sanity_checking:
            self._end(self.val, pl_module, batch, batch_idx)

    def summary(self) -> dict[str, float | None]:
        return {"train_images_per_s": self.train.rate(self.world), "val_images_per_s": self.val.rate(self.world)}


class LastValStep(pl.Callback):
    """Remembers the global step of the latest real validation (to know whether a final one is needed)."""

    def __init__(self) -> None:
        self.step = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step
