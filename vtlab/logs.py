"""Quiet logs for a vtlab run: one line per event, no package advertisements, no noise warnings.

Each filter acts at its source and only inside `quiet_run()` (the task runner's scope), so warnings that
matter elsewhere are kept:
- Lightning attaches its own stderr handler to `lightning.pytorch` / `lightning.fabric` (and stops
  propagation) when it is imported before any logging is configured, which vtlab.cli does before Hydra
  configures the root logger: its lines bypassed Hydra's handlers (never in `vtlab.log`) and printed beside
  them. While the root logger has handlers, Lightning's own are dropped and its records propagate, so each
  line prints once and is kept in `vtlab.log`.
- Lightning's "💡 Tip: ... litlogger" advertisement (an INFO record) is filtered by its text, on Lightning's
  own handlers and on the root logger's (a logger's filter would not see records of its child loggers).
- Lightning's `_pytree` DeprecationWarning (`isinstance(treespec, LeafSpec)`, raised by Lightning's own code
  against torch's new pytree API; nothing a user can change) is ignored by message.
- torch.utils.cpp_extension's "No CUDA runtime is found" (a CPU machine with CUDA_HOME set, on the first
  torch.compile) is dropped: on a CPU run that is the expected state, not a problem.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
# Lightning's advertisement, and its note that vtlab's own summary callback (vtlab.train.callbacks) replaced its own
ADVERTS = ("💡 Tip:", "litlogger", "Skipping setting a default `ModelSummary`")
NOISE_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",)


class DropMessages(logging.Filter):
    """Drops records whose message contains any of `needles`."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


@contextmanager
def quiet_run() -> Iterator[None]:
    """The scope of one vtlab task: the filters above on, everything restored afterwards."""
    root_handled = bool(logging.getLogger().handlers)
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    filters: list[tuple[logging.Logger, logging.Filter]] = []
    advert = DropMessages(*ADVERTS)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if root_handled:  # the root logger prints and files the lines: Lightning's own handlers double them
            own = [h for h in logger.handlers if type(h) is logging.StreamHandler]
            saved.append((logger, own, logger.propagate))
            for handler in own:
                logger.removeHandler(handler)
            logger.propagate = True
    filtered = [*logging.getLogger().handlers,
                *(h for name in LIGHTNING_LOGGERS for h in logging.getLogger(name).handlers)]
    for handler in filtered:
        handler.addFilter(advert)
    cuda = logging.getLogger("torch.utils.cpp_extension")
    no_cuda = DropMessages("No CUDA runtime is found")
    cuda.addFilter(no_cuda)
    filters.append((cuda, no_cuda))
    try:
        with warnings.catch_warnings():
            for pattern in NOISE_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for logger, flt in filters:
            logger.removeFilter(flt)
        for handler in filtered:
            handler.removeFilter(advert)
        for logger, handlers, propagate in saved:
            for handler in handlers:
                logger.addHandler(handler)
            logger.propagate = propagate


def process_rank() -> int:
    """This process's rank in a DDP job (0 alone): the launchers set RANK (torchrun) or LOCAL_RANK (Lightning's
    subprocess launcher). Only rank 0 writes results, logs and checkpoints."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
