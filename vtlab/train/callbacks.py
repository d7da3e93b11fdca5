"""Lightning callbacks of the train/eval tasks: step throughput (images/s) for train and validation, the
sampler's resume point, and a model summary without Lightning's FLOPs column (it counts FLOPs only from an
`example_input_array`, which vtlab's modules do not set, so it printed "Total FLOPs: 0"; vtlab's own FLOPs are in
task=profile/bench).

`SamplerResume` makes a mid-epoch resume exact: its state in the checkpoint is the train sampler's epoch and
the samples the fit loop had trained on in it (Lightning's `batch_progress.current.processed` batches, the
count it adds to its own fetch counter on resume); at `on_train_start` of the resumed run it tells the
sampler to skip them. (Lightning's own loader-state hook does not fire here: the train loader is built
before the checkpoint is restored, when the module asks for `estimated_stepping_batches`.)

The clock is read around each batch (after a device synchronise), skipping the first `skip` batches of
every epoch and validation run (compilation, cudnn autotune, worker start-up), so the figure is steady-state step throughput
including forward, backward and the optimizer step. Per-process images are multiplied by the world size.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from vtlab.data.sampler import EpochShuffleSampler


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



def batch_images(batch: Any) -> int:
    """Images in a batch: (pixels, labels) of the classifier, or a VQA batch dict (vtlab.data.vqa_batch)."""
    return len(batch["qtypes"]) if isinstance(batch, dict) else int(batch[1].shape[0])


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
            meter.images += batch_images(batch)

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


def _train_sampler(trainer: pl.Trainer) -> EpochShuffleSampler | None:
    loader = trainer.train_dataloader
    sampler = getattr(loader, "sampler", None)
    return sampler if isinstance(sampler, EpochShuffleSampler) else None


class SamplerResume(pl.Callback):
    """Saves (epoch, samples trained on) of the train sampler; a resumed run skips those samples."""

    def __init__(self) -> None:
        self.trainer: pl.Trainer | None = None
        self.pending: dict[str, int] | None = None
        # the warning that a mid-epoch resume is not exact: with this callback it is
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        sampler = _train_sampler(trainer) if trainer is not None else None
        loader = trainer.train_dataloader if trainer is not None else None
        if sampler is None or loader is None or not loader.batch_size:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= len(loader):  # the epoch is complete: the next pass is the next epoch, from its start
            return {"epoch": sampler.epoch + 1, "skip": 0}
        return {"epoch": sampler.epoch, "skip": done * loader.batch_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.pending = dict(state_dict) if "epoch" in state_dict else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = _train_sampler(trainer)
        if self.pending is not None and sampler is not None:
            sampler.resume(self.pending["epoch"], self.pending["skip"])
        self.pending = None
