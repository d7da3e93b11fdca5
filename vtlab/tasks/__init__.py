"""Tasks a run can perform (`task=profile|bench|train|eval`); each takes a RunContext and writes results."""

from __future__ import annotations

from importlib import import_module

from vtlab.run import RunContext

TASKS = {
    "profile": "vtlab.tasks.profile",
    "bench": "vtlab.tasks.bench",
    "train": "vtlab.tasks.train",
    "eval": "vtlab.tasks.evaluate",
}


def run_task(ctx: RunContext) -> dict:
    """Run the configured task with its tracker open, and always close the tracker (wandb.finish())."""
    from vtlab.tracking import open_tracker

    name = ctx.cfg.task.name.value
    module = import_module(TASKS[name])
    if hasattr(module, "check"):  # refusals (e.g. a run dir it would overwrite) before any tracker run opens
        module.check(ctx)
    tracker = open_tracker(ctx)
    try:
        return module.run(ctx, tracker)
    finally:
        tracker.finish()
