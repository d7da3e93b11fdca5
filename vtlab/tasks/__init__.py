"""The tasks a run can perform, one module each: `TASKS[name] = Task(check, run)`.

`run_task(ctx)` is the one wrapper around every task: it claims the run folder (one run per folder), the task's `check` (refusals that need the run folder,
e.g. a results.json it would overwrite) runs before the tracker opens, the tracker is always finished
(`wandb.finish()`), and the task writes its one record through `ctx.write_result`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtlab.logs import quiet_run
from vtlab.results.record import RunContext, process_rank
from vtlab.results.rundir import check_foreign, check_out_dir, claimed
from vtlab.results.tracking import open_tracker


@dataclass(frozen=True)
class Task:
    check: Callable[[RunContext], None]
    run: Callable[[RunContext, Any], dict[str, Any]]


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """`vtlab.tasks.<module>.<name>`, imported when called: a profile run never imports Lightning (train, eval)."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"vtlab.tasks.{module}"), name)(*args)

    return call


TASKS: dict[str, Task] = {name: Task(_lazy(module, "check"), _lazy(module, "run"))
                          for name, module in (("profile", "profile"), ("bench", "bench"), ("train", "train"),
                                               ("eval", "evaluate"),  # classifier or VLM checkpoints (tasks.vlm_eval)
                                               ("align", "finetune"),  # LLaVA stage 1: finetune with train=[connector]
                                               ("finetune", "finetune"))}


def run_task(ctx: RunContext) -> dict[str, Any]:
    """Run the configured task with its run folder claimed (vtlab.results.rundir) and its tracker open; always
    release the folder and close the tracker (wandb.finish())."""
    task = TASKS[str(ctx.cfg.task.name)]
    rank0 = process_rank() == 0
    if rank0:
        check_out_dir(ctx.out_dir)
    with claimed(ctx.out_dir, enabled=rank0):
        if rank0:
            check_foreign(ctx.out_dir, str(ctx.cfg.task.name), ctx.cfg.overwrite)
        task.check(ctx)  # refusals before any tracker run opens
        with quiet_run():  # one line per event, no adverts, no noise warnings (vtlab.logs)
            tracker = open_tracker(ctx)
            try:
                return task.run(ctx, tracker)
            finally:
                tracker.finish()
