"""The data module of `task=train` / `task=eval` (its own module: only these tasks import Lightning's data side,
so a profile or bench run never does)."""

from __future__ import annotations

from vtlab.data.module import VtlabDataModule
from vtlab.families import FrameTransform
from vtlab.models.stack import VisionStack
from vtlab.results.record import RunContext


def build_datamodule(ctx: RunContext, stack: VisionStack, batch_size: int, eval_batch_size: int | None = None,
                     train: bool = True) -> VtlabDataModule:
    """The data module, already set up so that bad data fails before the Trainer starts (train=False: the val
    split only, for task=eval).

    Images get the family's own preprocessing, one square frame at the tower input (no tiling)."""
    transform = FrameTransform(ctx.cfg.model.family, stack.input_size)
    dm = VtlabDataModule(ctx.cfg.data, stack.input_size, batch_size, eval_batch_size, transform, train=train)
    dm.setup()
    return dm
