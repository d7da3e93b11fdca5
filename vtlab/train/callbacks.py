"""Lightning callbacks of the train/eval tasks: step throughput (images/s) for train and validation.

The clock is read around each batch (after a device synchronise), skipping the first `skip` batches of
every epoch and validation run (compilation, cudnn autotune, worker start-up), so the figure is steady-state step throughput
including forward, backward and the optimizer step. Per-process images are multiplied by the world size.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch


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
