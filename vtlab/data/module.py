"""`VtlabDataModule`: the synthetic glyph set or image folders, with the tower's preprocessing, for Lightning.

Both splits are built (and folder problems reported) by `setup()`, which the train and eval tasks call
before the Trainer starts so that bad data fails fast with one message. The train loader shuffles with an
(seed, epoch) sampler that resumes mid-epoch and drops the ragged last batch (one compiled shape); val keeps every sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vtlab.data.folders import check_same_classes, image_folder
from vtlab.data.sampler import EpochShuffleSampler
from vtlab.data.synthetic import GlyphCount, GlyphSpec
from vtlab.data.transforms import siglip_transform
from vtlab.errors import ConfigError


def make_loader(dataset: Dataset, batch_size: int, train: bool, workers: int, seed: int,
                collate_fn: Callable[[list[Any]], Any] | None = None) -> DataLoader:
    """The loader of every vtlab data module: train shuffles with the resumable (seed, epoch) sampler and drops
    the ragged last batch; val keeps every sample in order."""
    common: dict[str, Any] = dict(batch_size=batch_size, drop_last=train, num_workers=workers,
                                  persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                                  collate_fn=collate_fn)
    if train:  # resumable mid-epoch (vtlab.data.sampler, vtlab.train.callbacks.SamplerResume)
        return DataLoader(dataset, sampler=EpochShuffleSampler(len(dataset), seed), **common)
    return DataLoader(dataset, **common)


class VtlabDataModule(pl.LightningDataModule):
    def __init__(self, data_cfg: Any, input_size: int, batch_size: int, eval_batch_size: int | None = None,
                 transform: Callable[[Any], torch.Tensor] | None = None, train: bool = True) -> None:
        super().__init__()
        self.need_train = train  # False for task=eval: only the val split is read (a val-only folder is enough)
        self.cfg = data_cfg
        self.transform = transform or siglip_transform(input_size)
        self.input_size = input_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.classes: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        kind = getattr(self.cfg.kind, "value", self.cfg.kind)
        transform = self.transform
        if kind == "synthetic":
            spec = GlyphSpec(
                image_size=self.cfg.image_size or self.input_size,
                num_classes=self.cfg.num_classes,
                distractors=self.cfg.distractors,
                glyph_size=self.cfg.glyph_size,
                task=self.cfg.task,
                glyphs_per_class=self.cfg.glyphs_per_class,
            )
            if self.need_train:
                self.train_set = GlyphCount(spec, self.cfg.train_size, "train", self.cfg.seed, transform)
            self.val_set = GlyphCount(spec, self.cfg.val_size, "val", self.cfg.seed, transform)
            self.classes = self.val_set.classes
        elif kind == "folder":
            val = image_folder(self.cfg.root, "val", transform)
            if self.need_train:
                train = image_folder(self.cfg.root, "train", transform)
                check_same_classes(train, val)
                self.train_set = train
            self.val_set, self.classes = val, val.classes
        else:
            raise ConfigError(f"data.kind={kind!r} has text answers, not class labels; task=train / task=eval of a "
                              f"classifier take data=synthetic or data=folder (task=align / finetune take {kind})")
        if self.need_train and len(self.train_set) < self.batch_size:
            raise ConfigError(
                f"the train split has {len(self.train_set)} images, fewer than task.batch_size={self.batch_size} "
                "(the ragged last batch is dropped, so no step would run); lower task.batch_size or add data"
            )

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        return make_loader(dataset, batch_size, train, self.cfg.num_workers, self.cfg.seed)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, self.eval_batch_size, train=False)
