"""Experiment trackers: W&B (offline by default), CSV, or none, behind one small interface.

`wandb` is imported only when `logger=wandb`, so runs with `logger=csv|none` never need it. One W&B run per
job, named from the config (`smolvlm-f4`), grouped by sweep directory, with the full config logged and the
result's scalars in the run summary; `finish()` always calls `wandb.finish()` so that the next job of a
multirun gets its own run. A tracker never fails a run: logging errors are reported and swallowed.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from vtlab.run import RunContext

SUMMARY_KEYS = (
    "tokens", "patches", "factor", "text_hidden", "params", "flops", "latency_ms", "latency_ms_p90",
    "peak_memory_mb", "throughput_img_s", "throughput_tokens_s", "tflops", "mfu", "lm_prefill_flops",
    "val_acc", "val_loss", "test_acc", "images_per_s",
)


def scalars(result: dict[str, Any]) -> dict[str, float | int]:
    """The flat numeric entries of a result (nested dicts are flattened with '/')."""
    out: dict[str, float | int] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)

    for key, value in result.items():
        if key not in ("config", "device_info", "stages"):
            walk(key, value)
    return out


class Tracker:
    """No-op tracker (`logger=none`)."""

    def log_result(self, result: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class CsvTracker(Tracker):
    """Appends metrics to `metrics.csv` and writes the result's scalars to `summary.csv` in the run dir."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def log_result(self, result: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        flat = scalars(result)
        with open(self.out_dir / "summary.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["key", "value"])
            writer.writerows(sorted(flat.items()))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        path = self.out_dir / "metrics.csv"
        new = not path.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", *metrics])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **metrics})


class WandbTracker(Tracker):
    def __init__(self, ctx: RunContext) -> None:
        import wandb  # lazy: only logger=wandb needs it

        self.wandb = wandb
        lg = ctx.cfg.logger
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=lg.project,
            entity=lg.entity,
            name=ctx.run_name,
            group=ctx.group,
            job_type=ctx.cfg.task.name.value,
            tags=[f"model={ctx.model_choice}", f"factor={ctx.cfg.connector.factor}", *lg.tags],
            config=ctx.config_dict() | {"hydra/overrides": ctx.overrides, "hydra/job_num": ctx.job_num},
            dir=str(ctx.out_dir),
            mode=lg.mode,
            reinit="finish_previous",
        )

    def log_result(self, result: dict[str, Any]) -> None:
        try:
            for key, value in scalars(result).items():
                self.run.summary[key] = value
            self.run.summary["status"] = result.get("status", "ok")
        except Exception as exc:  # a tracker never fails a run
            print(f"vtlab: W&B logging failed: {exc}", file=sys.stderr)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        try:
            self.run.log(metrics, step=step)
        except Exception as exc:
            print(f"vtlab: W&B logging failed: {exc}", file=sys.stderr)

    def finish(self) -> None:
        try:
            self.wandb.finish()
        except Exception as exc:
            print(f"vtlab: wandb.finish() failed: {exc}", file=sys.stderr)


def open_tracker(ctx: RunContext) -> Tracker:
    kind = ctx.cfg.logger.kind.value
    if kind == "none" or (kind == "wandb" and ctx.cfg.logger.mode == "disabled"):
        return Tracker()
    if kind == "csv":
        return CsvTracker(ctx.out_dir)
    try:
        return WandbTracker(ctx)
    except Exception as exc:  # no network, no account, broken install: keep the run going
        print(f"vtlab: W&B unavailable ({exc}); results are still written to {ctx.out_dir}", file=sys.stderr)
        return Tracker()
